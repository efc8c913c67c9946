import Kademlia
import PeerShareCore
import XCTest

/// Adaptive soft timeouts (issue 13): a query waits for its node about as long as that node
/// (or, for a stranger, the nodes together) has been measured to take, so a dead node costs a
/// lookup a few round trips instead of the fixed soft timeout.
final class RoundTripTests: XCTestCase {
    let near = NodeAddress("10.0.0.1:6881")!
    let far = NodeAddress("10.0.0.2:6881")!
    let stranger = NodeAddress("10.0.0.3:6881")!

    func testPatienceFollowsEachNodesMeasuredRoundTripWithinBounds() {
        var times = RoundTripTimes()
        XCTAssertEqual(times.patience(for: near, floor: 0.001, ceiling: 0.5), 0.5, "nothing measured: the ceiling")
        for _ in 0..<20 { times.record(0.010, from: near) }
        for _ in 0..<20 { times.record(0.200, from: far) }
        let nearPatience = times.patience(for: near, floor: 0.001, ceiling: 0.5)
        let farPatience = times.patience(for: far, floor: 0.001, ceiling: 0.5)
        XCTAssertGreaterThanOrEqual(nearPatience, 0.010)
        XCTAssertLessThan(nearPatience, 0.015, "a steady 10 ms node is given little more than 10 ms")
        XCTAssertGreaterThanOrEqual(farPatience, 0.200)
        XCTAssertLessThan(farPatience, 0.300)
        // A stranger gets the patience of everyone together: their spread covers the far one.
        let strangerPatience = times.patience(for: stranger, floor: 0.001, ceiling: 0.5)
        XCTAssertGreaterThan(strangerPatience, farPatience)
        XCTAssertEqual(times.patience(for: near, floor: 0.02, ceiling: 0.5), 0.02, "never below the floor")
        XCTAssertEqual(times.patience(for: stranger, floor: 0.001, ceiling: 0.1), 0.1, "never above the ceiling")
        // Garbage in changes nothing.
        times.record(-1, from: near)
        times.record(.nan, from: near)
        XCTAssertEqual(times.patience(for: near, floor: 0.001, ceiling: 0.5), nearPatience)
    }

    func testHowManyNodesAreTrackedIsBounded() {
        var times = RoundTripTimes()
        for index in 0..<(RoundTripTimes.maxTracked + 500) {
            times.record(0.01, from: NodeAddress(ip: 0x0B00_0000 | UInt32(index), port: 1))
        }
        XCTAssertEqual(times.tracked, RoundTripTimes.maxTracked)
    }

    func testADeadNodeAfterMeasuredRoundTripsGoesSlowAtItsPatienceNotTheCeiling() throws {
        var random = SplitMix64(seed: 21)
        var node = DHTNode(id: NodeID.random(using: &random), now: 0, seed: 4)
        // Pings answered in 30 ms teach the node what a round trip here is.
        for port in 1...10 {
            let address = NodeAddress("10.2.0.1:\(port)")!
            for directive in node.ping(address, now: 0) {
                guard case .send(let packet, _) = directive, let message = try? KRPC.decode(packet) else { continue }
                let answer = KRPC.encode(
                    .init(transaction: message.transaction, body: .response(.init(id: NodeID.random(using: &random)))))
                _ = node.receive(answer, from: address, now: 0.03)
            }
        }
        // Each of them answered once in 30 ms: 30 ms + 4 × 15 ms of deviation.
        let patience = node.roundTrips.patience(
            for: NodeAddress("10.2.0.1:1")!, floor: node.config.minimumSoftTimeout, ceiling: node.config.softTimeout)
        XCTAssertEqual(patience, 0.09, accuracy: 1e-9)
        // A lookup through those nodes, which answer no more: slots are freed at that patience.
        let (_, sent) = node.lookup(NodeID.random(using: &random), kind: .findNode, now: 1)
        XCTAssertFalse(sent.isEmpty)
        let deadline = try XCTUnwrap(node.nextDeadline)
        XCTAssertEqual(deadline, 1 + patience, accuracy: 1e-9, "the shell's timer is set for the soft timeout")
        XCTAssertLessThan(deadline - 1, node.config.softTimeout)
    }

    func testUnderChurnAdaptiveSoftTimeoutsMakeLookupsFasterThanTheFixedOne() {
        // The same virtual network twice (5–50 ms one way, 30 % of nodes dead): once with
        // measured patience, once with every soft timeout fixed at the 0.5 s ceiling.
        func medianLookup(adaptive: Bool) -> (hits: Int, median: Double) {
            var config = DHTNode.Config()
            if !adaptive { config.minimumSoftTimeout = config.softTimeout }
            var sim = DHTSimulator(seed: 7)
            sim.addNode(bootstrap: nil, config: config)
            for _ in 1..<120 { sim.addNode(bootstrap: 0, config: config) }
            var random = SplitMix64(seed: 9)
            var dead = Set<Int>()
            while dead.count < 36 { dead.insert(Int.random(in: 1..<120, using: &random)) }
            for number in dead { sim.kill(number) }
            let alive = (0..<120).filter { !dead.contains($0) }
            var hits = 0
            var times: [Double] = []
            for _ in 0..<40 {
                let target = NodeID.random(using: &random)
                let origin = alive[Int.random(in: 0..<alive.count, using: &random)]
                guard let (result, seconds) = sim.timedLookup(from: origin, target: target) else { continue }
                times.append(seconds)
                if result.closest.first?.id == sim.trueClosest(to: target, excluding: origin) { hits += 1 }
            }
            return (hits, times.sorted()[times.count / 2])
        }
        let adaptive = medianLookup(adaptive: true)
        let fixed = medianLookup(adaptive: false)
        XCTAssertGreaterThanOrEqual(adaptive.hits, 39, "moving on sooner must not lose the closest node")
        XCTAssertGreaterThanOrEqual(fixed.hits, 39)
        XCTAssertLessThan(adaptive.median * 2, fixed.median, "adaptive \(adaptive.median) s, fixed \(fixed.median) s")
    }
}
