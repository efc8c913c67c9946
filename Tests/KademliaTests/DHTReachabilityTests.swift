import Kademlia
import PeerShareCore
import XCTest

/// BEP 42's `ip` (answers say where they see the querier) and BEP 43's read-only mode
/// (a node behind a NAT that maps nothing keeps itself out of others' tables).
final class DHTReachabilityTests: XCTestCase {
    private func sent(_ directives: [DHTNode.Directive]) throws -> [(KRPC.Message, NodeAddress)] {
        try directives.compactMap { directive in
            guard case .send(let packet, let address) = directive else { return nil }
            return (try KRPC.decode(packet), address)
        }
    }

    private func isQuery(_ message: KRPC.Message) -> Bool {
        if case .query = message.body { return true } else { return false }
    }

    func testAnswersSayWhereTheQuerierIsSeenAndTwoAgreeingRespondersSetOurAddress() throws {
        var random = SplitMix64(seed: 21)
        var responder = DHTNode(id: NodeID.random(using: &random), now: 0, seed: 5)
        let querier = NodeAddress("11.0.113.50:40000")!
        let ping = KRPC.encode(.init(transaction: [1, 2], body: .query(sender: NodeID.random(using: &random), .ping)))
        let answer = try XCTUnwrap(try sent(responder.receive(ping, from: querier, now: 1)).first { !isQuery($0.0) })
        XCTAssertEqual(answer.0.ip, querier)

        // Our node pings two responders; both say they see us at 11.0.113.50:40000.
        var node = DHTNode(id: NodeID.random(using: &random), now: 0, seed: 6)
        XCTAssertNil(node.externalAddress)
        for (index, address) in ["11.0.113.10:6881", "11.0.113.20:6881", "6.6.6.6:6881"].enumerated() {
            let to = NodeAddress(address)!
            let (query, _) = try XCTUnwrap(try sent(node.ping(to, now: 2)).first)
            let seen = index < 2 ? querier : NodeAddress("6.6.6.6:1")!
            let reply = KRPC.encode(
                .init(
                    transaction: query.transaction, body: .response(.init(id: NodeID.random(using: &random))), ip: seen)
            )
            _ = node.receive(reply, from: to, now: 3)
            if index == 0 { XCTAssertNil(node.externalAddress, "one responder alone is not believed") }
        }
        XCTAssertEqual(node.externalAddress, querier, "two agree; the liar does not move it")
    }

    func testAReadOnlyNodeSaysSoAndOthersKeepItOutOfTheirTables() throws {
        var random = SplitMix64(seed: 22)
        var hidden = DHTNode(id: NodeID.random(using: &random), now: 0, seed: 7)
        hidden.readOnly = true
        let (query, _) = try XCTUnwrap(try sent(hidden.ping(NodeAddress("11.0.113.10:6881")!, now: 0)).first)
        XCTAssertTrue(query.readOnly, "every query of a read-only node carries ro=1")

        var other = DHTNode(id: NodeID.random(using: &random), now: 0, seed: 8)
        let replies = try sent(other.receive(KRPC.encode(query), from: NodeAddress("11.0.113.50:40000")!, now: 1))
        XCTAssertTrue(replies.contains { !isQuery($0.0) }, "a read-only querier is answered")
        XCTAssertFalse(replies.contains { isQuery($0.0) }, "and not pinged to enter the table")
        XCTAssertEqual(other.table.nodeCount, 0)
        XCTAssertEqual(other.stats.readOnlyQueries, 1)

        // The read-only node answers no query at all.
        let ping = KRPC.encode(.init(transaction: [3, 4], body: .query(sender: NodeID.random(using: &random), .ping)))
        XCTAssertTrue(hidden.receive(ping, from: NodeAddress("11.0.113.10:6881")!, now: 2).isEmpty)
    }

    func testTheExtensionsRoundTripAndMalformedOnesAreIgnored() throws {
        let message = KRPC.Message(
            transaction: [9], body: .response(.init(id: NodeID(bytes: [UInt8](repeating: 1, count: 20))!)),
            ip: NodeAddress("1.2.3.4:5")!)
        XCTAssertEqual(try KRPC.decode(KRPC.encode(message)), message)
        // An `ip` of the wrong length is dropped, the answer kept.
        var packet = KRPC.encode(message)
        let needle = Array("2:ip6:".utf8)
        let at = try XCTUnwrap(
            (0...(packet.count - needle.count)).first { Array(packet[$0..<($0 + needle.count)]) == needle })
        packet.replaceSubrange(at..<(at + needle.count + 6), with: Array("2:ip3:abc".utf8))
        let decoded = try KRPC.decode(packet)
        XCTAssertNil(decoded.ip)
    }
}
