import Kademlia
import PeerShareCore
import XCTest

/// What a node does with strangers (issue 9): queriers enter the table only by answering a
/// query of ours, transaction ids cannot be guessed, and a full per-address table does not
/// turn newcomers away.
final class DHTHardeningTests: XCTestCase {
    private func sentMessages(_ directives: [DHTNode.Directive]) throws -> [(KRPC.Message, NodeAddress)] {
        try directives.compactMap { directive in
            guard case .send(let packet, let address) = directive else { return nil }
            return (try KRPC.decode(packet), address)
        }
    }

    func testAQuerierEntersTheTableOnlyAfterAnsweringOurPing() throws {
        var random = SplitMix64(seed: 11)
        var node = DHTNode(id: NodeID.random(using: &random), now: 0, seed: 2)
        let stranger = NodeID.random(using: &random)
        let address = NodeAddress("10.1.2.3:6881")!
        let ping = KRPC.encode(.init(transaction: [7, 7], body: .query(sender: stranger, .ping)))
        let sent = try sentMessages(node.receive(ping, from: address, now: 1))
        XCTAssertEqual(node.table.nodeCount, 0, "a query alone does not add its sender")
        // We answer, and ask it something of our own.
        let ours = try XCTUnwrap(
            sent.first { message, _ in if case .query = message.body { return true } else { return false } })
        XCTAssertEqual(ours.1, address)
        XCTAssertTrue(sent.contains { $0.0.transaction == [7, 7] }, "the query is answered")
        // A second query while ours is open does not start another.
        let again = try sentMessages(node.receive(ping, from: address, now: 1.5))
        XCTAssertEqual(again.filter { if case .query = $0.0.body { return true } else { return false } }.count, 0)
        // Its answer adds it.
        let answer = KRPC.encode(.init(transaction: ours.0.transaction, body: .response(.init(id: stranger))))
        _ = node.receive(answer, from: address, now: 2)
        XCTAssertEqual(node.table.nodeCount, 1)
    }

    func testTransactionIDsAreNotSequential() throws {
        var random = SplitMix64(seed: 12)
        var node = DHTNode(id: NodeID.random(using: &random), now: 0, seed: 3)
        var ids: [UInt16] = []
        for port in 1...20 {
            for (message, _) in try sentMessages(node.ping(NodeAddress("10.9.9.9:\(port)")!, now: 0)) {
                ids.append(UInt16(message.transaction[0]) << 8 | UInt16(message.transaction[1]))
            }
        }
        XCTAssertEqual(ids.count, 20)
        let steps = zip(ids, ids.dropFirst()).filter { $1 == $0 &+ 1 }.count
        XCTAssertLessThan(steps, 3, "ids \(ids) look sequential")
        XCTAssertEqual(Set(ids).count, 20)
    }

    func testAFullPerAddressTableStillLetsNewcomersIn() {
        var random = SplitMix64(seed: 13)
        var config = DHTNode.Config()
        config.maxTrackedIPs = 100
        var node = DHTNode(id: NodeID.random(using: &random), now: 0, seed: 4, config: config)
        let ping = KRPC.encode(.init(transaction: [0, 1], body: .query(sender: NodeID.random(using: &random), .ping)))
        for i in 0..<100 { _ = node.receive(ping, from: NodeAddress("10.0.\(i / 250).\(i % 250 + 1):1")!, now: 0) }
        // At once (every tracked address is fresh) and a little later: a newcomer is answered.
        XCTAssertFalse(node.receive(ping, from: NodeAddress("10.7.7.7:1")!, now: 0).isEmpty)
        XCTAssertFalse(node.receive(ping, from: NodeAddress("10.7.7.8:1")!, now: 5).isEmpty)
        XCTAssertEqual(node.stats.rateLimited, 0)
    }
}
