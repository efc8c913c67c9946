import CSodium
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

    static let both = StreamCipher.xchacha20poly1305.rawValue | StreamCipher.aes256gcm.rawValue
    static let chachaOnly = StreamCipher.xchacha20poly1305.rawValue

    private func run(
        clientSecret: [UInt8], serverSecret: [UInt8], context: [UInt8] = [1, 2, 3], clientCiphers: UInt8 = both,
        serverCiphers: UInt8 = both
    ) throws -> (SodiumHandshake, SodiumHandshake) {
        let client = SodiumHandshake(
            role: .client, keyHolder: LinkKeyHolder(linkSecret: clientSecret, identity: .generate()), context: context,
            ciphers: clientCiphers)
        let server = SodiumHandshake(
            role: .server, keyHolder: LinkKeyHolder(linkSecret: serverSecret, identity: .generate()), context: context,
            ciphers: serverCiphers)
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
            role: .client, keyHolder: LinkKeyHolder(linkSecret: secret, identity: .generate()), context: [1],
            ciphers: Self.both)
        let server = SodiumHandshake(
            role: .server, keyHolder: LinkKeyHolder(linkSecret: secret, identity: .generate()), context: [2],
            ciphers: Self.both)
        let m2 = try server.serverReply(client.clientStart())
        XCTAssertThrowsError(try client.clientFinish(m2), "a downgrade or edited descriptor changes the transcript")
    }

    /// This machine must have AES-NI for the AES-256-GCM cases (libsodium refuses it otherwise).
    private func requireAES() throws {
        try XCTSkipUnless(
            StreamCipher.available(environment: [:]) & StreamCipher.aes256gcm.rawValue != 0,
            "no AES-NI on this CPU: AES-256-GCM cannot run here")
    }

    func testTheFastestCipherBothSidesHaveIsChosen() throws {
        try requireAES()
        let secret = Sodium.random(32)
        for (client, server, expected) in [
            (Self.both, Self.both, StreamCipher.aes256gcm), (Self.chachaOnly, Self.both, .xchacha20poly1305),
            (Self.both, Self.chachaOnly, .xchacha20poly1305), (Self.chachaOnly, Self.chachaOnly, .xchacha20poly1305),
        ] {
            let (c, s) = try run(
                clientSecret: secret, serverSecret: secret, clientCiphers: client, serverCiphers: server)
            XCTAssertEqual(c.cipher, expected)
            XCTAssertEqual(s.cipher, expected)
            guard let cs = c.session, let ss = s.session else { return XCTFail("no session") }
            let chunk = Sodium.random(70_000)
            XCTAssertEqual(try ss.receiver.open(cs.sender.seal(chunk)), chunk)
            XCTAssertEqual(try cs.receiver.open(ss.sender.seal(chunk)), chunk)
        }
    }

    /// The pointer forms seal from and open into memory the caller names (a slot of the
    /// chunk pool, a socket buffer) and interoperate with the array forms, for both ciphers;
    /// a buffer too small for the result seals nothing and leaves the stream in step.
    func testSealingIntoAndOpeningIntoCallerMemoryKeepsTheStreamInStep() throws {
        let key = Sodium.random(32)
        var pairs: [(FrameSealer, FrameOpener)] = []
        let stream = SecretStreamSender(key: key)
        pairs.append((stream, try SecretStreamReceiver(key: key, header: stream.header)))
        if StreamCipher.available(environment: [:]) & StreamCipher.aes256gcm.rawValue != 0 {
            pairs.append((try AESGCMStream(key: key), try AESGCMStream(key: key)))
        }
        for (sender, receiver) in pairs {
            let message = Sodium.random(70_010)
            // Sealed from the middle of a larger region (as from a slot's lead room) into a
            // buffer with room to spare; the array form opens it.
            var region = Sodium.random(64) + message + Sodium.random(64)
            var sealed = [UInt8](repeating: 0, count: message.count + sender.overhead + 100)
            let length = region.withUnsafeMutableBytes { all in
                sealed.withUnsafeMutableBytes { out in
                    sender.seal(
                        UnsafeRawBufferPointer(rebasing: all[64..<(64 + message.count)]), into: out,
                        additionalData: [9])
                }
            }
            XCTAssertEqual(length, message.count + sender.overhead)
            XCTAssertEqual(try receiver.open(Array(sealed.prefix(length ?? 0)), additionalData: [9]), message)
            // Too small a buffer: nothing sealed, and the next message still opens.
            var tiny = [UInt8](repeating: 0, count: 8)
            XCTAssertNil(
                region.withUnsafeBytes { plain in
                    tiny.withUnsafeMutableBytes {
                        sender.seal(UnsafeRawBufferPointer(rebasing: plain[0..<10]), into: $0, additionalData: [])
                    }
                })
            // The array form seals; the pointer form opens into the middle of a region.
            let next = sender.seal(message, additionalData: [])
            region = [UInt8](repeating: 0, count: message.count + 128)
            let opened = try next.withUnsafeBytes { ciphertext in
                try region.withUnsafeMutableBytes { all in
                    try receiver.open(
                        ciphertext, into: UnsafeMutableRawBufferPointer(rebasing: all[64...]), additionalData: [])
                }
            }
            XCTAssertEqual(opened, message.count)
            XCTAssertEqual(Array(region[64..<(64 + message.count)]), message)
            // Opening into too little room refuses rather than writing past it.
            let third = sender.seal(message, additionalData: [])
            XCTAssertThrowsError(
                try third.withUnsafeBytes { ciphertext in
                    try tiny.withUnsafeMutableBytes { try receiver.open(ciphertext, into: $0, additionalData: []) }
                })
        }
    }

    func testStrippingAESFromTheOfferOrChangingTheChoiceFailsTheHandshake() throws {
        try requireAES()
        let secret = Sodium.random(32)
        func pair() -> (SodiumHandshake, SodiumHandshake) {
            (
                SodiumHandshake(
                    role: .client, keyHolder: LinkKeyHolder(linkSecret: secret, identity: .generate()), context: [7],
                    ciphers: Self.both),
                SodiumHandshake(
                    role: .server, keyHolder: LinkKeyHolder(linkSecret: secret, identity: .generate()), context: [7],
                    ciphers: Self.both)
            )
        }
        // Someone between the peers rewrites the offer to XChaCha20 only: the server goes
        // along, but its keys come from a transcript the client never saw.
        var (client, server) = pair()
        var m1 = client.clientStart()
        m1[m1.count - 1] = Self.chachaOnly
        let m2 = try server.serverReply(m1)
        XCTAssertEqual(server.cipher, .xchacha20poly1305)
        XCTAssertThrowsError(try client.clientFinish(m2)) { XCTAssertTrue("\($0)".contains("tampered"), "\($0)") }
        // Or rewrites the server's choice (to a cipher the client offered): the same.
        (client, server) = pair()
        var m2b = try server.serverReply(client.clientStart())
        XCTAssertEqual(server.cipher, .aes256gcm)
        m2b[32] = StreamCipher.xchacha20poly1305.rawValue
        m2b.insert(contentsOf: [UInt8](repeating: 0, count: SecretStreamSender.headerBytes), at: 33)
        XCTAssertThrowsError(try client.clientFinish(m2b))
        // A choice the client never offered is refused outright.
        let (chachaClient, _) = (
            SodiumHandshake(
                role: .client, keyHolder: LinkKeyHolder(linkSecret: secret, identity: .generate()), context: [7],
                ciphers: Self.chachaOnly), 0
        )
        let (_, aesServer) = pair()
        var m1c = chachaClient.clientStart()
        m1c[m1c.count - 1] = Self.both
        let forged = try aesServer.serverReply(m1c)
        XCTAssertThrowsError(try chachaClient.clientFinish(forged)) {
            XCTAssertTrue("\($0)".contains("did not offer"), "\($0)")
        }
    }

    /// The AES-256-GCM stream runs on BoringSSL; the bytes must be standard AES-256-GCM,
    /// exactly what libsodium (which earlier versions sealed with) makes from the same key
    /// and nonce, both ways.
    func testAESGCMIsByteForByteLibsodiumsAES256GCM() throws {
        try requireAES()
        let key = Sodium.random(32)
        let sender = try AESGCMStream(key: key)
        let receiver = try AESGCMStream(key: key)
        for (number, size) in [70_010, 0, 513].enumerated() {
            let message = Sodium.random(size)
            let nonce = [UInt8](repeating: 0, count: 4) + withUnsafeBytes(of: UInt64(number).bigEndian, Array.init)
            var expected = [UInt8](repeating: 0, count: size + 16)
            var length: UInt64 = 0
            crypto_aead_aes256gcm_encrypt(
                &expected, &length, message, UInt64(size), [7, 7], 2, nil, nonce, key)
            XCTAssertEqual(sender.seal(message, additionalData: [7, 7]), expected, "message \(number)")
            XCTAssertEqual(try receiver.open(expected, additionalData: [7, 7]), message)
        }
    }

    func testAESGCMDetectsTamperingReplayAndReorderingAndRekeysInStep() throws {
        try requireAES()
        let key = Sodium.random(32)
        let sender = try AESGCMStream(key: key, rekeyBytes: 1000)
        let receiver = try AESGCMStream(key: key, rekeyBytes: 1000)
        // Past the rekey point several times: both sides move to the next key together.
        for round in 0..<10 {
            let message = Sodium.random(300 + round)
            XCTAssertEqual(try receiver.open(sender.seal(message, additionalData: [1]), additionalData: [1]), message)
        }
        let first = sender.seal([1])
        let second = sender.seal([2])
        XCTAssertThrowsError(try receiver.open(second), "reordered")
        let fresh = try AESGCMStream(key: key)
        let opener = try AESGCMStream(key: key)
        var flipped = fresh.seal([5, 6, 7])
        flipped[0] ^= 1
        XCTAssertThrowsError(try opener.open(flipped), "modified")
        let again = try AESGCMStream(key: key)
        let reader = try AESGCMStream(key: key)
        let once = again.seal([9])
        XCTAssertEqual(try reader.open(once), [9])
        XCTAssertThrowsError(try reader.open(once), "replayed")
        XCTAssertThrowsError(try reader.open([1, 2, 3]), "too short")
        _ = first
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
