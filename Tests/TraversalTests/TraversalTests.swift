import PeerShareCore
import Testing
import Wire

@testable import Traversal

@Suite struct STUNTests {
    let transaction: [UInt8] = Array(1...12)

    /// A success response as coturn sends it: XOR-MAPPED-ADDRESS for 11.0.113.50:38952.
    func response(
        type: UInt16 = 0x0101, transaction: [UInt8]? = nil, attribute: UInt16 = 0x0020,
        value: [UInt8]? = nil
    ) -> [UInt8] {
        var w = ByteWriter(capacity: 32)
        let port = UInt16(38952) ^ 0x2112
        let ip: [UInt8] = [11, 0, 113, 50]
        let mask: [UInt8] = [0x21, 0x12, 0xA4, 0x42]
        let body = value ?? [0, 1, UInt8(port >> 8), UInt8(port & 0xFF)] + zip(ip, mask).map { $0 ^ $1 }
        w.u16(type)
        w.u16(UInt16(4 + body.count))
        w.u32(STUN.magicCookie)
        w.raw(transaction ?? self.transaction)
        w.u16(attribute)
        w.u16(UInt16(body.count))
        w.raw(body)
        return w.bytes
    }

    @Test func requestIsTwentyBytesWithTheCookie() {
        let request = STUN.request(transactionID: transaction)
        #expect(request.count == 20)
        #expect(Array(request[0..<8]) == [0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42])
        #expect(Array(request[8...]) == transaction)
    }

    @Test func readsTheXorMappedAddress() throws {
        let address = try STUN.mappedAddress(in: response(), transactionID: transaction)
        #expect(address == PeerAddress(host: "11.0.113.50", port: 38952))
    }

    @Test func refusesAnotherTransactionErrorsAndBadAttributes() {
        #expect(throws: STUN.ParseError.self) {
            try STUN.mappedAddress(
                in: response(transaction: Array(repeating: 9, count: 12)), transactionID: transaction)
        }
        #expect(throws: STUN.ParseError.self) {
            try STUN.mappedAddress(in: response(type: 0x0111), transactionID: transaction)
        }
        // An unknown family, a truncated value, a length that runs past the message.
        #expect(throws: (any Error).self) {
            try STUN.mappedAddress(in: response(value: [0, 9, 0, 0, 1, 2, 3, 4]), transactionID: transaction)
        }
        #expect(throws: (any Error).self) {
            try STUN.mappedAddress(in: response(value: [0, 1, 0]), transactionID: transaction)
        }
        var long = response()
        long[3] = 200
        #expect(throws: (any Error).self) { try STUN.mappedAddress(in: long, transactionID: transaction) }
        #expect(throws: (any Error).self) {
            try STUN.mappedAddress(in: Array(repeating: 0, count: 5000), transactionID: transaction)
        }
    }

    @Test func classifiesMappings() {
        let a = PeerAddress(host: "11.0.113.50", port: 4000)
        let b = PeerAddress(host: "11.0.113.50", port: 4001)
        #expect(
            MappingKind.classify(observed: [a, a], local: ["192.168.50.2"], localPort: 4000) == .endpointIndependent)
        #expect(MappingKind.classify(observed: [a, b], local: ["192.168.50.2"], localPort: 4000) == .endpointDependent)
        #expect(MappingKind.classify(observed: [a], local: ["192.168.50.2"], localPort: 4000) == .unknown)
        #expect(MappingKind.classify(observed: [a, a], local: ["11.0.113.50"], localPort: 4000) == .none)
        #expect(MappingKind.classify(observed: [], local: [], localPort: 0) == .unknown)
    }
}

@Suite struct RelayProtocolTests {
    let key = [UInt8](repeating: 7, count: 20)
    let seen = WireAddress(ip: [11, 0, 113, 50], port: 4000)!

    @Test func everyMessageRoundTrips() throws {
        let messages: [RelayMessage] = [
            .register(key: key), .registered(observed: seen), .connect(key: key, listenPort: 4001, punch: true),
            .peer(circuit: Array(0..<16), observed: seen, listenPort: 4001), .relay,
            .incoming(circuit: Array(0..<16), from: seen), .attach(circuit: Array(0..<16)), .bridged,
            .refused(code: .full, text: "too many"),
        ]
        for message in messages {
            #expect(try RelayMessage(frame: message.frame()) == message)
        }
    }

    /// Found by the `nat` fuzz target: a relay's refusal text of 96 bytes of 0xFF decodes to
    /// 96 U+FFFD (288 bytes), which sending cut to 200 bytes in the middle of a scalar, so the
    /// text changed on its way back. Both sides now cut between scalars at the same length.
    @Test func aRefusalOfInvalidUTF8RoundTrips() throws {
        var payload: [UInt8] = [0x00, 0x02]  // full
        payload += [0, 0, 0, 96] + [UInt8](repeating: 0xFF, count: 96)
        let decoded = try RelayMessage(frame: Frame(type: 0x6007, payload: payload))
        guard case .refused(.full, let text) = decoded else {
            Issue.record("not a refusal: \(decoded)")
            return
        }
        #expect(text.utf8.count <= 200)
        #expect(text.unicodeScalars.allSatisfy { $0 == "\u{FFFD}" })
        #expect(try RelayMessage(frame: decoded.frame()) == decoded)
        // A long valid text of three-byte characters is cut between characters, too.
        let long = RelayMessage.refused(code: .timeout, text: String(repeating: "€", count: 100))
        guard case .refused(_, let cut) = try RelayMessage(frame: long.frame()) else { return }
        #expect(cut == String(repeating: "€", count: 66))
    }

    @Test func refusesStrangersAndTrailingBytes() {
        var frame = RelayMessage.register(key: key).frame()
        frame.payload[0] = UInt8(ascii: "X")
        #expect(throws: DecodeError.self) { try RelayMessage(frame: frame) }
        var long = RelayMessage.bridged.frame()
        long.payload = [1]
        #expect(throws: DecodeError.self) { try RelayMessage(frame: long) }
        #expect(throws: DecodeError.self) { try RelayMessage(frame: Frame(type: 0x6FFF, payload: [])) }
    }
}

@Suite struct RelayTableTests {
    let key = [UInt8](repeating: 7, count: 20)
    let seen = WireAddress(ip: [11, 0, 113, 50], port: 4000)!
    var circuitCounter = 0

    func circuit() -> [UInt8] { [UInt8](repeating: 0xC1, count: 16) }

    /// Seeder 1 registers from 11.0.113.50, downloader 2 connects, seeder's connection 3 attaches.
    @Test func joinsADownloaderToTheRegisteredSeeder() {
        var table = RelayTable()
        table.opened(1, address: "11.0.113.50")
        table.opened(2, address: "11.0.113.60")
        table.opened(3, address: "11.0.113.50")
        #expect(
            table.received(.register(key: key), on: 1, observed: seen, now: 0, newCircuitID: circuit)
                == [.send(.registered(observed: seen), to: 1)])
        #expect(
            table.received(
                .connect(key: key, listenPort: 0, punch: false), on: 2, observed: seen, now: 1, newCircuitID: circuit)
                == [.send(.incoming(circuit: circuit(), from: seen), to: 1)])
        #expect(
            table.received(.attach(circuit: circuit()), on: 3, observed: seen, now: 2, newCircuitID: circuit)
                == [.bridge(2, 3)])
        #expect(table.circuitCount == 1)
        #expect(table.closed(2) == [.close(3, reason: "the other end closed")])
        #expect(table.circuitCount == 0)
    }

    @Test func aStrangerCannotTakeACircuitOrReachAnUnregisteredKey() {
        var table = RelayTable()
        table.opened(1, address: "11.0.113.50")
        table.opened(2, address: "11.0.113.60")
        table.opened(9, address: "11.0.113.99")
        _ = table.received(.register(key: key), on: 1, observed: seen, now: 0, newCircuitID: circuit)
        _ = table.received(
            .connect(key: key, listenPort: 0, punch: false), on: 2, observed: seen, now: 0, newCircuitID: circuit)
        // The circuit id, stolen or guessed, from another address: refused.
        let stolen = table.received(.attach(circuit: circuit()), on: 9, observed: seen, now: 0, newCircuitID: circuit)
        #expect(
            stolen.contains { if case .send(.refused(.unknownKey, _), 9) = $0 { return true } else { return false } })
        // Connecting to a key nobody registered: refused, nobody is told anything.
        table.opened(10, address: "11.0.113.98")
        let other = table.received(
            .connect(key: [UInt8](repeating: 1, count: 20), listenPort: 0, punch: false), on: 10, observed: seen,
            now: 0, newCircuitID: circuit)
        #expect(other.count == 2)
        #expect(!other.contains { if case .send(_, 1) = $0 { return true } else { return false } })
        // A client speaking the relay's messages is refused.
        table.opened(11, address: "11.0.113.97")
        #expect(table.received(.bridged, on: 11, observed: seen, now: 0, newCircuitID: circuit).count == 2)
    }

    @Test func unansweredCircuitsExpireAndFloodsAreCapped() {
        var limits = RelayTable.Limits()
        limits.maxCircuitsPerAddress = 3
        var table = RelayTable(limits: limits)
        table.opened(1, address: "11.0.113.50")
        _ = table.received(.register(key: key), on: 1, observed: seen, now: 0, newCircuitID: circuit)
        var counter: UInt8 = 0
        var refused = 0
        for connection in 2..<12 {
            table.opened(connection, address: "11.0.113.60")
            let directives = table.received(
                .connect(key: key, listenPort: 0, punch: false), on: connection, observed: seen, now: 0
            ) {
                counter += 1
                return [UInt8](repeating: counter, count: 16)
            }
            if directives.contains(where: {
                if case .send(.refused(.full, _), _) = $0 { return true } else { return false }
            }) {
                refused += 1
            }
        }
        #expect(refused == 7)
        let expired = table.tick(now: limits.attachSeconds + 1)
        #expect(expired.filter { if case .close = $0 { return true } else { return false } }.count == 3)
        // Their slots are free again.
        table.opened(20, address: "11.0.113.60")
        let again = table.received(.connect(key: key, listenPort: 0, punch: false), on: 20, observed: seen, now: 20) {
            [UInt8](repeating: 99, count: 16)
        }
        #expect(again == [.send(.incoming(circuit: [UInt8](repeating: 99, count: 16), from: seen), to: 1)])
    }

    @Test func liveCircuitsEndAtTheirTimeLimit() {
        var limits = RelayTable.Limits()
        limits.circuitSeconds = 60
        var table = RelayTable(limits: limits)
        table.opened(1, address: "a")
        table.opened(2, address: "b")
        table.opened(3, address: "a")
        _ = table.received(.register(key: key), on: 1, observed: seen, now: 0, newCircuitID: circuit)
        _ = table.received(
            .connect(key: key, listenPort: 0, punch: false), on: 2, observed: seen, now: 0, newCircuitID: circuit)
        _ = table.received(.attach(circuit: circuit()), on: 3, observed: seen, now: 0, newCircuitID: circuit)
        #expect(table.tick(now: 30).isEmpty)
        #expect(table.tick(now: 61).count == 2)
    }
}

@Suite struct RelayPunchTests {
    let key = [UInt8](repeating: 7, count: 20)
    let seeder = WireAddress(ip: [11, 0, 113, 50], port: 4000)!
    let downloader = WireAddress(ip: [11, 0, 113, 40], port: 5000)!
    func circuit() -> [UInt8] { [UInt8](repeating: 0xC1, count: 16) }

    func introduced() -> RelayTable {
        var table = RelayTable()
        table.opened(1, address: "11.0.113.50")
        table.opened(2, address: "11.0.113.40")
        table.opened(3, address: "11.0.113.50")
        _ = table.received(.register(key: key), on: 1, observed: seeder, now: 0, newCircuitID: circuit)
        _ = table.received(
            .connect(key: key, listenPort: 6000, punch: true), on: 2, observed: downloader, now: 0,
            newCircuitID: circuit)
        return table
    }

    /// With punch, attaching introduces the ends (each gets the other's address) instead of bridging.
    @Test func introducesBothEndsThenBridgesOnRequest() {
        var table = introduced()
        let attached = table.received(
            .attach(circuit: circuit()), on: 3, observed: seeder, now: 1, newCircuitID: circuit)
        #expect(
            attached == [
                .send(.peer(circuit: circuit(), observed: seeder, listenPort: 0), to: 2),
                .send(.peer(circuit: circuit(), observed: downloader, listenPort: 6000), to: 3),
            ])
        // The seeder's end may not ask for the bridge; the downloader may.
        #expect(table.received(.relay, on: 3, observed: seeder, now: 1, newCircuitID: circuit).count == 2)
        var again = introduced()
        _ = again.received(.attach(circuit: circuit()), on: 3, observed: seeder, now: 1, newCircuitID: circuit)
        #expect(again.received(.relay, on: 2, observed: downloader, now: 2, newCircuitID: circuit) == [.bridge(2, 3)])
    }

    /// The downloader punched through and left: the seeder's waiting end is closed too.
    @Test func aDownloaderThatLeavesTakesTheSeedersEndWithIt() {
        var table = introduced()
        _ = table.received(.attach(circuit: circuit()), on: 3, observed: seeder, now: 1, newCircuitID: circuit)
        #expect(table.closed(2) == [.close(3, reason: "the downloader left")])
        var silent = introduced()
        _ = silent.received(.attach(circuit: circuit()), on: 3, observed: seeder, now: 1, newCircuitID: circuit)
        #expect(silent.tick(now: 100).count == 2)
    }
}

@Suite struct DialPolicyTests {
    @Test func aRelayCannotMakeUsDialLoopbackMulticastOrOurLAN() {
        let publicRelay = "11.0.113.20"
        #expect(DialPolicy.mayDial(PeerAddress(host: "11.0.113.50", port: 4000), introducedBy: publicRelay))
        for forged in [
            "127.0.0.1", "0.0.0.0", "169.254.1.1", "224.0.0.1", "255.255.255.255", "192.168.1.1", "10.0.0.1",
            "172.16.0.1", "100.64.0.1", "::1", "localhost",
        ] {
            #expect(!DialPolicy.mayDial(PeerAddress(host: forged, port: 22), introducedBy: publicRelay), "\(forged)")
        }
        #expect(!DialPolicy.mayDial(PeerAddress(host: "11.0.113.50", port: 0), introducedBy: publicRelay))
        // A relay on the LAN may introduce LAN peers (never loopback).
        #expect(DialPolicy.mayDial(PeerAddress(host: "192.168.1.7", port: 4000), introducedBy: "192.168.1.2"))
        #expect(!DialPolicy.mayDial(PeerAddress(host: "127.0.0.1", port: 4000), introducedBy: "127.0.0.1"))
    }
}

@Suite struct ObservedAddressTests {
    @Test func twoPeersMustAgreeAndOneLiarCannotMoveIt() {
        var tally = ObservedAddresses()
        let seen = PeerAddress(host: "11.0.113.50", port: 4000)
        #expect(tally.record(sourceIP: "11.0.113.30", observed: seen) == nil)
        // The same peer again is still one voice.
        #expect(tally.record(sourceIP: "11.0.113.30", observed: seen) == nil)
        #expect(
            tally.record(sourceIP: "11.0.113.40", observed: PeerAddress(host: "11.0.113.50", port: 5000))
                == "11.0.113.50")
        #expect(tally.record(sourceIP: "6.6.6.6", observed: PeerAddress(host: "6.6.6.6", port: 1)) == nil)
        #expect(tally.agreed == "11.0.113.50")
        for i in 0..<100 {
            _ = tally.record(sourceIP: "7.7.7.\(i)", observed: PeerAddress(host: "7.7.7.7", port: 1))
        }
        #expect(tally.agreed == "7.7.7.7")
    }
}
