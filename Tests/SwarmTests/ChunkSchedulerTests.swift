import PeerShareCore
import Swarm
import Wire
import XCTest

final class ChunkSchedulerTests: XCTestCase {
    func testRequestsRespectTheInFlightLimitAndSkipVerifiedChunks() {
        var verified = ChunkBitfield(count: 6)
        verified[1] = true
        var scheduler = ChunkScheduler(
            chunkCount: 6, verified: verified, maxInFlightPerPeer: 2, randomFirst: 0, strategy: .rarestInOrder)
        scheduler.peerJoined(1)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [0, 2])
        XCTAssertEqual(scheduler.nextRequests(for: 1), [])
        XCTAssertEqual(scheduler.pieceArrived(index: 0, from: 1), .verify)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [], "a chunk awaiting verification still counts")
        XCTAssertEqual(scheduler.verificationResult(index: 0, accepted: true), .accepted)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [3])
    }

    func testRejectedChunkIsRequestedAgainAndLiarIsBanned() {
        var scheduler = ChunkScheduler(
            chunkCount: 4, verified: nil, maxInFlightPerPeer: 4, randomFirst: 0, strategy: .rarestInOrder)
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

    func testHaveHelpsOnlyForMissingChunksOrInEndgame() {
        var verified = ChunkBitfield(count: 4)
        verified[3] = true
        var scheduler = ChunkScheduler(
            chunkCount: 4, verified: verified, maxInFlightPerPeer: 1, randomFirst: 0, strategy: .rarestInOrder)
        scheduler.peerJoined(1)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [0])
        XCTAssertFalse(scheduler.haveMayHelp(3), "verified already")
        XCTAssertFalse(scheduler.haveMayHelp(0), "requested, and chunks 1 and 2 are still missing")
        XCTAssertTrue(scheduler.haveMayHelp(1), "missing")
        XCTAssertFalse(scheduler.haveMayHelp(9), "out of range")
        scheduler.peerJoined(2)
        XCTAssertEqual(scheduler.nextRequests(for: 2), [1])
        scheduler.peerJoined(3)
        XCTAssertEqual(scheduler.nextRequests(for: 3), [2])
        XCTAssertTrue(scheduler.haveMayHelp(0), "nothing missing: a requested chunk may get an endgame copy")
        XCTAssertEqual(scheduler.pieceArrived(index: 0, from: 1), .verify)
        XCTAssertFalse(scheduler.haveMayHelp(0), "being verified")
    }

    func testPeerLeavingReturnsItsChunks() {
        var scheduler = ChunkScheduler(
            chunkCount: 3, verified: nil, maxInFlightPerPeer: 8, randomFirst: 0, strategy: .rarestInOrder)
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
        var scheduler = ChunkScheduler(
            chunkCount: 3, verified: nil, maxInFlightPerPeer: 4, randomFirst: 0, strategy: .rarestInOrder)
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
        var scheduler = ChunkScheduler(
            chunkCount: 1, verified: nil, maxInFlightPerPeer: 4, randomFirst: 0, strategy: .rarestInOrder)
        scheduler.peerJoined(1)
        scheduler.peerJoined(2)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [0])
        XCTAssertEqual(scheduler.nextRequests(for: 2), [0])
        scheduler.peerLeft(1)
        XCTAssertEqual(scheduler.states[0], .requested(from: 2))
        XCTAssertEqual(scheduler.pieceArrived(index: 0, from: 2), .verify)
    }
}

final class ChunkSelectionTests: XCTestCase {
    private func bits(_ count: Int, _ set: [Int]) -> ChunkBitfield {
        var field = ChunkBitfield(count: count)
        for index in set { field[index] = true }
        return field
    }

    /// Picks read a bitset of the missing chunks, ANDed with the peer's bits a byte at a time.
    /// Against a model that reads `states` one chunk at a time, through random joins, haves,
    /// arrivals, verdicts and departures, with chunk counts that are not a multiple of eight.
    func testPicksMatchAChunkByChunkModelThroughRandomEvents() {
        let rounds: [(PickStrategy, Int)] = [
            (.sequential, 203), (.rarestFirst, 61), (.rarestInOrder, 150), (.sequential, 9), (.rarestFirst, 203),
            (.rarestFirst, 1001), (.rarestFirst, 700), (.random, 300),
        ]
        for (round, (strategy, count)) in rounds.enumerated() {
            var random = SplitMix64(seed: UInt64(round + 7))
            var scheduler = ChunkScheduler(
                chunkCount: count, verified: nil, maxInFlightPerPeer: 3, randomFirst: 0, seed: UInt64(round),
                strategy: strategy)
            var joined: Set<Int> = []
            var held: [Int: Set<Int>] = [:]
            var announced: [Int: [Int]] = [:]  // each peer's `have`s, newest last
            for _ in 0..<3000 {
                let peer = Int(random.next() % 5)
                switch random.next() % 6 {
                case 0 where !joined.contains(peer):
                    // Seeders only in some rounds: every peer then has every chunk, and picks
                    // take the path for equally rare chunks.
                    let seeders = round % 2 == 1
                    let chunks = (0..<count).filter { _ in seeders || random.next() % 3 != 0 }
                    scheduler.peerJoined(peer, has: seeders ? nil : bits(count, chunks))
                    joined.insert(peer)
                    held[peer] = Set(chunks)
                case 1 where joined.contains(peer):
                    let index = Int(random.next() % UInt64(count))
                    if held[peer]?.contains(index) == false {
                        announced[peer, default: []].append(index)
                    }
                    scheduler.peerHas(peer, index: index)
                    held[peer, default: []].insert(index)
                case 2 where joined.contains(peer):
                    let before = scheduler.states
                    let candidates = (0..<count).filter { before[$0] == .missing && held[peer]?.contains($0) == true }
                    for index in scheduler.nextRequests(for: peer, max: 1) where before[index] == .missing {
                        XCTAssertTrue(candidates.contains(index), "chunk \(index) was not a candidate")
                        switch strategy {
                        case .sequential:
                            XCTAssertEqual(index, candidates.first, "sequential takes the lowest candidate")
                        case .rarestInOrder:
                            let rarest = candidates.map { scheduler.availability[$0] }.min()
                            XCTAssertEqual(scheduler.availability[index], rarest, "rarest first")
                        case .rarestFirst:
                            // The rarest of the first `pickWindow` candidates, unless one of
                            // the last chunks the peer announced is as rare: then the newest
                            // such one (it is still in the peer's chunk pool).
                            let window = candidates.prefix(ChunkScheduler.pickWindow)
                            let rarest = window.map { scheduler.availability[$0] }.min() ?? 0
                            let recent = (announced[peer] ?? []).suffix(ChunkScheduler.recentHaveCount).reversed()
                                .first { candidates.contains($0) && scheduler.availability[$0] <= rarest }
                            if let recent {
                                XCTAssertEqual(index, recent, "the newest announced chunk as rare as the rarest")
                            } else {
                                XCTAssertTrue(window.contains(index), "among the first \(ChunkScheduler.pickWindow)")
                                XCTAssertEqual(scheduler.availability[index], rarest, "rarest first")
                            }
                        case .random:
                            break
                        }
                    }
                case 3:
                    for index in 0..<count where scheduler.states[index] == .requested(from: peer) {
                        _ = scheduler.pieceArrived(index: index, from: peer)
                        break
                    }
                case 4:
                    for index in 0..<count {
                        guard case .verifying = scheduler.states[index] else { continue }
                        _ = scheduler.verificationResult(index: index, accepted: random.next() % 4 != 0)
                        break
                    }
                case 5 where joined.contains(peer) && random.next() % 4 == 0:
                    scheduler.peerLeft(peer)
                    joined.remove(peer)
                    held[peer] = nil
                    announced[peer] = nil
                default:
                    break
                }
                XCTAssertEqual(scheduler.inEndgame, !scheduler.states.contains(.missing))
            }
        }
    }

    func testPeersAreAskedOnlyForChunksTheyHave() {
        var scheduler = ChunkScheduler(
            chunkCount: 6, verified: nil, maxInFlightPerPeer: 8, randomFirst: 0, strategy: .rarestInOrder)
        scheduler.peerJoined(1, has: bits(6, [1, 4]))
        XCTAssertEqual(scheduler.nextRequests(for: 1), [1, 4])
        scheduler.peerHas(1, index: 5)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [5], "a have makes the chunk requestable")
    }

    func testRarestChunkIsPickedFirst() {
        var scheduler = ChunkScheduler(
            chunkCount: 4, verified: nil, maxInFlightPerPeer: 1, randomFirst: 0, strategy: .rarestInOrder)
        scheduler.peerJoined(1)  // a seeder: has all four
        scheduler.peerJoined(2, has: bits(4, [0, 1, 2]))
        scheduler.peerJoined(3, has: bits(4, [0, 1]))
        XCTAssertEqual(scheduler.availability, [3, 3, 2, 1])
        XCTAssertEqual(scheduler.nextRequests(for: 1), [3], "chunk 3 is held by one peer only")
        XCTAssertEqual(scheduler.nextRequests(for: 2), [2], "then chunk 2, held by two")
        XCTAssertEqual(scheduler.nextRequests(for: 3), [0], "equally rare: lowest index")
        scheduler.peerLeft(1)
        XCTAssertEqual(scheduler.availability, [2, 2, 1, 0])
        XCTAssertEqual(scheduler.unavailableIndices, [3], "nobody left holds chunk 3")
    }

    func testFirstChunksArePickedAtRandomThenRarestFirst() {
        var firsts = Set<Int>()
        for seed in 1...20 {
            var scheduler = ChunkScheduler(
                chunkCount: 100, verified: nil, maxInFlightPerPeer: 100, randomFirst: 4, seed: UInt64(seed),
                strategy: .rarestInOrder)
            scheduler.peerJoined(1)
            let picked = scheduler.nextRequests(for: 1, max: 6)
            XCTAssertEqual(Set(picked).count, 6)
            firsts.insert(picked[0])
            let next = (1..<100).map { (picked[4] + $0) % 100 }.first { !picked[0..<4].contains($0) }
            XCTAssertEqual(picked[5], next, "after the random phase, equally rare chunks go in index order")
        }
        XCTAssertGreaterThan(firsts.count, 10, "different seeds start at different chunks")
    }

    func testEquallyRareChunksArePickedAtRandom() {
        // Availability: chunks 0-9 are held by one peer, chunks 10-19 by two. Rarest first
        // picks among 0-9 only, and different seeds spread over them.
        var picks = Set<Int>()
        for seed in 1...30 {
            var scheduler = ChunkScheduler(
                chunkCount: 20, verified: nil, maxInFlightPerPeer: 1, randomFirst: 0, seed: UInt64(seed))
            scheduler.peerJoined(1)
            scheduler.peerJoined(2, has: bits(20, Array(10..<20)))
            let picked = scheduler.nextRequests(for: 1)
            XCTAssertEqual(picked.count, 1)
            XCTAssertTrue(picked.allSatisfy { $0 < 10 }, "only the rarest chunks: \(picked)")
            picks.formUnion(picked)
        }
        XCTAssertGreaterThan(picks.count, 5, "ties are broken at random, not in index order")
    }

    func testTwoDownloadersOfOneSeederSweepFromDifferentPlaces() {
        var first = ChunkScheduler(
            chunkCount: 1000, verified: nil, maxInFlightPerPeer: 100, seed: 11, strategy: .rarestInOrder)
        var second = ChunkScheduler(
            chunkCount: 1000, verified: nil, maxInFlightPerPeer: 100, seed: 12, strategy: .rarestInOrder)
        first.peerJoined(1)
        second.peerJoined(1)
        let a = Set(first.nextRequests(for: 1, max: 100))
        let b = Set(second.nextRequests(for: 1, max: 100))
        XCTAssertLessThan(a.intersection(b).count, 20, "mostly different chunks: something to trade")
    }

    func testEndgameCopyIsCancelledWhenTheFirstArrives() {
        var scheduler = ChunkScheduler(
            chunkCount: 1, verified: nil, maxInFlightPerPeer: 4, randomFirst: 0, strategy: .rarestInOrder)
        scheduler.peerJoined(1)
        scheduler.peerJoined(2)
        XCTAssertEqual(scheduler.nextRequests(for: 1), [0])
        XCTAssertEqual(scheduler.nextRequests(for: 2), [0], "endgame copy")
        XCTAssertEqual(scheduler.pieceArrived(index: 0, from: 1), .verify)
        XCTAssertEqual(scheduler.cancelDuplicates(of: 0), [2])
        XCTAssertEqual(scheduler.outstanding(for: 2), 0, "the cancelled request frees its slot")
        XCTAssertEqual(scheduler.pieceArrived(index: 0, from: 2), .duplicate, "sent before the cancel: no blame")
    }

    func testPeerThatStopsDeliveringIsReportedStalled() {
        var scheduler = ChunkScheduler(
            chunkCount: 4, verified: nil, maxInFlightPerPeer: 2, randomFirst: 0, strategy: .rarestInOrder)
        scheduler.peerJoined(1, now: 0)
        scheduler.peerJoined(2, now: 0)
        _ = scheduler.nextRequests(for: 1, now: 0)
        _ = scheduler.nextRequests(for: 2, now: 0)
        XCTAssertEqual(scheduler.pieceArrived(index: 2, from: 2, now: 10), .verify)
        XCTAssertEqual(scheduler.stalledPeers(now: 15, timeout: 20), [])
        XCTAssertEqual(scheduler.stalledPeers(now: 25, timeout: 20), [1], "peer 2 delivered at 10 s")
        scheduler.peerLeft(1)
        XCTAssertEqual(scheduler.states[0], .missing, "its chunks go back to others")
    }
}

final class RequestDepthTests: XCTestCase {
    func testDepthFollowsTheMeasuredRate() {
        var depth = RequestDepth(now: 0)
        XCTAssertEqual(depth.depth(chunkSize: 1 << 20, initial: 4), 4, "unmeasured: the configured start")
        // 4 MiB/s with 1 MiB chunks: half a second is 2 chunks, plus 2 in reserve.
        for tick in 1...20 { depth.record(bytes: 1 << 20, now: Double(tick) * 0.25) }
        XCTAssertEqual(depth.depth(chunkSize: 1 << 20, initial: 16), 4)
        // 400 MiB/s: wants 202, capped at 8 MiB outstanding.
        for tick in 21...60 { depth.record(bytes: 100 << 20, now: Double(tick) * 0.25) }
        XCTAssertEqual(depth.depth(chunkSize: 1 << 20, initial: 16), 8, "capped at 8 MiB outstanding")
        XCTAssertEqual(depth.depth(chunkSize: 64 << 10, initial: 16), RequestDepth.maximum)
    }
}
