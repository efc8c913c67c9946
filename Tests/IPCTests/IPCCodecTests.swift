import IPC
import PeerShareCore
import PeerWire
import Wire
import XCTest

/// The pipe and peer codecs must survive anything: random bytes, truncations, lies about
/// lengths. These are property-style tests with a seeded generator so failures reproduce.
final class IPCCodecTests: XCTestCase {
    static let shareID = [UInt8](repeating: 0xAB, count: 32)

    static let everyCommand: [WorkerCommand] = [
        .welcome(version: 1),
        .ping(nonce: .max),
        .statusRequest(requestID: 3),
        .countersRequest(requestID: 4),
        .shutdown,
        .failure(requestID: 9, code: 66, message: "cannot open"),
        .buildManifest(requestID: 1, path: "/tmp/a b"),
        .openShare(requestID: 2, path: "/x", manifest: [4], hashedAt: 1_764_000_000),
        .prepareDownload(requestID: 6, manifest: [1], targetDirectory: "/out", privateShare: true),
        .finalizeDownload(requestID: 8),
        .serve(shareID: shareID, manifest: [1, 2], host: "127.0.0.1", port: 4000, partial: true),
        .addPeers(peers: ["127.0.0.1:1", "10.0.0.2:6881"], nearby: true),
        .setLimits(upload: 1000, download: LimitChange.unchanged, perPeerUpload: 0),
        .configurePipeline(plan: [0], tagKey: [1, 2, 3], identityPublicKey: [4, 5]),
        .sessionKeys(
            requestID: 0x8000_0001, clientToServer: [UInt8](repeating: 1, count: 32),
            serverToClient: [UInt8](repeating: 2, count: 32), publicKey: [UInt8](repeating: 3, count: 32),
            signature: [UInt8](repeating: 4, count: 64)),
        .transferSettings(requestsInFlight: 16, maxPeers: 64, upload: 0, download: 1_000_000, perPeerUpload: 5),
        .fetch(shareID: shareID, peers: ["127.0.0.1:1", "[::1]:2"]),
        .startChunks(verified: [0]),
        .dhtStart(host: "0.0.0.0", port: 6881, routers: ["1.2.3.4:6881"], state: [1, 2]),
        .dhtRequest(requestID: 4, operation: .announce, key: [UInt8](repeating: 2, count: 20), port: 80, trace: true),
        .dhtStateRequest(requestID: 5),
        .useRelays(key: [UInt8](repeating: 3, count: 20), relays: ["11.0.113.20:7000"], register: true, punch: false),
        .natProbe(requestID: 10, servers: ["11.0.113.10:3478", "11.0.113.11:3478"]),
        .relayStart(host: "0.0.0.0", port: 7000, maxCircuits: 64, maxCircuitRate: 0, circuitSeconds: 3600),
        .mapPorts(requestID: 11, gateway: "192.168.70.1", tcpPort: 4000, udpPort: 6881),
        .publicListenPort(port: 4000),
        .dhtReadOnly(readOnly: true),
        .lanStart(interfaces: ["3 192.168.50.2/24 fd00::2/64"]),
        .lanAnnounce(key: [UInt8](repeating: 5, count: 20), port: 4000, serving: false, families: 3),
        .withdraw(key: [UInt8](repeating: 6, count: 20)),
    ]

    static let everyReport: [WorkerReport] = [
        .hello(version: 1, role: .hash, pid: 4242),
        .pong(nonce: 7),
        .status(requestID: 3, text: "serving 2 peers ✓"),
        .counters(requestID: 4, values: [WorkerCounter("bytes_sent", 1 << 40), WorkerCounter("bans", 0)]),
        .failure(requestID: 9, code: 66, message: "cannot open"),
        .hashProgress(requestID: 1, bytesDone: 10, bytesTotal: 20),
        .manifestBuilt(requestID: 1, manifest: [1, 2, 3]),
        .shareOpened(requestID: 2),
        .downloadPrepared(requestID: 6, verified: [0xff, 0x80]),
        .downloadFinalized(requestID: 8, path: "/out/x"),
        .sessionKeysRequest(
            requestID: 0x8000_0001, role: 1, sharedSecret: [UInt8](repeating: 7, count: 32),
            transcript: [UInt8](repeating: 8, count: 32)),
        .pluginFailed(name: "pad", reason: "did not answer within 2 s"),
        .serving(port: 4000),
        .listenFailed(reason: "cannot listen on 0.0.0.0:80: permission denied"),
        .manifestReceived(manifest: [5, 6]),
        .chunkStored(index: 3, accepted: false, bytes: 65536, peer: "1.2.3.4:5"),
        .peerEvent(text: "hi"),
        .fetchFailed(code: 69, reason: "nobody home"),
        .peerCount(count: 3),
        .dhtReady(port: 6881, nodeID: [UInt8](repeating: 1, count: 20)),
        .dhtTrace(requestID: 4, line: "hop 1"),
        .dhtResult(
            requestID: 4,
            report: DHTReport(
                peers: ["1.1.1.1:1"], closest: ["ab@2.2.2.2:2"], hops: 3, queries: 9, responses: 8, announcedTo: 7)),
        .dhtState(requestID: 5, state: [0], summary: "8 nodes"),
        .lanPeer(key: [UInt8](repeating: 5, count: 20), address: "192.168.50.3:4000"),
        .relayRegistered(relay: "11.0.113.20:7000", observed: "11.0.113.50:4000"),
        .observedAddress(source: "11.0.113.30:4000", address: "11.0.113.50:4001"),
        .natReport(requestID: 10, observed: ["11.0.113.10:3478 11.0.113.50:4000"], mapping: 1, localPort: 4000),
        .relayListening(port: 7000),
        .portMapped(
            requestID: 11, method: "NAT-PMP", externalIP: "11.0.113.70", tcpPort: 4000, udpPort: 6881, lifetime: 3600,
            note: ""),
    ]

    static let everyChunkRequest: [ChunkRequest] = [
        .readChunk(requestID: 5, index: 17, slot: PoolSlot(offset: 524_288, length: 524_288)),
        .writeChunk(requestID: 7, index: 0, slot: PoolSlot(offset: 0, length: 1000)),
    ]

    static let everyChunkReply: [ChunkReply] = [
        .failure(requestID: 9, code: 66, message: "cannot open"),
        .chunkRead(requestID: 5, index: 17, length: 1000),
        .chunkWritten(requestID: 7, index: 0, accepted: true),
    ]

    static let everyControlRequest: [ControlRequest] = [
        .status, .setLimits(upload: 1000, download: LimitChange.unchanged, perPeerUpload: 0),
        .addShare(path: "/home/ann/photos", encrypt: true),
        .addDownload(link: "peershare://abc?peer=127.0.0.1:1", targetDirectory: "/tmp/in"), .list, .pause(id: 3),
        .resume(id: 3), .remove(id: 4), .webAddress,
    ]
    static let everyControlReply: [ControlReply] = [
        .status(text: "limits: upload unlimited ✓"), .refused(code: 64, message: "out of range"),
        .added(id: 7, link: "peershare://abc"),
        .items([
            DaemonItemSummary(
                id: 1, kind: .share, phase: .serving, name: "photos", link: "peershare://abc", path: "/home/ann/photos",
                bytesDone: 10, bytesTotal: 10, peers: 2, note: "serving"),
            DaemonItemSummary(
                id: 2, kind: .download, phase: .failed, exitCode: 69, name: "ünï", link: "peershare://def",
                path: "/tmp/in", note: "no peers"),
        ]),
    ]

    /// Runs `check` over every channel's message list, each with its own type.
    func forEveryChannel(_ check: (any ChannelMessageList) throws -> Void) rethrows {
        try check(Self.everyCommand)
        try check(Self.everyReport)
        try check(Self.everyChunkRequest)
        try check(Self.everyChunkReply)
        try check(Self.everyControlRequest)
        try check(Self.everyControlReply)
    }

    func testEveryMessageTypeIsCovered() {
        forEveryChannel { XCTAssertTrue($0.coversEveryTag, "\($0.typeName) is missing a sample") }
    }

    func testEveryMessageRoundTrips() throws {
        try forEveryChannel { try $0.checkRoundTrips() }
    }

    func testFramesSplitAtEveryByteBoundaryReassemble() throws {
        try forEveryChannel { try $0.checkSplitStream() }
    }

    func testInnerLengthsAreBoundedToo() {
        // A valid frame whose chunk length claims 3 GiB.
        var writer = ByteWriter()
        writer.u32(1)
        writer.u32(1)
        writer.u32(0xC000_0000)
        XCTAssertThrowsError(
            try ChunkReply(frame: Frame(type: ChunkReply.Tag.chunkRead.rawValue, payload: writer.bytes)))
        // A slot of 3 GiB.
        writer.u32(0xC000_0000)
        XCTAssertThrowsError(
            try ChunkRequest(frame: Frame(type: ChunkRequest.Tag.writeChunk.rawValue, payload: writer.bytes)))
    }

    func testTruncatedMessagesThrow() {
        forEveryChannel { $0.checkTruncationsThrow() }
    }

    /// One enum per direction and channel: a message of one decodes as none of the others,
    /// so a worker cannot pass off a command as a report, nor a chunk reply as a request.
    func testNoMessageDecodesOnAnotherChannelOrDirection() {
        let all: [(String, [Frame])] = [
            ("command", Self.everyCommand.map { $0.frame() }), ("report", Self.everyReport.map { $0.frame() }),
            ("chunk request", Self.everyChunkRequest.map { $0.frame() }),
            ("chunk reply", Self.everyChunkReply.map { $0.frame() }),
            ("control request", Self.everyControlRequest.map { $0.frame() }),
            ("control reply", Self.everyControlReply.map { $0.frame() }),
        ]
        let decoders: [String: (Frame) -> Bool] = [
            "command": { (try? WorkerCommand(frame: $0)) != nil }, "report": { (try? WorkerReport(frame: $0)) != nil },
            "chunk request": { (try? ChunkRequest(frame: $0)) != nil },
            "chunk reply": { (try? ChunkReply(frame: $0)) != nil },
            "control request": { (try? ControlRequest(frame: $0)) != nil },
            "control reply": { (try? ControlReply(frame: $0)) != nil },
        ]
        for (channel, frames) in all {
            for frame in frames {
                for (other, decodes) in decoders where other != channel {
                    // `failure` is one shape on three channels: it is the only overlap.
                    if frame.type == WorkerReport.Tag.failure.rawValue { continue }
                    XCTAssertFalse(
                        decodes(frame), "a \(channel) (0x\(String(frame.type, radix: 16))) decodes as a \(other)")
                }
            }
        }
    }

    func testRandomBytesNeverCrashTheDecoders() {
        var random = SplitMix64(seed: 42)
        let tags =
            WorkerCommand.Tag.allCases.map(\.rawValue) + WorkerReport.Tag.allCases.map(\.rawValue)
            + ChunkRequest.Tag.allCases.map(\.rawValue) + ChunkReply.Tag.allCases.map(\.rawValue)
            + ControlRequest.Tag.allCases.map(\.rawValue)
        for round in 0..<20_000 {
            let count = Int.random(in: 0...64, using: &random)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }
            if round % 3 == 0 && bytes.count >= 6 {
                // A plausible header so the payload decoders get exercised, not only the framer.
                let tag = tags[Int.random(in: 0..<tags.count, using: &random)]
                let length = UInt32(bytes.count - 4)
                bytes[0] = UInt8(length >> 24)
                bytes[1] = UInt8(truncatingIfNeeded: length >> 16)
                bytes[2] = UInt8(truncatingIfNeeded: length >> 8)
                bytes[3] = UInt8(truncatingIfNeeded: length)
                bytes[4] = UInt8(tag >> 8)
                bytes[5] = UInt8(truncatingIfNeeded: tag)
            }
            var decoder = FrameDecoder(maxFrameLength: 4096)
            decoder.append(bytes)
            while let frame = try? decoder.next() {
                _ = try? WorkerCommand(frame: frame)
                _ = try? WorkerReport(frame: frame)
                _ = try? ChunkRequest(frame: frame)
                _ = try? ChunkReply(frame: frame)
                _ = try? ControlRequest(frame: frame)
                _ = try? PeerMessage(frame: frame)
            }
        }
    }

    func testEveryCommandGoesToSomeRoleAndEveryReportComesFromOne() {
        let sent = WorkerRole.allCases.reduce(into: Set<WorkerReport.Tag>()) { $0.formUnion($1.mayEmit) }
        let received = WorkerRole.allCases.reduce(into: Set<WorkerCommand.Tag>()) { $0.formUnion($1.mayReceive) }
        XCTAssertEqual(sent, Set(WorkerReport.Tag.allCases))
        XCTAssertEqual(received, Set(WorkerCommand.Tag.allCases))
        XCTAssertFalse(
            WorkerRole.hash.mayReceive.contains(.fetch), "a download's peers are no business of the hash worker")
        XCTAssertFalse(WorkerRole.transfer.mayReceive.contains(.openShare), "the transfer worker opens no file")
        XCTAssertTrue(WorkerRole.transfer.mayReceive.contains(.transferSettings))
    }

    func testRolesMayOnlyEmitTheirOwnMessages() {
        XCTAssertTrue(WorkerRole.hash.mayEmit.contains(.downloadPrepared))
        XCTAssertFalse(WorkerRole.hash.mayEmit.contains(.chunkStored))
        XCTAssertTrue(WorkerRole.transfer.mayEmit.contains(.chunkStored))
        XCTAssertFalse(WorkerRole.discovery.mayEmit.contains(.manifestBuilt))
        XCTAssertEqual(WorkerRole.transfer.dataChannelPartner, .hash)
        XCTAssertNil(WorkerRole.discovery.dataChannelPartner)
    }

    /// The worker's side of the permission table, by phase: welcome first and once, start-up
    /// settings once, and nothing of another role's.
    func testAWorkerObeysCommandsOnlyInTheirPhase() {
        var check = CommandCheck(role: .transfer)
        XCTAssertEqual(check.refusal(of: .serve), "serve before welcome")
        XCTAssertNil(check.refusal(of: .welcome))
        XCTAssertEqual(check.refusal(of: .welcome), "welcome a second time")
        XCTAssertNil(check.refusal(of: .transferSettings))
        XCTAssertEqual(check.refusal(of: .transferSettings), "transferSettings a second time")
        XCTAssertNil(check.refusal(of: .serve))
        XCTAssertNil(check.refusal(of: .serve), "a share can be served again (a restart's replay)")
        XCTAssertEqual(check.refusal(of: .openShare), "openShare, which a transfer worker never receives")
        var dht = CommandCheck(role: .discovery)
        XCTAssertNil(dht.refusal(of: .welcome))
        XCTAssertNil(dht.refusal(of: .dhtStart))
        XCTAssertEqual(dht.refusal(of: .dhtStart), "dhtStart a second time")
    }
}

/// A channel's sample messages, checked the same way whatever their type.
protocol ChannelMessageList {
    var typeName: String { get }
    var coversEveryTag: Bool { get }
    func checkRoundTrips() throws
    func checkSplitStream() throws
    func checkTruncationsThrow()
}

extension Array: ChannelMessageList where Element: ChannelMessage {
    var typeName: String { "\(Element.self)" }
    var coversEveryTag: Bool { Set(map(\.tag)) == Set(Element.Tag.allCases) }

    func checkRoundTrips() throws {
        for message in self {
            var decoder = FrameDecoder(maxFrameLength: IPCLimits.maxFrameLength)
            decoder.append(message.encoded())
            let frame = try XCTUnwrap(try decoder.next())
            XCTAssertEqual(try Element(frame: frame), message)
            XCTAssertEqual(decoder.bufferedCount, 0)
        }
    }

    func checkSplitStream() throws {
        let stream = flatMap { $0.encoded() }
        var decoder = FrameDecoder(maxFrameLength: IPCLimits.maxFrameLength)
        var decoded: [Element] = []
        for byte in stream {
            decoder.append([byte])
            while let frame = try decoder.next() { decoded.append(try Element(frame: frame)) }
        }
        XCTAssertEqual(decoded, self)
    }

    func checkTruncationsThrow() {
        for message in self {
            let payload = message.frame().payload
            for cut in 0..<payload.count {
                let frame = Frame(type: message.tag.rawValue, payload: [UInt8](payload[0..<cut]))
                XCTAssertThrowsError(try Element(frame: frame), "\(message) cut at \(cut)")
            }
        }
    }
}
