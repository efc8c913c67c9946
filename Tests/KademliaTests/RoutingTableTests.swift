import Kademlia
import XCTest

final class RoutingTableTests: XCTestCase {
    let own = NodeID(bytes: [UInt8](repeating: 0, count: 20))!

    func node(_ first: UInt8, _ last: UInt8 = 1, port: UInt16 = 1) -> NodeInfo {
        var bytes = [UInt8](repeating: 0, count: 20)
        bytes[0] = first
        bytes[19] = last
        return NodeInfo(
            id: NodeID(bytes: bytes)!,
            address: NodeAddress(ip: 0x7F00_0001, port: port + UInt16(first) * 256 + UInt16(last)))
    }

    func testBucketHoldingOurIDSplitsOthersDoNot() {
        var table = RoutingTable(ownID: own, now: 0)
        // Eight far nodes (first bit 1) fill the only bucket; the ninth forces a split.
        for i in 0..<8 { XCTAssertEqual(table.nodeResponded(node(0x80 | UInt8(i)), now: 0), .added) }
        XCTAssertEqual(table.buckets.count, 1)
        XCTAssertEqual(table.nodeResponded(node(0x01), now: 0), .added)
        XCTAssertEqual(table.buckets.count, 2)
        XCTAssertEqual(table.buckets[0].entries.count, 8, "the far half keeps its 8 nodes")
        // The far bucket is full and does not hold our id: no split, ping the oldest instead.
        let result = table.nodeResponded(node(0xC0), now: 1)
        XCTAssertEqual(result, .pingNeeded(node(0x80)))
        XCTAssertEqual(table.buckets.count, 2)
    }

    func testEvictionOnlyAfterFailedPing() {
        var table = RoutingTable(ownID: own, now: 0)
        for i in 0..<8 { table.nodeResponded(node(0x80 | UInt8(i)), now: 0) }
        table.nodeResponded(node(0x01), now: 0)
        let newcomer = node(0xC0)
        guard case .pingNeeded(let oldest) = table.nodeResponded(newcomer, now: 1) else { return XCTFail() }
        XCTAssertFalse(table.allNodes.contains { $0.info == newcomer })
        table.nodeFailed(oldest.id, now: 2)
        XCTAssertTrue(table.allNodes.contains { $0.info == oldest }, "one failure is not enough")
        table.nodeFailed(oldest.id, now: 3)
        XCTAssertFalse(table.allNodes.contains { $0.info == oldest })
        XCTAssertTrue(table.allNodes.contains { $0.info == newcomer }, "the waiting node took the slot")
    }

    func testClosestIsOrderedByXORDistance() {
        var table = RoutingTable(ownID: own, now: 0)
        let nodes = [node(0x10), node(0x20), node(0x30), node(0x01), node(0x02)]
        for n in nodes { table.nodeResponded(n, now: 0) }
        let target = node(0x21).id
        XCTAssertEqual(table.closest(to: target, count: 3).map(\.id), [node(0x20).id, node(0x30).id, node(0x01).id])
    }

    func testRefreshAfterFifteenMinutesOfSilence() {
        var table = RoutingTable(ownID: own, now: 0)
        table.nodeResponded(node(0x80), now: 0)
        XCTAssertEqual(table.bucketsNeedingRefresh(now: 14 * 60), [])
        XCTAssertEqual(table.bucketsNeedingRefresh(now: 15 * 60), [0])
    }
}

final class LookupTests: XCTestCase {
    func info(_ byte: UInt8) -> NodeInfo {
        NodeInfo(
            id: NodeID(bytes: [byte] + [UInt8](repeating: 0, count: 19))!,
            address: NodeAddress(ip: 1, port: UInt16(byte) + 1))
    }

    func testAlphaParallelismAndTermination() {
        let target = NodeID(bytes: [UInt8](repeating: 0, count: 20))!
        var lookup = Lookup(target: target, kind: .findNode, seeds: (1...5).map { info($0 * 40) }, k: 2)
        let first = lookup.nextQueries()
        XCTAssertEqual(first.count, 2, "only the k closest are queried when there are few")
        XCTAssertEqual(lookup.nextQueries().count, 0)
        // The closest seed knows two nodes closer still.
        lookup.responded(from: first[0].address, id: first[0].id!, nodes: [info(1), info(2)], values: [], token: nil)
        let second = lookup.nextQueries()
        XCTAssertEqual(second.map(\.id), [info(1).id, info(2).id], "alpha 3 minus 1 in flight")
        XCTAssertEqual(lookup.nextQueries().count, 0, "alpha in flight")
        lookup.failed(address: info(1).address)
        lookup.responded(from: info(2).address, id: info(2).id, nodes: [], values: [], token: [7])
        XCTAssertTrue(
            lookup.isFinished, "the k = 2 closest that did not fail have answered; the farther query cannot matter")
        XCTAssertEqual(lookup.closestResponded.first?.id, info(2).id)
        XCTAssertEqual(lookup.closestResponded.first?.token, [7])
        XCTAssertEqual(lookup.hops, 2)
    }

    func testSlowQueryGivesUpItsSlotAndStopsBlockingOnceKHaveAnswered() {
        let target = NodeID(bytes: [UInt8](repeating: 0, count: 20))!
        var lookup = Lookup(target: target, kind: .findNode, seeds: [10, 20, 30, 40].map { info($0) }, k: 2)
        XCTAssertEqual(lookup.nextQueries().map(\.id), [info(10).id, info(20).id])
        lookup.slow(address: info(10).address)
        XCTAssertEqual(lookup.nextQueries().map(\.id), [info(30).id], "the slow node's slot goes to the next one")
        lookup.responded(from: info(20).address, id: info(20).id, nodes: [], values: [], token: nil)
        XCTAssertFalse(lookup.isFinished)
        lookup.responded(from: info(30).address, id: info(30).id, nodes: [], values: [], token: nil)
        XCTAssertTrue(lookup.isFinished, "k answers past the slow node")
        XCTAssertEqual(lookup.inFlightCount, 1, "the slow query is still out and may yet answer")
    }
}
