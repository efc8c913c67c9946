import IPC
import PeerWire
import XCTest

final class ChunkSchedulerTests: XCTestCase {
    func testRequestsRespectTheInFlightLimitAndSkipVerifiedChunks() {
        var verified = ChunkBitfield(count: 6)
        verified[1] = true
        var scheduler = ChunkScheduler(chunkCount: 6, verified: verified, maxInFlightPerPeer: 2)
        scheduler.peerJoined(1)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [0, 2])
        XCTAssertEqual(scheduler.nextRequests(for: 1), [])
        XCTAssertEqual(scheduler.pieceArrived(index: 0, from: 1), .verify)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [], "a chunk awaiting verification still counts")
        XCTAssertEqual(scheduler.verificationResult(index: 0, accepted: true), .accepted)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [3])
    }

    func testRejectedChunkIsRequestedAgainAndLiarIsBanned() {
        var scheduler = ChunkScheduler(chunkCount: 4, verified: nil, maxInFlightPerPeer: 4)
        scheduler.peerJoined(1)
        scheduler.peerJoined(2)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [0, 1, 2, 3])
        for index in 0..<3 {
            XCTAssertEqual(scheduler.pieceArrived(index: index, from: 1), .verify)
        }
        XCTAssertEqual(scheduler.verificationResult(index: 0, accepted: false), .rejected)
        XCTAssertEqual(scheduler.verificationResult(index: 1, accepted: false), .rejected)
        XCTAssertEqual(scheduler.verificationResult(index: 2, accepted: false), .rejectedAndBanned(1))
        XCTAssertEqual(scheduler.nextRequests(for: 1), [], "a banned peer gets nothing")
        XCTAssertEqual(scheduler.nextRequests(for: 2), [0, 1, 2, 3], "its chunks go to the honest peer")
    }

    func testPeerLeavingReturnsItsChunks() {
        var scheduler = ChunkScheduler(chunkCount: 3, verified: nil, maxInFlightPerPeer: 8)
        scheduler.peerJoined(1)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [0, 1, 2])
        XCTAssertEqual(scheduler.pieceArrived(index: 1, from: 1), .verify)
        scheduler.peerLeft(1)
        scheduler.peerJoined(2)
        XCTAssertEqual(scheduler.nextRequests(for: 2), [0, 2])
        XCTAssertEqual(scheduler.pieceArrived(index: 1, from: 2), .unexpected, "never asked peer 2 for chunk 1")
        XCTAssertEqual(scheduler.verificationResult(index: 1, accepted: true), .accepted)
        XCTAssertEqual(scheduler.pieceArrived(index: 0, from: 2), .verify)
        XCTAssertEqual(scheduler.pieceArrived(index: 2, from: 2), .verify)
        _ = scheduler.verificationResult(index: 0, accepted: true)
        _ = scheduler.verificationResult(index: 2, accepted: true)
        XCTAssertTrue(scheduler.isComplete)
    }
}

final class EndgameTests: XCTestCase {
    func testLastChunksAreAlsoAskedOfAnotherPeerAndTheFirstCopyWins() {
        var scheduler = ChunkScheduler(chunkCount: 3, verified: nil, maxInFlightPerPeer: 4)
        scheduler.peerJoined(1)
        scheduler.peerJoined(2)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [0, 1, 2], "peer 1 (silent, as it turns out) takes all")
        XCTAssertTrue(scheduler.inEndgame)
        XCTAssertEqual(scheduler.nextRequests(for: 2), [0, 1, 2], "endgame: the same chunks from peer 2")
        XCTAssertEqual(scheduler.nextRequests(for: 2), [], "one extra copy per chunk")
        for index in 0..<3 {
            XCTAssertEqual(scheduler.pieceArrived(index: index, from: 2), .verify)
            XCTAssertEqual(scheduler.verificationResult(index: index, accepted: true), .accepted)
        }
        XCTAssertTrue(scheduler.isComplete)
        XCTAssertEqual(scheduler.pieceArrived(index: 0, from: 1), .duplicate, "the late copy is dropped, no blame")
    }

    func testLeavingOwnerHandsTheChunkToTheEndgameCopy() {
        var scheduler = ChunkScheduler(chunkCount: 1, verified: nil, maxInFlightPerPeer: 4)
        scheduler.peerJoined(1)
        scheduler.peerJoined(2)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [0])
        XCTAssertEqual(scheduler.nextRequests(for: 2), [0])
        scheduler.peerLeft(1)
        XCTAssertEqual(scheduler.states[0], .requested(from: 2))
        XCTAssertEqual(scheduler.pieceArrived(index: 0, from: 2), .verify)
    }
}
