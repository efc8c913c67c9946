import Kademlia
import PeerShareCore
import XCTest

final class BencodeTests: XCTestCase {
    func testBEP3Examples() throws {
        XCTAssertEqual(try Bencode.decode(Array("4:spam".utf8)), .string("spam"))
        XCTAssertEqual(try Bencode.decode(Array("i3e".utf8)), .integer(3))
        XCTAssertEqual(try Bencode.decode(Array("i-3e".utf8)), .integer(-3))
        XCTAssertEqual(try Bencode.decode(Array("l4:spam4:eggse".utf8)), .list([.string("spam"), .string("eggs")]))
        XCTAssertEqual(
            try Bencode.decode(Array("d3:cow3:moo4:spam4:eggse".utf8)),
            .dictionary([Array("cow".utf8): .string("moo"), Array("spam".utf8): .string("eggs")]))
        XCTAssertEqual(
            Bencode.dictionary([Array("b".utf8): .integer(1), Array("a".utf8): .integer(2)]).encoded(),
            Array("d1:ai2e1:bi1ee".utf8))
    }

    func testInvalidEncodingsAreRejected() {
        for bad in [
            "i03e", "i-0e", "ie", "i1", "5:abc", "l", "d1:a", "d1:bi1e1:ai2ee", "d1:ai1e1:ai2ee", "x",
            "i99999999999999999999e", "4:spamX", "",
        ] {
            XCTAssertThrowsError(try Bencode.decode(Array(bad.utf8)), bad)
        }
        XCTAssertThrowsError(
            try Bencode.decode(
                Array(String(repeating: "l", count: 100).utf8) + Array(String(repeating: "e", count: 100).utf8)))
    }

    func testRandomAndTruncatedInputNeverCrashes() throws {
        var random = SplitMix64(seed: 7)
        let valid = KRPC.encode(
            .init(
                transaction: [1, 2],
                body: .query(sender: NodeID.random(using: &random), .getPeers(infoHash: NodeID.random(using: &random))))
        )
        for cut in 0..<valid.count { _ = try? KRPC.decode(Array(valid[0..<cut])) }
        let alphabet = Array("ide0123456789:l-".utf8)
        for _ in 0..<20_000 {
            let count = Int.random(in: 0...40, using: &random)
            let bytes = (0..<count).map { _ in
                Bool.random(using: &random)
                    ? alphabet[Int.random(in: 0..<alphabet.count, using: &random)]
                    : UInt8.random(in: 0...255, using: &random)
            }
            _ = try? Bencode.decode(bytes)
            _ = try? KRPC.decode(bytes)
        }
    }
}

final class KRPCTests: XCTestCase {
    let id = NodeID(bytes: Array("abcdefghij0123456789".utf8))!
    let other = NodeID(bytes: Array("mnopqrstuvwxyz123456".utf8))!

    /// The example packets of BEP 5, byte for byte.
    func testBEP5Examples() throws {
        let ping = try KRPC.decode(Array("d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe".utf8))
        XCTAssertEqual(ping.transaction, Array("aa".utf8))
        XCTAssertEqual(ping.body, .query(sender: id, .ping))
        XCTAssertEqual(KRPC.encode(ping), Array("d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe".utf8))

        let pong = try KRPC.decode(Array("d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re".utf8))
        XCTAssertEqual(pong.body, .response(.init(id: other)))

        let findNode = try KRPC.decode(
            Array("d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe".utf8))
        XCTAssertEqual(findNode.body, .query(sender: id, .findNode(target: other)))

        let getPeers = try KRPC.decode(
            Array(
                "d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe".utf8))
        XCTAssertEqual(getPeers.body, .query(sender: id, .getPeers(infoHash: other)))

        let values = try KRPC.decode(
            Array("d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re".utf8))
        guard case .response(let response) = values.body else { return XCTFail() }
        XCTAssertEqual(response.token, Array("aoeusnth".utf8))
        XCTAssertEqual(response.values?.count, 2)
        XCTAssertEqual(response.values?.first?.compact, Array("axje.u".utf8))

        let announce = try KRPC.decode(
            Array(
                "d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe"
                    .utf8))
        XCTAssertEqual(
            announce.body,
            .query(
                sender: id, .announcePeer(infoHash: other, port: 6881, impliedPort: true, token: Array("aoeusnth".utf8))
            ))

        let error = try KRPC.decode(Array("d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee".utf8))
        XCTAssertEqual(error.body, .error(code: 201, message: "A Generic Error Ocurred"))
    }

    func testEveryMessageRoundTrips() throws {
        let node = NodeInfo(id: other, address: NodeAddress("127.0.0.1:6881")!)
        let messages: [KRPC.Body] = [
            .query(sender: id, .ping), .query(sender: id, .findNode(target: other)),
            .query(sender: id, .getPeers(infoHash: other)),
            .query(sender: id, .announcePeer(infoHash: other, port: 1, impliedPort: false, token: [1, 2])),
            .response(.init(id: id, nodes: [node, node], values: [node.address], token: [9])),
            .error(code: 204, message: "Method Unknown"),
        ]
        for body in messages {
            let message = KRPC.Message(transaction: [0, 7], body: body, version: KRPC.clientVersion)
            XCTAssertEqual(try KRPC.decode(KRPC.encode(message)), message)
        }
    }

    func testWrongLengthsAreRejected() {
        XCTAssertThrowsError(try KRPC.decode(Array("d1:ad2:id19:abcdefghij012345678e1:q4:ping1:t2:aa1:y1:qe".utf8)))
        XCTAssertThrowsError(
            try KRPC.decode(Array("d1:rd2:id20:mnopqrstuvwxyz1234565:nodes5:abcdee1:t2:aa1:y1:re".utf8)))
        XCTAssertThrowsError(try KRPC.decode([UInt8](repeating: UInt8(ascii: "l"), count: 2000)))
    }
}
