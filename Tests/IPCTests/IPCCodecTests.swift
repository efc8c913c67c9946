import IPC
import PeerShareCore
import PeerWire
import Wire
import XCTest

/// The pipe and peer codecs must survive anything: random bytes, truncations, lies about
/// lengths. These are property-style tests with a seeded generator so failures reproduce.
final class IPCCodecTests: XCTestCase {
    static let shareID = [UInt8](repeating: 0xAB, count: 32)

    static let everyMessage: [IPCMessage] = [
        .hello(version: 1, role: .hash, pid: 4242),
        .welcome(version: 1),
        .ping(nonce: .max),
        .pong(nonce: 7),
        .statusRequest(requestID: 3),
        .status(requestID: 3, text: "serving 2 peers ✓"),
        .shutdown,
        .failure(requestID: 9, code: 66, message: "cannot open"),
        .buildManifest(requestID: 1, path: "/tmp/a b"),
        .hashProgress(requestID: 1, bytesDone: 10, bytesTotal: 20),
        .manifestBuilt(requestID: 1, manifest: [1, 2, 3]),
        .openShare(requestID: 2, path: "/x", manifest: [4]),
        .shareOpened(requestID: 2),
        .readChunk(requestID: 5, index: 17),
        .chunkData(requestID: 5, index: 17, data: [UInt8](repeating: 9, count: 1000)),
        .prepareDownload(requestID: 6, manifest: [1], targetDirectory: "/out", privateShare: true),
        .downloadPrepared(requestID: 6, verified: [0xff, 0x80]),
        .writeChunk(requestID: 7, index: 0, data: []),
        .chunkWritten(requestID: 7, index: 0, accepted: true),
        .finalizeDownload(requestID: 8),
        .downloadFinalized(requestID: 8, path: "/out/x"),
        .serve(shareID: shareID, manifest: [1, 2], host: "127.0.0.1", port: 4000, partial: true),
        .addPeers(peers: ["127.0.0.1:1", "10.0.0.2:6881"]),
        .setLimits(upload: 1000, download: LimitChange.unchanged, perPeerUpload: 0),
        .configurePipeline(plan: [0], tagKey: [1, 2, 3], identityPublicKey: [4, 5]),
        .sessionKeysRequest(
            requestID: 0x8000_0001, role: 1, sharedSecret: [UInt8](repeating: 7, count: 32),
            transcript: [UInt8](repeating: 8, count: 32)),
        .sessionKeys(
            requestID: 0x8000_0001, clientToServer: [UInt8](repeating: 1, count: 32),
            serverToClient: [UInt8](repeating: 2, count: 32), publicKey: [UInt8](repeating: 3, count: 32),
            signature: [UInt8](repeating: 4, count: 64)),
        .pluginFailed(name: "pad", reason: "did not answer within 2 s"),
        .serving(port: 4000),
        .listenFailed(reason: "cannot listen on 0.0.0.0:80: permission denied"),
        .transferSettings(requestsInFlight: 16, maxPeers: 64, upload: 0, download: 1_000_000, perPeerUpload: 5),
        .fetch(shareID: shareID, peers: ["127.0.0.1:1", "[::1]:2"]),
        .manifestReceived(manifest: [5, 6]),
        .startChunks(verified: [0]),
        .chunkStored(index: 3, accepted: false, bytes: 65536, peer: "1.2.3.4:5"),
        .peerEvent(text: "hi"),
        .fetchFailed(code: 69, reason: "nobody home"),
        .peerCount(count: 3),
        .dhtStart(host: "0.0.0.0", port: 6881, routers: ["1.2.3.4:6881"], state: [1, 2]),
        .dhtReady(port: 6881, nodeID: [UInt8](repeating: 1, count: 20)),
        .dhtRequest(requestID: 4, operation: .announce, key: [UInt8](repeating: 2, count: 20), port: 80, trace: true),
        .dhtTrace(requestID: 4, line: "hop 1"),
        .dhtResult(
            requestID: 4,
            report: DHTReport(
                peers: ["1.1.1.1:1"], closest: ["ab@2.2.2.2:2"], hops: 3, queries: 9, responses: 8, announcedTo: 7)),
        .dhtStateRequest(requestID: 5),
        .dhtState(requestID: 5, state: [0], summary: "8 nodes"),
        .useRelays(key: [UInt8](repeating: 3, count: 20), relays: ["11.0.113.20:7000"], register: true, punch: false),
        .relayRegistered(relay: "11.0.113.20:7000", observed: "11.0.113.50:4000"),
        .observedAddress(source: "11.0.113.30:4000", address: "11.0.113.50:4001"),
        .natProbe(requestID: 10, servers: ["11.0.113.10:3478", "11.0.113.11:3478"]),
        .natReport(requestID: 10, observed: ["11.0.113.10:3478 11.0.113.50:4000"], mapping: 1, localPort: 4000),
        .relayStart(host: "0.0.0.0", port: 7000, maxCircuits: 64, maxCircuitRate: 0, circuitSeconds: 3600),
        .relayListening(port: 7000),
        .mapPorts(requestID: 11, gateway: "192.168.70.1", tcpPort: 4000, udpPort: 6881),
        .portMapped(
            requestID: 11, method: "NAT-PMP", externalIP: "11.0.113.70", tcpPort: 4000, udpPort: 6881, lifetime: 3600,
            note: ""),
        .publicListenPort(port: 4000),
        .dhtReadOnly(readOnly: true),
    ]

    func testEveryMessageTypeIsCovered() {
        XCTAssertEqual(Set(Self.everyMessage.map(\.tag)), Set(IPCMessage.Tag.allCases))
    }

    func testEveryMessageRoundTrips() throws {
        for message in Self.everyMessage {
            var decoder = FrameDecoder(maxFrameLength: IPCMessage.maxFrameLength)
            decoder.append(message.encoded())
            let frame = try XCTUnwrap(try decoder.next())
            XCTAssertEqual(try IPCMessage(frame: frame), message)
            XCTAssertEqual(decoder.bufferedCount, 0)
        }
    }

    func testFramesSplitAtEveryByteBoundaryReassemble() throws {
        let stream = Self.everyMessage.flatMap { $0.encoded() }
        var decoder = FrameDecoder(maxFrameLength: IPCMessage.maxFrameLength)
        var decoded: [IPCMessage] = []
        for byte in stream {
            decoder.append([byte])
            while let frame = try decoder.next() { decoded.append(try IPCMessage(frame: frame)) }
        }
        XCTAssertEqual(decoded, Self.everyMessage)
    }

    func testInnerLengthsAreBoundedToo() {
        // A valid frame whose chunk field claims 3 GiB.
        var writer = ByteWriter()
        writer.u32(1)
        writer.u32(1)
        writer.u32(0xC000_0000)
        let frame = Frame(type: IPCMessage.Tag.chunkData.rawValue, payload: writer.bytes)
        XCTAssertThrowsError(try IPCMessage(frame: frame))
    }

    func testTruncatedMessagesThrow() {
        for message in Self.everyMessage {
            let payload = message.frame().payload
            for cut in 0..<payload.count {
                let frame = Frame(type: message.tag.rawValue, payload: Array(payload[0..<cut]))
                XCTAssertThrowsError(try IPCMessage(frame: frame), "\(message) cut at \(cut)")
            }
        }
    }

    func testRandomBytesNeverCrashTheDecoders() {
        var random = SplitMix64(seed: 42)
        for round in 0..<20_000 {
            let count = Int.random(in: 0...64, using: &random)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }
            if round % 3 == 0 && bytes.count >= 6 {
                // A plausible header so the payload decoders get exercised, not only the framer.
                let tags = IPCMessage.Tag.allCases
                let tag = tags[Int.random(in: 0..<tags.count, using: &random)].rawValue
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
                _ = try? IPCMessage(frame: frame)
                _ = try? PeerMessage(frame: frame)
            }
        }
    }

    func testEveryMessageHasADirection() {
        // Each tag is sent by some worker, received by some worker, or travels on the data
        // channel; nothing is valid everywhere.
        let workerSent = WorkerRole.allCases.reduce(into: Set<IPCMessage.Tag>()) { $0.formUnion($1.mayEmit) }
        let workerReceived = WorkerRole.allCases.reduce(into: Set<IPCMessage.Tag>()) { $0.formUnion($1.mayReceive) }
        let dataChannel = WorkerRole.allCases.reduce(into: Set<IPCMessage.Tag>()) {
            $0.formUnion($1.dataChannelAccepts)
        }
        let control: Set<IPCMessage.Tag> = [.setLimits, .statusRequest, .status, .failure]
        for tag in IPCMessage.Tag.allCases {
            XCTAssertTrue(
                workerSent.contains(tag) || workerReceived.contains(tag) || dataChannel.contains(tag)
                    || control.contains(tag), "\(tag) has no direction")
        }
        XCTAssertFalse(
            WorkerRole.hash.mayReceive.contains(.fetch), "a download's peers are no business of the hash worker")
        XCTAssertFalse(WorkerRole.transfer.mayReceive.contains(.openShare), "the transfer worker opens no file")
        XCTAssertTrue(WorkerRole.transfer.mayReceive.contains(.transferSettings))
        for role in WorkerRole.allCases {
            XCTAssertTrue(role.mayEmit.intersection(role.mayReceive).isSubset(of: [.failure]), "\(role)")
        }
    }

    func testRolesMayOnlyEmitTheirOwnMessages() {
        XCTAssertTrue(WorkerRole.hash.mayEmit.contains(.downloadPrepared))
        XCTAssertFalse(WorkerRole.hash.mayEmit.contains(.chunkStored))
        XCTAssertTrue(WorkerRole.transfer.mayEmit.contains(.chunkStored))
        XCTAssertFalse(WorkerRole.transfer.mayEmit.contains(.chunkWritten))
        XCTAssertFalse(WorkerRole.discovery.mayEmit.contains(.readChunk))
        // Chunk data goes between transfer and hash directly; neither sends it to the supervisor.
        for tag: IPCMessage.Tag in [.writeChunk, .readChunk, .chunkWritten, .chunkData] {
            XCTAssertFalse(WorkerRole.transfer.mayEmit.contains(tag) || WorkerRole.hash.mayEmit.contains(tag))
        }
        XCTAssertEqual(WorkerRole.hash.dataChannelAccepts, [.writeChunk, .readChunk])
        XCTAssertEqual(WorkerRole.transfer.dataChannelAccepts, [.chunkWritten, .chunkData, .failure])
        XCTAssertEqual(WorkerRole.transfer.dataChannelPartner, .hash)
        XCTAssertNil(WorkerRole.discovery.dataChannelPartner)
        for role in WorkerRole.allCases {
            XCTAssertFalse(role.mayEmit.contains(.welcome), "\(role) must not send supervisor messages")
            XCTAssertFalse(role.mayEmit.contains(.shutdown))
        }
    }

}
