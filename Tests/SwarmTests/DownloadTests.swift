import PeerShareCore
import PeerWire
import Swarm
import Wire
import XCTest

/// The download Instance driven with no sockets and no sleeps: every event is a call, every
/// decision a directive, and time is a number the test chooses.
final class DownloadTests: XCTestCase {
    typealias Directive = Download.Directive

    static func manifest(chunks: Int, chunkSize: Int = 64 * 1024) -> [UInt8] {
        let hashes = (0..<chunks).map {
            ChunkHash.of([UInt8(truncatingIfNeeded: $0), UInt8(truncatingIfNeeded: $0 >> 8)])
        }
        return Manifest.encoding(
            chunkSize: chunkSize, entries: [.file("data.bin", size: UInt64(chunks * chunkSize), chunkHashes: hashes)])
    }

    static func all(_ count: Int) -> [UInt8] {
        var bits = ChunkBitfield(count: count)
        for index in 0..<count { bits[index] = true }
        return bits.bytes
    }

    static func requests(_ out: [Directive], to peer: Int) -> [Int] {
        out.compactMap {
            if case .send(.request(let index), let to) = $0, to == peer { return Int(index) }
            return nil
        }
    }

    static func connects(_ out: [Directive]) -> [Int] {
        out.compactMap {
            if case .connect(let id, _, _) = $0 { return id }
            return nil
        }
    }

    static func closes(_ out: [Directive]) -> [Int: String] {
        var closed: [Int: String] = [:]
        for case .close(let id, let reason) in out { closed[id] = reason }
        return closed
    }

    /// A download of `chunks` chunks with every peer connected, established and joined; peer
    /// ids are 1...peers.count.
    func started(
        chunks: Int, peers: Int, bitfields: [[UInt8]]? = nil, config: Download.Config = .init()
    ) -> (Download, [[Directive]]) {
        let bytes = Self.manifest(chunks: chunks)
        var download = Download(
            shareID: ShareID(manifestBytes: bytes).bytes, peers: (1...peers).map { "10.0.0.\($0):7000" },
            config: config)
        XCTAssertEqual(Self.connects(download.start(now: 0)), Array(1...peers))
        for peer in 1...peers {
            let out = download.established(peer, chunkCount: chunks, now: 0)
            if peer == 1 { XCTAssertTrue(out.contains(.send(.getManifest, to: 1)), "the first peer is asked") }
        }
        XCTAssertTrue(
            download.received(.manifest(bytes: bytes), from: 1, now: 0).contains {
                if case .manifestVerified = $0 { return true }
                return false
            })
        _ = download.chunksOnDisk(ChunkBitfield(count: chunks).bytes, now: 0)
        var perPeer: [[Directive]] = []
        for peer in 1...peers {
            let bits = bitfields?[peer - 1] ?? Self.all(chunks)
            perPeer.append(download.received(.bitfield(bits: bits), from: peer, now: 0))
        }
        return (download, perPeer)
    }

    /// With every connection slot taken, a peer found on the LAN is the next one tried, ahead
    /// of a far peer that was waiting before it.
    func testANearbyPeerTakesTheNextFreeSlotAheadOfFarOnes() {
        var config = Download.Config()
        config.maxPeers = 1
        var download = Download(shareID: [UInt8](repeating: 1, count: 32), peers: ["10.0.0.1:7000"], config: config)
        let first = Self.connects(download.start(now: 0))
        XCTAssertEqual(first.count, 1)
        XCTAssertTrue(Self.connects(download.peersFound(["203.0.113.5:7000"], now: 0)).isEmpty, "no free slot")
        XCTAssertTrue(Self.connects(download.peersFound(["192.168.1.20:7000"], nearby: true, now: 0)).isEmpty)
        let next = download.closed(first[0], reason: "gone", now: 1).compactMap { directive -> String? in
            if case .connect(_, let address, _) = directive { return address.description }
            return nil
        }
        XCTAssertEqual(next, ["192.168.1.20:7000"])
    }

    func testRequestsUpToTheInitialDepthThenOneMorePerPiece() {
        var config = Download.Config()
        config.initialDepth = 3
        var (download, first) = started(chunks: 20, peers: 1, config: config)
        let asked = Self.requests(first[0], to: 1)
        XCTAssertEqual(asked.count, 3)
        let out = download.received(.piece(index: UInt32(asked[0]), data: [1]), from: 1, now: 0.1)
        XCTAssertTrue(out.contains(.verify(index: asked[0], from: 1)))
        XCTAssertEqual(Self.requests(out, to: 1).count, 0, "the piece still counts until its verdict")
        let after = download.verdict(index: asked[0], accepted: true, now: 0.1)
        XCTAssertTrue(after.contains(.announceHave(asked[0])))
        XCTAssertEqual(Self.requests(after, to: 1).count, 1, "a verdict frees one slot")
    }

    func testRequestDepthGrowsWithAFastPeer() {
        var config = Download.Config()
        config.initialDepth = 2
        var (download, first) = started(chunks: 400, peers: 1, config: config)
        var outstanding = Set(Self.requests(first[0], to: 1))
        XCTAssertEqual(outstanding.count, 2)
        // 64 KiB chunks arriving every 2 ms (32 MB/s): half a second of that is 250 chunks,
        // so the depth climbs to its cap.
        var now = 0.0
        for _ in 0..<300 {
            guard let index = outstanding.min() else { break }
            now += 0.002
            outstanding.remove(index)
            let out =
                download.received(
                    .piece(index: UInt32(index), data: [UInt8](repeating: 0, count: 65536)), from: 1, now: now)
                + download.verdict(index: index, accepted: true, now: now)
            outstanding.formUnion(Self.requests(out, to: 1))
        }
        XCTAssertGreaterThan(outstanding.count, 20, "a fast peer is kept busy with many requests outstanding")
        XCTAssertLessThanOrEqual(outstanding.count, RequestDepth.maximum)
    }

    func testEndgameAsksASecondPeerAndCancelsTheLoser() {
        var config = Download.Config()
        config.initialDepth = 1
        var (download, first) = started(chunks: 1, peers: 2, config: config)
        XCTAssertEqual(Self.requests(first[0], to: 1), [0])
        XCTAssertEqual(Self.requests(first[1], to: 2), [0], "the only chunk, out with peer 1, is asked of peer 2 too")
        let out = download.received(.piece(index: 0, data: [1]), from: 2, now: 1)
        XCTAssertTrue(out.contains(.verify(index: 0, from: 2)))
        XCTAssertTrue(out.contains(.send(.cancel(index: 0), to: 1)), "the slower copy is cancelled")
        let late = download.received(.piece(index: 0, data: [1]), from: 1, now: 1.1)
        XCTAssertFalse(late.contains { if case .verify = $0 { return true } else { return false } })
        XCTAssertTrue(Self.closes(late).isEmpty, "a cancelled copy that still arrives is no offence")
        XCTAssertTrue(download.verdict(index: 0, accepted: true, now: 1.2).contains(.finished))
    }

    func testAPeerWhoseChunksFailThreeTimesIsBannedAndNeverContactedAgain() {
        var config = Download.Config()
        config.initialDepth = 4
        var (download, first) = started(chunks: 10, peers: 1, config: config)
        let asked = Self.requests(first[0], to: 1)
        var closed: [Int: String] = [:]
        for (strike, index) in asked.prefix(3).enumerated() {
            _ = download.received(.piece(index: UInt32(index), data: [0]), from: 1, now: Double(strike))
            let out = download.verdict(index: index, accepted: false, now: Double(strike))
            closed.merge(Self.closes(out)) { $1 }
            if strike < 2 {
                XCTAssertTrue(out.contains(.event("chunk \(index) failed verification; requesting it again")))
            }
        }
        XCTAssertTrue(closed[1]?.contains("banned") == true, "\(closed)")
        let after = download.closed(1, now: 3)
        XCTAssertTrue(Self.connects(after).isEmpty)
        XCTAssertTrue(Self.connects(download.peersFound(["10.0.0.1:7000"], now: 4)).isEmpty)
        XCTAssertTrue(Self.connects(download.tick(now: 60)).isEmpty, "no retry of a banned address")
        XCTAssertTrue(after.contains { if case .failed(69, _) = $0 { return true } else { return false } })
    }

    func testAStalledPeerIsDroppedAndItsChunksGoToAnother() {
        var config = Download.Config()
        config.initialDepth = 2
        config.stallTimeout = 20
        var (download, first) = started(chunks: 4, peers: 2, bitfields: [Self.all(4), [0]], config: config)
        let stuck = Self.requests(first[0], to: 1)
        XCTAssertEqual(stuck.count, 2)
        XCTAssertTrue(Self.closes(download.tick(now: 10)).isEmpty, "10 s of silence is not yet a stall")
        let out = download.tick(now: 21)
        XCTAssertTrue(Self.closes(out)[1]?.hasPrefix("delivered nothing for 20 s with 2 requests outstanding") == true)
        _ = download.received(.have(index: UInt32(stuck[0])), from: 2, now: 21)
        let moved = download.closed(1, now: 21)
        XCTAssertTrue(Self.requests(moved, to: 2).contains(stuck[0]), "the stalled peer's chunk is asked of the other")
    }

    func testUnreachablePeersAreRetriedWithBackoffThenGivenUp() {
        var config = Download.Config()
        config.maxAttempts = 3
        var download = Download(shareID: [UInt8](repeating: 1, count: 32), peers: ["10.0.0.9:1"], config: config)
        // A virtual clock: the test runs every wake-up the Instance asks for, in time order.
        var wakes: [Double] = []
        func note(_ out: [Directive]) -> [Directive] {
            for case .wake(let at) in out { wakes.append(at) }
            return out
        }
        var id = Self.connects(note(download.start(now: 0)))[0]
        var failedAt = 0.0
        var delays: [Double] = []
        var last: [Directive] = []
        while delays.count < 2 {
            last = note(download.closed(id, reason: "connection refused", now: failedAt))
            var reconnected: Int?
            while reconnected == nil, let next = wakes.min() {
                wakes.removeAll { $0 == next }
                reconnected = Self.connects(note(download.tick(now: next))).first
                if reconnected != nil {
                    delays.append(next - failedAt)
                    failedAt = next
                }
            }
            guard let reconnected else { return XCTFail("no new attempt after a failure") }
            id = reconnected
        }
        XCTAssertEqual(delays, [0.5, 1.0], "the pause doubles with each attempt")
        last = download.closed(id, reason: "connection refused", now: failedAt)
        XCTAssertTrue(
            last.contains(
                .failed(
                    code: 69, reason: "could not reach any peer that has the share: 10.0.0.9:1 (connection refused)."))
        )
    }

    /// A peer that keeps refusing chunks its bitfield claims (its file changed since it was
    /// hashed) is dropped each time; it is retried ever more slowly, and given up on after
    /// `maxAttempts` such drops, not reconnected every quarter second for ever.
    func testAPeerThatKeepsRefusingChunksIsRetriedEverMoreSlowlyThenGivenUp() {
        var config = Download.Config()
        config.maxAttempts = 3
        config.initialDepth = 4
        var (download, first) = started(chunks: 10, peers: 1, config: config)
        var asked = Self.requests(first[0], to: 1)
        var id = 1
        var now = 0.0
        var delays: [Double] = []
        var wakes: [Double] = []
        func note(_ out: [Directive]) -> [Directive] {
            for case .wake(let at) in out { wakes.append(at) }
            return out
        }
        for round in 0..<3 {
            var out: [Directive] = []
            for index in asked.prefix(3) {
                out += note(download.received(.reject(index: UInt32(index), reason: "changed"), from: id, now: now))
            }
            XCTAssertEqual(Self.closes(out)[id], "refused 3 chunks it claimed to have", "round \(round)")
            _ = note(download.closed(id, now: now))
            let droppedAt = now
            var reconnected: Int?
            while reconnected == nil, let next = wakes.min(), next < droppedAt + 60 {
                wakes.removeAll { $0 == next }
                now = next
                reconnected = Self.connects(note(download.tick(now: next))).first
            }
            guard let reconnected else {
                XCTAssertEqual(round, 2, "given up on only after three drops")
                break
            }
            delays.append(now - droppedAt)
            id = reconnected
            _ = note(download.established(id, chunkCount: 10, now: now))
            asked = Self.requests(note(download.received(.bitfield(bits: Self.all(10)), from: id, now: now)), to: id)
        }
        XCTAssertEqual(delays, [0.5, 1.0], "the pause doubles with each drop")
    }

    /// A peer asked for the manifest that has not delivered it after `stallTimeout` (one that
    /// trickles it a byte at a time, say) is raced, not waited on for ever: another peer is
    /// asked as well, the first genuine manifest wins, and the slow one's, should it come, is
    /// no offence.
    func testAManifestNotDeliveredInTimeIsAskedOfAnotherPeerToo() {
        let bytes = Self.manifest(chunks: 4)
        var download = Download(
            shareID: ShareID(manifestBytes: bytes).bytes, peers: ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"])
        _ = download.start(now: 0)
        XCTAssertTrue(download.established(1, chunkCount: 4, now: 0).contains(.send(.getManifest, to: 1)))
        XCTAssertFalse(download.established(2, chunkCount: 4, now: 0).contains(.send(.getManifest, to: 2)))
        _ = download.established(3, chunkCount: 4, now: 0)
        XCTAssertFalse(download.tick(now: 19).contains(.send(.getManifest, to: 2)), "not before stallTimeout")
        let raced = download.tick(now: 20)
        XCTAssertTrue(raced.contains(.send(.getManifest, to: 2)))
        XCTAssertTrue(raced.contains(.event("no manifest from 10.0.0.1:7000 after 20 s; asking 10.0.0.2:7000 as well")))
        XCTAssertTrue(Self.closes(raced).isEmpty, "the slow peer is raced, not dropped")
        XCTAssertFalse(download.tick(now: 21).contains(.send(.getManifest, to: 3)), "the new ask has its own time")
        XCTAssertTrue(download.tick(now: 40).contains(.send(.getManifest, to: 3)))
        let arrived = download.received(.manifest(bytes: bytes), from: 2, now: 41)
        XCTAssertTrue(arrived.contains { if case .manifestVerified = $0 { return true } else { return false } })
        XCTAssertTrue(download.received(.manifest(bytes: bytes), from: 1, now: 42).isEmpty, "late, and harmless")
        XCTAssertFalse(download.tick(now: 80).contains { if case .send(.getManifest, _) = $0 { true } else { false } })
    }

    func testAManifestThatDoesNotMatchTheShareIsRefusedAndItsSenderNotRetried() {
        let bytes = Self.manifest(chunks: 2)
        var config = Download.Config()
        config.maxAttempts = 8
        var download = Download(shareID: ShareID(manifestBytes: bytes).bytes, peers: ["10.0.0.1:1"], config: config)
        _ = download.start(now: 0)
        _ = download.established(1, chunkCount: 2, now: 0)
        let out = download.received(.manifest(bytes: Self.manifest(chunks: 3)), from: 1, now: 0)
        XCTAssertEqual(Self.closes(out)[1], "sent a manifest that does not match the share id")
        let closed = download.closed(1, now: 0)
        XCTAssertTrue(closed.contains { if case .failed = $0 { return true } else { return false } })
    }

    func testMessagesOutOfTurnAndOutOfRangeCloseTheConnection() {
        var config = Download.Config()
        config.initialDepth = 1
        var (download, first) = started(chunks: 4, peers: 1, config: config)
        let unasked = (0..<4).first { !Self.requests(first[0], to: 1).contains($0) } ?? 0
        XCTAssertEqual(
            Self.closes(download.received(.bitfield(bits: Self.all(4)), from: 1, now: 0))[1],
            "sent a bitfield out of turn")
        XCTAssertEqual(
            Self.closes(download.received(.have(index: 4), from: 1, now: 0))[1], "sent have for chunk 4 of 4")
        XCTAssertEqual(
            Self.closes(download.received(.piece(index: UInt32(unasked), data: [1]), from: 1, now: 0))[1],
            "sent chunk \(unasked) it was not asked for")
        XCTAssertEqual(
            Self.closes(download.received(.request(index: 0), from: 1, now: 0))[1], "unexpected request message")
    }

    func testTheDownloadLimitPacesRequests() {
        var config = Download.Config()
        config.initialDepth = 8
        config.downloadRate = 64 * 1024  // one 64 KiB chunk a second
        var (download, first) = started(chunks: 500, peers: 1, config: config)
        var outstanding = Self.requests(first[0], to: 1)
        var asked = outstanding.count
        // A peer that delivers at once: only the limit holds the requests back.
        for tenth in 1...100 {
            let now = Double(tenth) / 10
            var out = download.tick(now: now)
            for index in outstanding {
                out += download.received(.piece(index: UInt32(index), data: [0]), from: 1, now: now)
                out += download.verdict(index: index, accepted: true, now: now)
            }
            outstanding = Self.requests(out, to: 1)
            asked += outstanding.count
        }
        XCTAssertTrue((9...12).contains(asked), "about one 64 KiB request a second for 10 s, got \(asked)")
    }
}
