import Kademlia
import PeerShareCore
import XCTest

/// Whole networks of pure DHT nodes on a virtual clock: fast, deterministic, no sockets.
final class SimulationTests: XCTestCase {
    func testLookupsFindTheClosestNodeAndAnnouncedPeers() throws {
        var sim = DHTSimulator(seed: 1)
        sim.addNode(bootstrap: nil)
        for _ in 1..<150 { sim.addNode(bootstrap: 0) }
        var random = SplitMix64(seed: 99)
        var hits = 0
        for _ in 0..<50 {
            let target = NodeID.random(using: &random)
            let origin = Int.random(in: 0..<sim.nodes.count, using: &random)
            let result = try XCTUnwrap(sim.lookup(from: origin, target: target))
            if result.closest.first?.id == sim.trueClosest(to: target, excluding: origin) { hits += 1 }
        }
        XCTAssertEqual(hits, 50)
        let key = NodeID.shareKey(shareID: [UInt8](repeating: 3, count: 32))
        let announced = try XCTUnwrap(sim.announce(from: 5, infoHash: key, port: 4242))
        XCTAssertGreaterThanOrEqual(announced.announcedTo, 6)
        let found = try XCTUnwrap(sim.lookup(from: 120, target: key, kind: .getPeers))
        XCTAssertEqual(found.peers, [NodeAddress(ip: DHTSimulator.address(of: 5).ip, port: 4242)])
    }

    func testChurnThirtyPercentDead() throws {
        var sim = DHTSimulator(seed: 2)
        sim.addNode(bootstrap: nil)
        for _ in 1..<150 { sim.addNode(bootstrap: 0) }
        var random = SplitMix64(seed: 5)
        var dead = Set<Int>()
        while dead.count < 45 { dead.insert(Int.random(in: 1..<150, using: &random)) }
        for number in dead { sim.kill(number) }
        let alive = (0..<150).filter { !dead.contains($0) }
        var hits = 0
        for _ in 0..<100 {
            let target = NodeID.random(using: &random)
            let origin = alive[Int.random(in: 0..<alive.count, using: &random)]
            if let result = sim.lookup(from: origin, target: target),
                result.closest.first?.id == sim.trueClosest(to: target, excluding: origin)
            {
                hits += 1
            }
        }
        XCTAssertGreaterThanOrEqual(hits, 99, "lookups must survive 30 % churn")
    }

    func testTokensBadTokensAndUnknownMethods() throws {
        var random = SplitMix64(seed: 3)
        var node = DHTNode(id: NodeID.random(using: &random), now: 0, seed: 1)
        let peer = NodeAddress("10.0.0.9:7000")!
        let other = NodeAddress("10.0.0.10:7000")!
        let sender = NodeID.random(using: &random)
        let infoHash = NodeID.random(using: &random)
        func ask(_ body: KRPC.Body, from: NodeAddress = peer, now: Double = 1) -> KRPC.Body? {
            let out = node.receive(KRPC.encode(.init(transaction: [1, 1], body: body)), from: from, now: now)
            for case .send(let bytes, _) in out {
                if let reply = try? KRPC.decode(bytes), reply.transaction == [1, 1] { return reply.body }
            }
            return nil
        }
        guard case .response(let first)? = ask(.query(sender: sender, .getPeers(infoHash: infoHash))),
            let token = first.token
        else {
            return XCTFail("get_peers must return a token")
        }
        // A token is bound to the requester's IP.
        XCTAssertEqual(
            ask(
                .query(sender: sender, .announcePeer(infoHash: infoHash, port: 1, impliedPort: false, token: token)),
                from: other), .error(code: 203, message: "Bad token"))
        XCTAssertEqual(
            ask(
                .query(sender: sender, .announcePeer(infoHash: infoHash, port: 5555, impliedPort: false, token: token))),
            .response(.init(id: node.id)))
        XCTAssertEqual(node.storedPeers(for: infoHash), [NodeAddress(ip: peer.ip, port: 5555)])
        // Still valid after one rotation (5 min), not after two (10 min).
        _ = node.tick(now: 301)
        XCTAssertEqual(
            ask(
                .query(sender: sender, .announcePeer(infoHash: infoHash, port: 5555, impliedPort: false, token: token)),
                now: 302), .response(.init(id: node.id)))
        _ = node.tick(now: 602)
        XCTAssertEqual(
            ask(
                .query(sender: sender, .announcePeer(infoHash: infoHash, port: 5555, impliedPort: false, token: token)),
                now: 603), .error(code: 203, message: "Bad token"))
        // Stored peers expire after 30 minutes without a re-announce.
        _ = node.tick(now: 302 + 30 * 60)
        XCTAssertEqual(node.storedPeers(for: infoHash), [])
        XCTAssertEqual(
            ask(.unknownQuery(method: "vote", sender: sender)), .error(code: 204, message: "Method Unknown: vote"))
        XCTAssertEqual(node.stats.badTokens, 2)
        XCTAssertEqual(node.stats.unknownMethods, 1)
    }

    func testFloodFromOneAddressIsRateLimited() {
        var random = SplitMix64(seed: 4)
        var node = DHTNode(id: NodeID.random(using: &random), now: 0, seed: 1)
        let flooder = NodeAddress("10.0.0.66:1")!
        let ping = KRPC.encode(.init(transaction: [0, 1], body: .query(sender: NodeID.random(using: &random), .ping)))
        var answered = 0
        for _ in 0..<1000 where !node.receive(ping, from: flooder, now: 0).isEmpty { answered += 1 }
        XCTAssertEqual(answered, 100, "burst of twice the per-second rate, then silence")
        XCTAssertEqual(node.stats.rateLimited, 900)
        XCTAssertFalse(node.receive(ping, from: NodeAddress("10.0.0.67:1")!, now: 0).isEmpty, "others are unaffected")
        XCTAssertEqual(node.receive(Array("garbage".utf8), from: flooder, now: 0), [])
        XCTAssertEqual(node.stats.malformed, 1)
    }

    func testStatePersistenceRoundTrip() {
        var sim = DHTSimulator(seed: 6)
        sim.addNode(bootstrap: nil)
        for _ in 1..<30 { sim.addNode(bootstrap: 0) }
        let state = sim.nodes[7].dht.exportState(now: sim.now)
        let parsed = DHTNode.parseState(state)
        XCTAssertEqual(parsed?.id, sim.nodes[7].dht.id)
        XCTAssertEqual(parsed?.nodes.count, sim.nodes[7].dht.table.nodeCount)
        XCTAssertNil(DHTNode.parseState(Array("junk".utf8)))
    }
}
