import IPC
import Testing

@testable import LocalWeb

/// The local HTTP port's access policy and the metrics it renders, attacked directly.
@Suite struct WebAccessTests {
    let access = WebAccess(token: "s3cret-token", port: 8123)

    @Test func theTokenIsRequiredAsBearerOrParameter() {
        #expect(
            access.check(host: "127.0.0.1:8123", origin: nil, authorization: nil, tokenParameter: nil) == .unauthorized)
        #expect(
            access.check(host: "127.0.0.1:8123", origin: nil, authorization: "Bearer wrong", tokenParameter: nil)
                == .unauthorized)
        #expect(
            access.check(host: "127.0.0.1:8123", origin: nil, authorization: nil, tokenParameter: "s3cret-toke")
                == .unauthorized)
        #expect(
            access.check(host: "127.0.0.1:8123", origin: nil, authorization: "Bearer s3cret-token", tokenParameter: nil)
                == .allowed)
        #expect(
            access.check(host: "localhost:8123", origin: nil, authorization: nil, tokenParameter: "s3cret-token")
                == .allowed)
    }

    /// DNS rebinding: a site's page whose name now resolves to 127.0.0.1 still sends its own
    /// name as Host — even with a stolen token it is refused.
    @Test func anotherHostNameIsForbiddenEvenWithTheToken() {
        guard
            case .forbidden = access.check(
                host: "evil.example:8123", origin: nil, authorization: "Bearer s3cret-token", tokenParameter: nil)
        else {
            Issue.record("a rebinding host name was let in")
            return
        }
        #expect(
            access.check(host: nil, origin: nil, authorization: "Bearer s3cret-token", tokenParameter: nil) != .allowed)
        #expect(
            access.check(host: "127.0.0.1:9999", origin: nil, authorization: "Bearer s3cret-token", tokenParameter: nil)
                != .allowed)
    }

    @Test func anotherOriginIsForbidden() {
        guard
            case .forbidden = access.check(
                host: "127.0.0.1:8123", origin: "https://evil.example", authorization: nil,
                tokenParameter: "s3cret-token")
        else {
            Issue.record("a cross-site request was let in")
            return
        }
        #expect(
            access.check(
                host: "127.0.0.1:8123", origin: "http://127.0.0.1:8123", authorization: nil,
                tokenParameter: "s3cret-token") == .allowed)
    }
}

@Suite struct MetricsTests {
    @Test func countersNeverGoDownWhenAWorkerRestarts() {
        var accumulator = CounterAccumulator()
        #expect(accumulator.increment("transfer bytes_sent", to: 100) == 100)
        #expect(accumulator.increment("transfer bytes_sent", to: 150) == 50)
        #expect(accumulator.increment("transfer bytes_sent", to: 30) == 30, "restarted: 30 new bytes")
        #expect(accumulator.increment("transfer bytes_sent", to: 30) == 0)
    }

    @Test func rendersWorkerCountersAndRestartsInPrometheusText() {
        let metrics = PeerShareMetrics()
        _ = metrics.render(
            workers: [
                .transfer: [
                    WorkerCounter("bytes_sent", 1000), WorkerCounter("connections_direct", 2),
                    WorkerCounter("serving_connections", 3),
                ],
                .discovery: [WorkerCounter("dht_nodes", 8)],
            ], restarts: [.hash: 1])
        let text = metrics.render(
            workers: [.transfer: [WorkerCounter("bytes_sent", 400), WorkerCounter("serving_connections", 1)]],
            restarts: [.hash: 2])
        #expect(text.contains("peershare_bytes_sent_total 1400"), "1000, then a restarted worker's 400")
        #expect(text.contains("peershare_connections_total{path=\"direct\"} 2"))
        #expect(text.contains("peershare_serving_connections 1"))
        #expect(text.contains("peershare_dht_nodes 8"))
        #expect(text.contains("peershare_worker_restarts_total{worker=\"hash\"} 2"))
    }

    @Test func aWorkersCounterNamesAreCheckedNotTrusted() {
        #expect(WorkerCounter.isValidName("bytes_sent"))
        #expect(!WorkerCounter.isValidName("bytes{sent=\"1\"}"))
        #expect(!WorkerCounter.isValidName("Bytes"))
        #expect(!WorkerCounter.isValidName(""))
        #expect(!WorkerCounter.isValidName(String(repeating: "a", count: 65)))
        #expect(!WorkerCounter.isValidName("a\nb 1"))
    }
}

@Suite struct QRCodeTests {
    @Test func aLinkBecomesASquareSVGWithAQuietZone() throws {
        let link = "peershare://" + String(repeating: "ab", count: 32) + "?peer=127.0.0.1:4000"
        let svg = try #require(QRCodeSVG.svg(for: link))
        #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 "))
        // A QR symbol is 17 + 4 × version modules wide, plus 4 of quiet zone each side.
        let size = try #require(Int(svg.split(separator: " ")[4].split(separator: "\"")[0]))
        #expect((size - 8 - 17) % 4 == 0 && size > 8 + 21)
        // Nothing but rectangles: no text from the link ends up in the markup.
        #expect(!svg.contains("peershare") && !svg.contains("<script"))
    }

    @Test func emptyOverlongAndNULTextsAreRefused() {
        #expect(QRCodeSVG.svg(for: "") == nil)
        #expect(QRCodeSVG.svg(for: String(repeating: "x", count: QRCodeSVG.maxBytes + 1)) == nil)
        #expect(QRCodeSVG.svg(for: "a\u{0}b") == nil)
    }
}
