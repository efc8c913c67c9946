import Swarm
import XCTest

/// The upload Instance: read-ahead, fair turns under a limit, floods and cancels, with time
/// as a number the test chooses.
final class UploadTests: XCTestCase {
    typealias Directive = Upload.Directive

    static func reads(_ out: [Directive]) -> [(read: Upload.ReadID, index: UInt32, connection: Int)] {
        out.compactMap {
            if case .read(let read, let index, let connection) = $0 { return (read, index, connection) }
            return nil
        }
    }

    static func sends(_ out: [Directive]) -> [(read: Upload.ReadID, connection: Int)] {
        out.compactMap {
            if case .sendPiece(let read, _, let connection) = $0 { return (read, connection) }
            return nil
        }
    }

    func testReadsStayWithinTheReadAheadWhateverThePeerAsks() {
        var upload = Upload(now: 0)
        upload.opened(1, now: 0)
        var reads: [Directive] = []
        for index in 0..<40 { reads += upload.requested(1, index: UInt32(index), servable: true, now: 0) }
        XCTAssertEqual(
            Self.reads(reads).count, upload.readAheadChunks, "40 requests, \(upload.readAheadChunks) chunks read")
        // Each read that completes is sent at once (no limit), but stays in memory until the
        // socket takes it: no further read before `written`.
        let first = Self.reads(reads)[0]
        let sent = upload.readDone(first.read, bytes: 1000, now: 0)
        XCTAssertEqual(Self.sends(sent).map(\.read), [first.read])
        XCTAssertTrue(Self.reads(sent).isEmpty)
        XCTAssertEqual(Self.reads(upload.written(1, now: 0)).count, 1, "the socket took it: one more read")
        XCTAssertEqual(upload.outstanding(1), 39)
    }

    /// A share of small chunks reads further ahead (`setReadAhead`), still within bounds: the
    /// waiting requests go to the hash worker together, never more than asked or allowed.
    func testADeeperReadAheadReadsMoreAtOnceWithinItsBounds() {
        var upload = Upload(now: 0)
        upload.setReadAhead(32)
        upload.opened(1, now: 0)
        var out: [Directive] = []
        for index in 0..<40 { out += upload.requested(1, index: UInt32(index), servable: true, now: 0) }
        XCTAssertEqual(Self.reads(out).count, 32)
        XCTAssertEqual(upload.inMemory(1), 32)
        upload.setReadAhead(10_000)
        XCTAssertEqual(upload.readAheadChunks, Upload.maxOutstanding, "never more than a peer may ask for")
        upload.setReadAhead(0)
        XCTAssertEqual(upload.readAheadChunks, 1)
    }

    func testAFloodOfRequestsFailsTheConnection() {
        var upload = Upload(now: 0)
        upload.opened(1, now: 0)
        var out: [Directive] = []
        for index in 0...Upload.maxOutstanding {
            out = upload.requested(1, index: UInt32(index), servable: true, now: 0)
        }
        XCTAssertEqual(out, [.fail(1, reason: "more than 64 requests outstanding")])
    }

    func testChunksNotVerifiedHereAreRefused() {
        var upload = Upload(now: 0)
        upload.opened(1, now: 0)
        XCTAssertEqual(
            upload.requested(1, index: 3, servable: false, now: 0),
            [.refuse(index: 3, reason: "not verified here yet", to: 1)])
        XCTAssertEqual(upload.outstanding(1), 0)
    }

    /// Under a shared limit, a peer with many requests and a peer with few get pieces in
    /// turn: one each, not first come first served.
    func testConnectionsTakeTurnsUnderTheLimit() {
        let chunk = 100_000
        var upload = Upload(uploadRate: Double(chunk), readAhead: 4, now: 0)  // one chunk a second
        upload.opened(1, now: 0)
        upload.opened(2, now: 0)
        var pending: [Directive] = []
        for index in 0..<8 { pending += upload.requested(1, index: UInt32(index), servable: true, now: 0) }
        for index in 0..<2 { pending += upload.requested(2, index: UInt32(index), servable: true, now: 0) }
        var order: [Int] = []
        var sentAt: [Double] = []
        var now = 0.0
        var reads = Self.reads(pending)
        for _ in 0..<60 {
            var out: [Directive] = []
            for read in reads { out += upload.readDone(read.read, bytes: chunk, now: now) }
            out += upload.tick(now: now)
            reads = Self.reads(out)
            for send in Self.sends(out) {
                order.append(send.connection)
                sentAt.append(now)
                reads += Self.reads(upload.written(send.connection, now: now))
            }
            now += 0.25
        }
        // The first chunk goes out at once (the bucket's burst), before the second peer asked.
        XCTAssertEqual(Array(order.prefix(5)), [1, 1, 2, 1, 2], "turns alternate while both have pieces waiting")
        XCTAssertEqual(order.count, 10, "every requested chunk is sent in the end")
        XCTAssertGreaterThanOrEqual(sentAt.last ?? 0, 8.5, "and no faster than one chunk a second: \(sentAt)")
    }

    func testACancelledQueuedPieceIsChargedAsIfSent() {
        let chunk = 100_000
        var upload = Upload(uploadRate: Double(chunk), readAhead: 4, now: 0)
        upload.opened(1, now: 0)
        var out: [Directive] = []
        for index in 0..<3 { out += upload.requested(1, index: UInt32(index), servable: true, now: 0) }
        let reads = Self.reads(out)
        var sent: [Directive] = []
        for read in reads { sent += upload.readDone(read.read, bytes: chunk, now: 0) }
        XCTAssertEqual(Self.sends(sent).count, 1, "the burst allows one chunk; two wait for tokens")
        let cancelled = upload.cancelled(1, index: 2, now: 0)
        XCTAssertTrue(cancelled.contains(.discard(reads[2].read)))
        XCTAssertEqual(upload.outstanding(1), 1)
        // Chunk 1 would have gone after 1 s; the cancelled chunk 2 is charged, so it waits 2 s.
        XCTAssertTrue(Self.sends(upload.tick(now: 1.5)).isEmpty)
        XCTAssertEqual(Self.sends(upload.tick(now: 2.1)).count, 1)
    }

    func testAConnectionOverItsOwnLimitDoesNotHoldUpTheOthers() {
        let chunk = 100_000
        var upload = Upload(uploadRate: 0, perPeerRate: Double(chunk), now: 0)
        upload.opened(1, now: 0)
        upload.opened(2, now: 0)
        var out: [Directive] = []
        for index in 0..<4 { out += upload.requested(1, index: UInt32(index), servable: true, now: 0) }
        var sent: [Directive] = []
        for read in Self.reads(out) { sent += upload.readDone(read.read, bytes: chunk, now: 0) }
        XCTAssertEqual(Self.sends(sent).count, 1, "connection 1 is over its own limit after one chunk")
        let other = upload.requested(2, index: 0, servable: true, now: 0.1)
        let fast = upload.readDone(Self.reads(other)[0].read, bytes: chunk, now: 0.1)
        XCTAssertEqual(Self.sends(fast).map(\.connection), [2], "connection 2 is served at once")
    }

    func testAClosedConnectionsPiecesAreDiscarded() {
        var upload = Upload(uploadRate: 1000, readAhead: 4, now: 0)
        upload.opened(1, now: 0)
        var out: [Directive] = []
        for index in 0..<3 { out += upload.requested(1, index: UInt32(index), servable: true, now: 0) }
        let reads = Self.reads(out)
        _ = upload.readDone(reads[0].read, bytes: 5000, now: 0)
        _ = upload.readDone(reads[1].read, bytes: 5000, now: 0)
        XCTAssertEqual(upload.closed(1), [.discard(reads[1].read)], "the queued piece is dropped")
        XCTAssertEqual(upload.readDone(reads[2].read, bytes: 5000, now: 0), [.discard(reads[2].read)])
        XCTAssertEqual(upload.connectionCount, 0)
    }
}
