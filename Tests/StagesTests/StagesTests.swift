import Foundation
import PeerShareCore
import Stages
import XCTest

final class ZlibStageTests: XCTestCase {
    func testTextShrinksAndRoundTrips() throws {
        let text = [UInt8](String(repeating: "the quick brown fox jumps over the lazy dog\n", count: 5000).utf8)
        let packed = ZlibStage.encode(text, level: 6)
        XCTAssertEqual(packed.first, 1, "deflated")
        XCTAssertLessThan(packed.count, text.count / 10)
        XCTAssertEqual(try ZlibStage.decode(packed, limit: text.count), text)
    }

    func testRandomDataGoesRawWithOneByteOfOverhead() throws {
        var random = [UInt8](repeating: 0, count: 256 * 1024)
        for index in random.indices { random[index] = UInt8.random(in: 0...255) }
        let packed = ZlibStage.encode(random, level: 6)
        XCTAssertEqual(packed.first, 0, "raw")
        XCTAssertEqual(packed.count, random.count + 1)
        XCTAssertEqual(try ZlibStage.decode(packed, limit: random.count), random)
    }

    func testDecompressionBombIsAnErrorNotAnAllocation() {
        let zeros = [UInt8](repeating: 0, count: 8 << 20)
        let bomb = ZlibStage.encode(zeros, level: 9)
        XCTAssertLessThan(bomb.count, 20_000)
        XCTAssertThrowsError(try ZlibStage.decode(bomb, limit: 1 << 20)) { error in
            XCTAssertTrue("\(error)".contains("decompression bomb"), "\(error)")
        }
        XCTAssertThrowsError(try ZlibStage.decode([1, 0xde, 0xad, 0xbe, 0xef], limit: 1000))
        XCTAssertThrowsError(try ZlibStage.decode([7, 1, 2], limit: 1000))
        XCTAssertThrowsError(try ZlibStage.decode([], limit: 1000))
    }
}

final class SodiumHandshakeTests: XCTestCase {
    override func setUp() {
        XCTAssertNoThrow(try Sodium.start())
    }

    private func run(clientSecret: [UInt8], serverSecret: [UInt8], context: [UInt8] = [1, 2, 3]) throws -> (
        SodiumHandshake, SodiumHandshake
    ) {
        let client = SodiumHandshake(
            role: .client, keyHolder: LinkKeyHolder(linkSecret: clientSecret, identity: .generate()), context: context)
        let server = SodiumHandshake(
            role: .server, keyHolder: LinkKeyHolder(linkSecret: serverSecret, identity: .generate()), context: context)
        let m2 = try server.serverReply(client.clientStart())
        let m3 = try client.clientFinish(m2)
        try server.serverFinish(m3)
        return (client, server)
    }

    func testSameSecretGivesAWorkingStreamEachWay() throws {
        let secret = Sodium.random(32)
        let (client, server) = try run(clientSecret: secret, serverSecret: secret)
        XCTAssertNotNil(client.remotePeerID)
        XCTAssertEqual(client.remotePeerID?.count, 32)
        guard let c = client.session, let s = server.session else { return XCTFail("no session") }
        let message = [UInt8]("a chunk".utf8)
        XCTAssertEqual(try s.receiver.open(c.sender.seal(message)), message)
        XCTAssertEqual(try c.receiver.open(s.sender.seal(message)), message)
    }

    func testWrongSecretFailsAtTheFirstEncryptedMessage() {
        XCTAssertThrowsError(try run(clientSecret: Sodium.random(32), serverSecret: Sodium.random(32))) { error in
            XCTAssertTrue("\(error)".contains("does not hold this link's secret"), "\(error)")
        }
    }

    func testEditedHelloContextFailsTheHandshake() throws {
        let secret = Sodium.random(32)
        let client = SodiumHandshake(
            role: .client, keyHolder: LinkKeyHolder(linkSecret: secret, identity: .generate()), context: [1])
        let server = SodiumHandshake(
            role: .server, keyHolder: LinkKeyHolder(linkSecret: secret, identity: .generate()), context: [2])
        let m2 = try server.serverReply(client.clientStart())
        XCTAssertThrowsError(try client.clientFinish(m2), "a downgrade or edited descriptor changes the transcript")
    }

    func testTamperedReplayedAndReorderedMessagesAreDetected() throws {
        let secret = Sodium.random(32)
        let (client, server) = try run(clientSecret: secret, serverSecret: secret)
        guard let c = client.session, let s = server.session else { return XCTFail("no session") }
        var flipped = c.sender.seal([1, 2, 3, 4])
        flipped[flipped.count - 1] ^= 1
        XCTAssertThrowsError(try s.receiver.open(flipped), "modified")

        let (client2, server2) = try run(clientSecret: secret, serverSecret: secret)
        guard let c2 = client2.session, let s2 = server2.session else { return XCTFail("no session") }
        let first = c2.sender.seal([1])
        let second = c2.sender.seal([2])
        XCTAssertThrowsError(try s2.receiver.open(second), "reordered: the second message first")
        _ = first

        let (client3, server3) = try run(clientSecret: secret, serverSecret: secret)
        guard let c3 = client3.session, let s3 = server3.session else { return XCTFail("no session") }
        let once = c3.sender.seal([9])
        XCTAssertEqual(try s3.receiver.open(once), [9])
        XCTAssertThrowsError(try s3.receiver.open(once), "replayed")
    }

    func testHelloTagsAndDHTKeyDependOnTheSecretAndTagsAreFreshPerHello() {
        let id = [UInt8](repeating: 7, count: 32)
        let a = Sodium.random(32)
        let b = Sodium.random(32)
        let keyA = SodiumHandshake.shareTagKey(shareID: id, linkSecret: a)
        let keyB = SodiumHandshake.shareTagKey(shareID: id, linkSecret: b)
        XCTAssertNotEqual(keyA, keyB)
        // A fresh tag per hello: two connections to one share do not look alike, and only
        // the right key checks.
        let first = SodiumHandshake.helloTag(tagKey: keyA)
        let second = SodiumHandshake.helloTag(tagKey: keyA)
        XCTAssertEqual(first.count, 32)
        XCTAssertNotEqual(first, second)
        XCTAssertTrue(SodiumHandshake.checkHelloTag(first, tagKey: keyA))
        XCTAssertTrue(SodiumHandshake.checkHelloTag(second, tagKey: keyA))
        XCTAssertFalse(SodiumHandshake.checkHelloTag(first, tagKey: keyB))
        XCTAssertFalse(SodiumHandshake.checkHelloTag(id, tagKey: keyA))
        var flipped = first
        flipped[31] ^= 1
        XCTAssertFalse(SodiumHandshake.checkHelloTag(flipped, tagKey: keyA))
        XCTAssertEqual(SodiumHandshake.dhtKey(shareID: id, linkSecret: a).count, 20)
        XCTAssertNotEqual(
            SodiumHandshake.dhtKey(shareID: id, linkSecret: a), SodiumHandshake.dhtKey(shareID: id, linkSecret: b))
    }
}

final class StageConfigTests: XCTestCase {
    private func load(_ json: String) throws -> PipelineConfig {
        try PipelineConfig.parse(Data(json.utf8), file: "/tmp/p.json")
    }

    func testStagesParseWithOptions() throws {
        let config = try load(#"{"version": 1, "stages": [{"name": "zlib", "level": 3}, {"name": "sodium"}]}"#)
        XCTAssertEqual(config.stages.map(\.name), ["zlib", "sodium"])
        XCTAssertEqual(config.stages[0].kind, .zlib(level: 3))
        XCTAssertTrue(config.stages[1].required)
    }

    func testCompressionAfterEncryptionIsRefusedWithTheReason() {
        XCTAssertThrowsError(try load(#"{"version": 1, "stages": [{"name": "sodium"}, {"name": "zlib"}]}"#)) {
            XCTAssertTrue("\($0)".contains("'stages[1]'") && "\($0)".contains("compression after encryption"), "\($0)")
        }
    }

    func testBadStagesNameTheKey() {
        let cases: [(String, String)] = [
            (#"[{"name": "zstd"}]"#, "'stages[0].name': unknown stage 'zstd'"),
            (#"[{"name": "zlib", "level": "fast"}]"#, "'stages[0].level'"),
            (#"[{"name": "zlib", "level": 12}]"#, "'stages[0].level'"),
            (#"[{"name": "sodium", "cipher": "aes"}]"#, "'stages[0].cipher'"),
            (#"[{"name": "pad", "plugin": "/nonexistent/pad"}]"#, "'stages[0].plugin'"),
            (#"[{"name": "zlib"}, {"name": "zlib"}]"#, "appears twice"),
            (#"[{"level": 1}]"#, "'stages[0].name'"),
        ]
        for (stages, needle) in cases {
            XCTAssertThrowsError(try load(#"{"version": 1, "stages": \#(stages)}"#)) {
                XCTAssertTrue("\($0)".contains(needle), "\(stages): \($0)")
            }
        }
    }

    func testLinkCarriesTheKeyAndRefusesABadOne() throws {
        let id = ShareID(manifestBytes: [1, 2, 3])
        let link = ShareLink(shareID: id, peers: [PeerAddress(host: "127.0.0.1", port: 9)], secret: Array(0..<32))
        let parsed = try ShareLink.parse(link.description)
        XCTAssertEqual(parsed.secret, Array(0..<32))
        XCTAssertThrowsError(try ShareLink.parse("peershare://\(id.hex)?key=abcd")) {
            XCTAssertFalse("\($0)".contains("abcd"), "a key is not echoed back")
        }
    }
}
