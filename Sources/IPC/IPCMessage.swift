import PeerShareCore
import Wire

/// Every message between the supervisor and its workers. One closed set, numeric tags
/// fixed forever (docs/PROTOCOL.md §1); supervisor and workers share this one codec.
public enum IPCMessage: Equatable, Sendable {
    // Lifecycle, every worker.
    case hello(version: UInt16, role: WorkerRole, pid: Int32)
    case welcome(version: UInt16)
    case ping(nonce: UInt64)
    case pong(nonce: UInt64)
    case statusRequest(requestID: UInt32)
    case status(requestID: UInt32, text: String)
    case shutdown
    case failure(requestID: UInt32, code: UInt16, message: String)

    // Hash worker: the only process that touches shared and downloaded files.
    case buildManifest(requestID: UInt32, path: String)
    case hashProgress(requestID: UInt32, bytesDone: UInt64, bytesTotal: UInt64)
    case manifestBuilt(requestID: UInt32, manifest: [UInt8])
    case openShare(requestID: UInt32, path: String, manifest: [UInt8])
    case shareOpened(requestID: UInt32)
    case readChunk(requestID: UInt32, index: UInt32)
    case chunkData(requestID: UInt32, index: UInt32, data: [UInt8])
    /// `privateShare`: files and folders are created for the user alone (0600/0700).
    case prepareDownload(requestID: UInt32, manifest: [UInt8], targetDirectory: String, privateShare: Bool)
    case downloadPrepared(requestID: UInt32, verified: [UInt8])
    case writeChunk(requestID: UInt32, index: UInt32, data: [UInt8])
    case chunkWritten(requestID: UInt32, index: UInt32, accepted: Bool)
    case finalizeDownload(requestID: UInt32)
    case downloadFinalized(requestID: UInt32, path: String)

    // Transfer worker: the only process that talks to peers.
    /// Listen for peers and serve this share. `partial`: a download in progress, so only the
    /// chunks verified so far are offered (the transfer worker knows them from its fetch).
    case serve(shareID: [UInt8], manifest: [UInt8], host: String, port: UInt16, partial: Bool)
    case serving(port: UInt16)
    case fetch(shareID: [UInt8], peers: [String])
    case manifestReceived(manifest: [UInt8])
    case startChunks(verified: [UInt8])
    /// The hash worker's verdict on a chunk from `peer` (`bytes` long), passed on by the
    /// transfer worker, which sent the chunk to the hash worker over their data channel.
    case chunkStored(index: UInt32, accepted: Bool, bytes: UInt32, peer: String)
    case peerEvent(text: String)
    case fetchFailed(code: UInt16, reason: String)
    /// The number of peers the downloader is connected to, sent when it changes.
    case peerCount(count: UInt16)
    /// More peers for the running download (a later DHT lookup found them).
    case addPeers(peers: [String])
    /// New bandwidth limits in bytes per second (0: unlimited; `LimitChange.unchanged`: keep).
    case setLimits(upload: UInt64, download: UInt64, perPeerUpload: UInt64)
    /// The pipeline for every connection (`PipelinePlan` bytes), the key an encrypted share's
    /// hello tags are made with (empty: a public share) and this peer's Ed25519 public key. No
    /// secret: the link secret and the identity's secret key stay with the supervisor.
    case configurePipeline(plan: [UInt8], tagKey: [UInt8], identityPublicKey: [UInt8])
    /// A plugin stage hung or answered garbage: the supervisor restarts it.
    case pluginFailed(name: String, reason: String)
    /// The transfer worker, in an encryption handshake, asks the supervisor for the
    /// connection's keys and our signature (`HandshakeKeyHolder`): role 0 client, 1 server;
    /// the X25519 shared secret and the transcript hash, 32 bytes each. Each transcript is
    /// answered once.
    case sessionKeysRequest(requestID: UInt32, role: UInt8, sharedSecret: [UInt8], transcript: [UInt8])
    /// The answer: both directions' keys (32 bytes each), our public key and signature.
    case sessionKeys(
        requestID: UInt32, clientToServer: [UInt8], serverToClient: [UInt8], publicKey: [UInt8], signature: [UInt8])

    /// Relays for this share (`HOST:PORT`, resolved), and its DHT key, which names it there.
    /// `register`: a seeder registers with them so downloaders can reach it through them;
    /// otherwise a downloader reaches the share's seeders through them. `punch`: let the
    /// relay introduce the two ends first (hole punching, reverse connections).
    case useRelays(key: [UInt8], relays: [String], register: Bool, punch: Bool)
    /// A relay accepted our registration and saw us at `observed`.
    case relayRegistered(relay: String, observed: String)
    /// A peer (at `source`) said in its handshake which address it sees us at.
    case observedAddress(source: String, address: String)

    // NAT worker: address discovery and the relay.
    /// Ask STUN servers (`HOST:PORT`, resolved) from one UDP socket what they see.
    case natProbe(requestID: UInt32, servers: [String])
    /// `observed`: one `SERVER MAPPED` line per server that answered; `mapping`: `MappingKind`.
    case natReport(requestID: UInt32, observed: [String], mapping: UInt8, localPort: UInt16)
    /// Run a relay on HOST:PORT with these limits (0: none).
    case relayStart(host: String, port: UInt16, maxCircuits: UInt32, maxCircuitRate: UInt64, circuitSeconds: UInt32)
    case relayListening(port: UInt16)
    /// Ask the router (NAT-PMP at `gateway`, then UPnP) to forward these ports (0: none);
    /// the nat worker renews the mapping and removes it at shutdown.
    case mapPorts(requestID: UInt32, gateway: String, tcpPort: UInt16, udpPort: UInt16)
    /// What the router granted (`method` "NAT-PMP" or "UPnP"), or `method` empty and why not.
    case portMapped(
        requestID: UInt32, method: String, externalIP: String, tcpPort: UInt16, udpPort: UInt16, lifetime: UInt32,
        note: String)
    /// The transfer worker's listening port as seen from outside (a router mapped it): the
    /// port a relay tells seeders to dial back (a reverse connection).
    case publicListenPort(port: UInt16)

    // Discovery worker: the DHT node.
    case dhtStart(host: String, port: UInt16, routers: [String], state: [UInt8])
    case dhtReady(port: UInt16, nodeID: [UInt8])
    case dhtRequest(requestID: UInt32, operation: DHTOperation, key: [UInt8], port: UInt16, trace: Bool)
    case dhtTrace(requestID: UInt32, line: String)
    case dhtResult(requestID: UInt32, report: DHTReport)
    case dhtStateRequest(requestID: UInt32)
    case dhtState(requestID: UInt32, state: [UInt8], summary: String)
    /// BEP 43: this node cannot be reached (behind a NAT that maps nothing): read-only.
    case dhtReadOnly(readOnly: Bool)
    /// transfer → supervisor: the listening socket could not be opened. A `share` cannot go
    /// on; a `get` downloads without serving others.
    case listenFailed(reason: String)
    /// supervisor → transfer, first of all (its table row's setup): how many requests to keep
    /// outstanding per peer at first, how many peers at most, and the configured limits.
    /// Settings go over the pipe, not the command line: one owner, one encoding.
    case transferSettings(
        requestsInFlight: UInt16, maxPeers: UInt16, upload: UInt64, download: UInt64, perPeerUpload: UInt64)

    public enum Tag: UInt16, CaseIterable, Sendable {
        case hello = 0x0001
        case welcome = 0x0002
        case ping = 0x0003
        case pong = 0x0004
        case statusRequest = 0x0005
        case status = 0x0006
        case shutdown = 0x0007
        case failure = 0x0008
        case buildManifest = 0x0100
        case hashProgress = 0x0101
        case manifestBuilt = 0x0102
        case openShare = 0x0103
        case shareOpened = 0x0104
        case readChunk = 0x0105
        case chunkData = 0x0106
        case prepareDownload = 0x0107
        case downloadPrepared = 0x0108
        case writeChunk = 0x0109
        case chunkWritten = 0x010A
        case finalizeDownload = 0x010B
        case downloadFinalized = 0x010C
        case serve = 0x0200
        case serving = 0x0201
        case fetch = 0x0202
        case manifestReceived = 0x0203
        case startChunks = 0x0204
        case chunkStored = 0x0205
        // 0x0206 is retired (chunkResult, from when chunk data went through the supervisor).
        case peerEvent = 0x0207
        case fetchFailed = 0x0208
        case peerCount = 0x0209
        case addPeers = 0x020A
        case setLimits = 0x020B
        case configurePipeline = 0x020C
        case pluginFailed = 0x020D
        case sessionKeysRequest = 0x020E
        case sessionKeys = 0x020F
        case useRelays = 0x0210
        case relayRegistered = 0x0211
        case observedAddress = 0x0212
        case listenFailed = 0x0213
        case transferSettings = 0x0214
        case dhtStart = 0x0300
        case dhtReady = 0x0301
        case dhtRequest = 0x0302
        case dhtTrace = 0x0303
        case dhtResult = 0x0304
        case dhtStateRequest = 0x0305
        case dhtState = 0x0306
        case dhtReadOnly = 0x0307
        case natProbe = 0x0400
        case natReport = 0x0401
        case relayStart = 0x0402
        case relayListening = 0x0403
        case mapPorts = 0x0404
        case portMapped = 0x0405
        case publicListenPort = 0x0406
    }

    /// 2: chunk data moves on the transfer⇄hash data channel, not through the supervisor.
    /// 3: no secret reaches the transfer worker (tag key and public key in
    /// configurePipeline; sessionKeysRequest/sessionKeys for each encryption handshake).
    /// 4: NAT traversal (useRelays, relayRegistered, natProbe, natReport, relayStart,
    /// relayListening, mapPorts, portMapped, publicListenPort).
    /// 5: listenFailed (a failed listen is its own message, not a `failure` told apart by
    /// text); transferSettings (the transfer worker's settings come over the pipe, not as
    /// command-line arguments).
    public static let protocolVersion: UInt16 = 5
    /// The largest frame on a supervisor pipe: a full manifest plus headers.
    public static let maxFrameLength = Manifest.maxEncodedSize + 64 * 1024
    static let maxText = 64 * 1024
    static let maxPeers = 256

    public var tag: Tag {
        switch self {
        case .hello: return .hello
        case .welcome: return .welcome
        case .ping: return .ping
        case .pong: return .pong
        case .statusRequest: return .statusRequest
        case .status: return .status
        case .shutdown: return .shutdown
        case .failure: return .failure
        case .buildManifest: return .buildManifest
        case .hashProgress: return .hashProgress
        case .manifestBuilt: return .manifestBuilt
        case .openShare: return .openShare
        case .shareOpened: return .shareOpened
        case .readChunk: return .readChunk
        case .chunkData: return .chunkData
        case .prepareDownload: return .prepareDownload
        case .downloadPrepared: return .downloadPrepared
        case .writeChunk: return .writeChunk
        case .chunkWritten: return .chunkWritten
        case .finalizeDownload: return .finalizeDownload
        case .downloadFinalized: return .downloadFinalized
        case .serve: return .serve
        case .serving: return .serving
        case .fetch: return .fetch
        case .manifestReceived: return .manifestReceived
        case .startChunks: return .startChunks
        case .chunkStored: return .chunkStored
        case .peerEvent: return .peerEvent
        case .fetchFailed: return .fetchFailed
        case .peerCount: return .peerCount
        case .addPeers: return .addPeers
        case .setLimits: return .setLimits
        case .configurePipeline: return .configurePipeline
        case .pluginFailed: return .pluginFailed
        case .sessionKeysRequest: return .sessionKeysRequest
        case .sessionKeys: return .sessionKeys
        case .useRelays: return .useRelays
        case .relayRegistered: return .relayRegistered
        case .observedAddress: return .observedAddress
        case .natProbe: return .natProbe
        case .natReport: return .natReport
        case .relayStart: return .relayStart
        case .relayListening: return .relayListening
        case .mapPorts: return .mapPorts
        case .portMapped: return .portMapped
        case .publicListenPort: return .publicListenPort
        case .dhtStart: return .dhtStart
        case .dhtReadOnly: return .dhtReadOnly
        case .listenFailed: return .listenFailed
        case .transferSettings: return .transferSettings
        case .dhtReady: return .dhtReady
        case .dhtRequest: return .dhtRequest
        case .dhtTrace: return .dhtTrace
        case .dhtResult: return .dhtResult
        case .dhtStateRequest: return .dhtStateRequest
        case .dhtState: return .dhtState
        }
    }

    /// The request this message answers or carries, if any: the supervisor re-issues
    /// unanswered requests to a restarted worker by this id.
    public var requestID: UInt32? {
        switch self {
        case .statusRequest(let id), .status(let id, _), .failure(let id, _, _), .buildManifest(let id, _),
            .hashProgress(let id, _, _), .manifestBuilt(let id, _), .openShare(let id, _, _), .shareOpened(let id),
            .readChunk(let id, _), .chunkData(let id, _, _), .prepareDownload(let id, _, _, _),
            .downloadPrepared(let id, _), .writeChunk(let id, _, _), .chunkWritten(let id, _, _),
            .finalizeDownload(let id), .downloadFinalized(let id, _), .dhtRequest(let id, _, _, _, _),
            .dhtTrace(let id, _), .dhtResult(let id, _), .dhtStateRequest(let id), .dhtState(let id, _, _),
            .sessionKeysRequest(let id, _, _, _), .sessionKeys(let id, _, _, _, _), .natProbe(let id, _),
            .natReport(let id, _, _, _), .mapPorts(let id, _, _, _), .portMapped(let id, _, _, _, _, _, _):
            return id
        default:
            return nil
        }
    }

    public func frame() -> Frame {
        var w = ByteWriter(capacity: payloadSizeHint)
        writePayload(into: &w)
        return Frame(type: tag.rawValue, payload: w.bytes)
    }

    /// The whole frame, header included, built with a single copy of any chunk data.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Frame.headerSize + payloadSizeHint)
        w.u32(0)
        w.u16(tag.rawValue)
        writePayload(into: &w)
        w.patchU32(at: 0, UInt32(w.bytes.count - 4))
        return w.bytes
    }

    private var payloadSizeHint: Int {
        switch self {
        case .chunkData(_, _, let data), .writeChunk(_, _, let data):
            return data.count + 300
        case .manifestBuilt(_, let m), .openShare(_, _, let m), .prepareDownload(_, let m, _, _),
            .serve(_, let m, _, _, _),
            .manifestReceived(let m):
            return m.count + 300
        default: return 64
        }
    }

    private func writePayload(into w: inout ByteWriter) {
        switch self {
        case .hello(let version, let role, let pid):
            w.u16(version)
            w.u8(role.code)
            w.u32(UInt32(bitPattern: pid))
        case .welcome(let version): w.u16(version)
        case .ping(let nonce), .pong(let nonce): w.u64(nonce)
        case .statusRequest(let id), .shareOpened(let id), .finalizeDownload(let id): w.u32(id)
        case .failure(let id, let code, let text):
            w.u32(id)
            w.u16(code)
            w.blob(Array(text.utf8))
        case .status(let id, let text), .buildManifest(let id, let text),
            .downloadFinalized(let id, let text):
            w.u32(id)
            w.blob(Array(text.utf8))
        case .shutdown: break
        case .hashProgress(let id, let done, let total):
            w.u32(id)
            w.u64(done)
            w.u64(total)
        case .manifestBuilt(let id, let manifest), .downloadPrepared(let id, let manifest):
            w.u32(id)
            w.blob(manifest)
        case .openShare(let id, let path, let manifest):
            w.u32(id)
            w.blob(Array(path.utf8))
            w.blob(manifest)
        case .readChunk(let id, let index):
            w.u32(id)
            w.u32(index)
        case .chunkData(let id, let index, let data), .writeChunk(let id, let index, let data):
            w.u32(id)
            w.u32(index)
            w.blob(data)
        case .prepareDownload(let id, let manifest, let target, let privateShare):
            w.u32(id)
            w.blob(manifest)
            w.blob(Array(target.utf8))
            w.bool(privateShare)
        case .chunkWritten(let id, let index, let accepted):
            w.u32(id)
            w.u32(index)
            w.bool(accepted)
        case .serve(let shareID, let manifest, let host, let port, let partial):
            w.raw(shareID)
            w.blob(manifest)
            w.string(host)
            w.u16(port)
            w.bool(partial)
        case .serving(let port): w.u16(port)
        case .fetch(let shareID, let peers):
            w.raw(shareID)
            w.u16(UInt16(peers.count))
            for peer in peers { w.string(peer) }
        case .addPeers(let peers):
            w.u16(UInt16(peers.count))
            for peer in peers { w.string(peer) }
        case .setLimits(let upload, let download, let perPeer):
            w.u64(upload)
            w.u64(download)
            w.u64(perPeer)
        case .configurePipeline(let plan, let tag, let publicKey):
            w.blob(plan)
            w.blob(tag)
            w.blob(publicKey)
        case .sessionKeysRequest(let id, let role, let shared, let transcript):
            w.u32(id)
            w.u8(role)
            w.blob(shared)
            w.blob(transcript)
        case .sessionKeys(let id, let c2s, let s2c, let publicKey, let signature):
            w.u32(id)
            w.blob(c2s)
            w.blob(s2c)
            w.blob(publicKey)
            w.blob(signature)
        case .pluginFailed(let name, let reason):
            w.string(name)
            w.blob(Array(reason.utf8))
        case .manifestReceived(let manifest), .startChunks(let manifest): w.blob(manifest)
        case .chunkStored(let index, let accepted, let bytes, let peer):
            w.u32(index)
            w.bool(accepted)
            w.u32(bytes)
            w.string(peer)
        case .peerEvent(let text): w.blob(Array(text.utf8))
        case .fetchFailed(let code, let text):
            w.u16(code)
            w.blob(Array(text.utf8))
        case .peerCount(let count): w.u16(count)
        case .useRelays(let key, let relays, let register, let punch):
            w.blob(key)
            w.u16(UInt16(relays.count))
            for relay in relays { w.string(relay) }
            w.bool(register)
            w.bool(punch)
        case .relayRegistered(let relay, let observed), .observedAddress(let relay, let observed):
            w.string(relay)
            w.string(observed)
        case .natProbe(let id, let servers):
            w.u32(id)
            w.u16(UInt16(servers.count))
            for server in servers { w.string(server) }
        case .natReport(let id, let observed, let mapping, let localPort):
            w.u32(id)
            w.u16(UInt16(observed.count))
            for line in observed { w.string(line) }
            w.u8(mapping)
            w.u16(localPort)
        case .relayStart(let host, let port, let circuits, let rate, let seconds):
            w.string(host)
            w.u16(port)
            w.u32(circuits)
            w.u64(rate)
            w.u32(seconds)
        case .relayListening(let port), .publicListenPort(let port): w.u16(port)
        case .mapPorts(let id, let gateway, let tcp, let udp):
            w.u32(id)
            w.string(gateway)
            w.u16(tcp)
            w.u16(udp)
        case .portMapped(let id, let method, let ip, let tcp, let udp, let lifetime, let note):
            w.u32(id)
            w.string(method)
            w.string(ip)
            w.u16(tcp)
            w.u16(udp)
            w.u32(lifetime)
            w.blob(Array(note.utf8))
        case .dhtStart(let host, let port, let routers, let state):
            w.string(host)
            w.u16(port)
            w.u16(UInt16(routers.count))
            for router in routers { w.string(router) }
            w.blob(state)
        case .dhtReadOnly(let readOnly): w.bool(readOnly)
        case .listenFailed(let reason): w.string(reason)
        case .transferSettings(let requestsInFlight, let maxPeers, let upload, let download, let perPeer):
            w.u16(requestsInFlight)
            w.u16(maxPeers)
            w.u64(upload)
            w.u64(download)
            w.u64(perPeer)
        case .dhtReady(let port, let nodeID):
            w.u16(port)
            w.raw(nodeID)
        case .dhtRequest(let id, let operation, let key, let port, let trace):
            w.u32(id)
            w.u8(operation.rawValue)
            w.raw(key)
            w.u16(port)
            w.bool(trace)
        case .dhtTrace(let id, let line):
            w.u32(id)
            w.blob(Array(line.utf8))
        case .dhtResult(let id, let report):
            w.u32(id)
            report.write(into: &w)
        case .dhtStateRequest(let id): w.u32(id)
        case .dhtState(let id, let state, let summary):
            w.u32(id)
            w.blob(state)
            w.blob(Array(summary.utf8))
        }
    }

    /// Decodes one frame. Unknown tags, short or long payloads and bad fields all throw.
    public init(frame: Frame) throws {
        try self.init(type: frame.type, reader: ByteReader(frame.payload))
    }

    /// Decodes a frame body (type and payload, the bytes after the length) without copying it.
    public init(body: [UInt8]) throws {
        var reader = ByteReader(body)
        let type = try reader.u16()
        try self.init(type: type, reader: reader)
    }

    init(type: UInt16, reader: ByteReader) throws {
        guard let tag = Tag(rawValue: type) else {
            throw DecodeError.invalid("unknown message type 0x\(String(type, radix: 16))")
        }
        var r = reader
        let maxData = Manifest.maxEncodedSize
        func text() throws -> String {
            let bytes = try r.blob(limit: IPCMessage.maxText, what: "text")
            guard let string = String(validating: bytes, as: UTF8.self) else {
                throw DecodeError.invalid("text is not UTF-8")
            }
            return string
        }
        func shareID() throws -> [UInt8] { try r.raw(ShareID.byteCount) }
        func list() throws -> [String] {
            let count = Int(try r.u16())
            guard count <= IPCMessage.maxPeers else {
                throw DecodeError.tooLarge(what: "list", length: count, limit: IPCMessage.maxPeers)
            }
            var items: [String] = []
            for _ in 0..<count { items.append(try r.string()) }
            return items
        }
        switch tag {
        case .hello:
            let version = try r.u16()
            guard let role = WorkerRole(code: try r.u8()) else { throw DecodeError.invalid("unknown worker role") }
            self = .hello(version: version, role: role, pid: Int32(bitPattern: try r.u32()))
        case .welcome: self = .welcome(version: try r.u16())
        case .ping: self = .ping(nonce: try r.u64())
        case .pong: self = .pong(nonce: try r.u64())
        case .statusRequest: self = .statusRequest(requestID: try r.u32())
        case .status: self = .status(requestID: try r.u32(), text: try text())
        case .shutdown: self = .shutdown
        case .failure: self = .failure(requestID: try r.u32(), code: try r.u16(), message: try text())
        case .buildManifest: self = .buildManifest(requestID: try r.u32(), path: try text())
        case .hashProgress:
            self = .hashProgress(requestID: try r.u32(), bytesDone: try r.u64(), bytesTotal: try r.u64())
        case .manifestBuilt:
            self = .manifestBuilt(requestID: try r.u32(), manifest: try r.blob(limit: maxData, what: "manifest"))
        case .openShare:
            self = .openShare(
                requestID: try r.u32(), path: try text(), manifest: try r.blob(limit: maxData, what: "manifest"))
        case .shareOpened: self = .shareOpened(requestID: try r.u32())
        case .readChunk: self = .readChunk(requestID: try r.u32(), index: try r.u32())
        case .chunkData:
            self = .chunkData(
                requestID: try r.u32(), index: try r.u32(),
                data: try r.blob(limit: Manifest.maxChunkSize, what: "chunk"))
        case .prepareDownload:
            self = .prepareDownload(
                requestID: try r.u32(), manifest: try r.blob(limit: maxData, what: "manifest"),
                targetDirectory: try text(), privateShare: try r.bool())
        case .downloadPrepared:
            self = .downloadPrepared(requestID: try r.u32(), verified: try r.blob(limit: maxData, what: "bitfield"))
        case .writeChunk:
            self = .writeChunk(
                requestID: try r.u32(), index: try r.u32(),
                data: try r.blob(limit: Manifest.maxChunkSize, what: "chunk"))
        case .chunkWritten: self = .chunkWritten(requestID: try r.u32(), index: try r.u32(), accepted: try r.bool())
        case .finalizeDownload: self = .finalizeDownload(requestID: try r.u32())
        case .downloadFinalized: self = .downloadFinalized(requestID: try r.u32(), path: try text())
        case .serve:
            self = .serve(
                shareID: try shareID(), manifest: try r.blob(limit: maxData, what: "manifest"), host: try r.string(),
                port: try r.u16(), partial: try r.bool())
        case .serving: self = .serving(port: try r.u16())
        case .fetch:
            let id = try shareID()
            let count = Int(try r.u16())
            guard count <= IPCMessage.maxPeers else {
                throw DecodeError.tooLarge(what: "peer list", length: count, limit: IPCMessage.maxPeers)
            }
            var peers: [String] = []
            for _ in 0..<count { peers.append(try r.string()) }
            self = .fetch(shareID: id, peers: peers)
        case .manifestReceived: self = .manifestReceived(manifest: try r.blob(limit: maxData, what: "manifest"))
        case .startChunks: self = .startChunks(verified: try r.blob(limit: maxData, what: "bitfield"))
        case .chunkStored:
            self = .chunkStored(index: try r.u32(), accepted: try r.bool(), bytes: try r.u32(), peer: try r.string())
        case .peerEvent: self = .peerEvent(text: try text())
        case .fetchFailed: self = .fetchFailed(code: try r.u16(), reason: try text())
        case .peerCount: self = .peerCount(count: try r.u16())
        case .addPeers:
            let count = Int(try r.u16())
            guard count <= IPCMessage.maxPeers else {
                throw DecodeError.tooLarge(what: "peer list", length: count, limit: IPCMessage.maxPeers)
            }
            var peers: [String] = []
            for _ in 0..<count { peers.append(try r.string()) }
            self = .addPeers(peers: peers)
        case .setLimits: self = .setLimits(upload: try r.u64(), download: try r.u64(), perPeerUpload: try r.u64())
        case .configurePipeline:
            self = .configurePipeline(
                plan: try r.blob(limit: 4096, what: "pipeline"), tagKey: try r.blob(limit: 64, what: "tag key"),
                identityPublicKey: try r.blob(limit: 64, what: "public key"))
        case .sessionKeysRequest:
            self = .sessionKeysRequest(
                requestID: try r.u32(), role: try r.u8(), sharedSecret: try r.blob(limit: 32, what: "shared secret"),
                transcript: try r.blob(limit: 32, what: "transcript"))
        case .sessionKeys:
            self = .sessionKeys(
                requestID: try r.u32(), clientToServer: try r.blob(limit: 32, what: "key"),
                serverToClient: try r.blob(limit: 32, what: "key"),
                publicKey: try r.blob(limit: 32, what: "public key"),
                signature: try r.blob(limit: 64, what: "signature"))
        case .pluginFailed: self = .pluginFailed(name: try r.string(), reason: try text())
        case .useRelays:
            let key = try r.blob(limit: 32, what: "key")
            self = .useRelays(key: key, relays: try list(), register: try r.bool(), punch: try r.bool())
        case .relayRegistered: self = .relayRegistered(relay: try r.string(), observed: try r.string())
        case .observedAddress: self = .observedAddress(source: try r.string(), address: try r.string())
        case .natProbe: self = .natProbe(requestID: try r.u32(), servers: try list())
        case .natReport:
            self = .natReport(requestID: try r.u32(), observed: try list(), mapping: try r.u8(), localPort: try r.u16())
        case .relayStart:
            self = .relayStart(
                host: try r.string(), port: try r.u16(), maxCircuits: try r.u32(), maxCircuitRate: try r.u64(),
                circuitSeconds: try r.u32())
        case .relayListening: self = .relayListening(port: try r.u16())
        case .publicListenPort: self = .publicListenPort(port: try r.u16())
        case .mapPorts:
            self = .mapPorts(
                requestID: try r.u32(), gateway: try r.string(), tcpPort: try r.u16(), udpPort: try r.u16())
        case .portMapped:
            self = .portMapped(
                requestID: try r.u32(), method: try r.string(), externalIP: try r.string(), tcpPort: try r.u16(),
                udpPort: try r.u16(), lifetime: try r.u32(), note: try text())
        case .dhtStart:
            let host = try r.string()
            let port = try r.u16()
            let count = Int(try r.u16())
            guard count <= IPCMessage.maxPeers else {
                throw DecodeError.tooLarge(what: "router list", length: count, limit: IPCMessage.maxPeers)
            }
            var routers: [String] = []
            for _ in 0..<count { routers.append(try r.string()) }
            self = .dhtStart(host: host, port: port, routers: routers, state: try r.blob(limit: maxData, what: "state"))
        case .dhtReady: self = .dhtReady(port: try r.u16(), nodeID: try r.raw(20))
        case .dhtReadOnly: self = .dhtReadOnly(readOnly: try r.bool())
        case .listenFailed: self = .listenFailed(reason: try r.string())
        case .transferSettings:
            self = .transferSettings(
                requestsInFlight: try r.u16(), maxPeers: try r.u16(), upload: try r.u64(), download: try r.u64(),
                perPeerUpload: try r.u64())
        case .dhtRequest:
            let id = try r.u32()
            guard let operation = DHTOperation(rawValue: try r.u8()) else {
                throw DecodeError.invalid("unknown DHT operation")
            }
            self = .dhtRequest(
                requestID: id, operation: operation, key: try r.raw(20), port: try r.u16(), trace: try r.bool())
        case .dhtTrace: self = .dhtTrace(requestID: try r.u32(), line: try text())
        case .dhtResult: self = .dhtResult(requestID: try r.u32(), report: try DHTReport(reader: &r))
        case .dhtStateRequest: self = .dhtStateRequest(requestID: try r.u32())
        case .dhtState:
            self = .dhtState(
                requestID: try r.u32(), state: try r.blob(limit: maxData, what: "state"), summary: try text())
        }
        try r.expectEnd()
    }
}

/// `setLimits` values.
public enum LimitChange {
    /// Keep the current limit.
    public static let unchanged = UInt64.max
    /// The largest rate a limit may be set to, 2^50 B/s (1 PiB/s): far above any link, and
    /// far below where a rate stops surviving a Double ↔ UInt64 round trip.
    public static let maxRate: UInt64 = 1 << 50

    /// Why a request's values are out of range, or nil when each is `unchanged`, 0 (no
    /// limit) or at most `maxRate`.
    public static func problem(upload: UInt64, download: UInt64, perPeerUpload: UInt64) -> String? {
        for (name, value) in [("upload", upload), ("download", download), ("per-peer upload", perPeerUpload)]
        where value != unchanged && value > maxRate {
            return "\(name) limit \(value) B/s is out of range (0 for none, at most \(maxRate) B/s)"
        }
        return nil
    }
}

public enum DHTOperation: UInt8, Sendable {
    /// find_node lookup of a 20-byte target.
    case lookup = 1
    /// get_peers lookup: who announced this key?
    case getPeers = 2
    /// get_peers, then announce_peer with `port` to the closest nodes (and keep re-announcing).
    case announce = 3
    /// Ping the node at the address in `key`'s first 6 bytes (compact IPv4 + port).
    case addNode = 4
}

/// The outcome of a DHT request, as the supervisor and `peershare dht` show it.
public struct DHTReport: Equatable, Sendable {
    /// Peers found, "HOST:PORT".
    public var peers: [String]
    /// Closest nodes that answered, "ID-HEX@HOST:PORT".
    public var closest: [String]
    public var hops: UInt16
    public var queries: UInt16
    public var responses: UInt16
    public var announcedTo: UInt16

    public init(
        peers: [String], closest: [String], hops: UInt16, queries: UInt16, responses: UInt16, announcedTo: UInt16
    ) {
        self.peers = peers
        self.closest = closest
        self.hops = hops
        self.queries = queries
        self.responses = responses
        self.announcedTo = announcedTo
    }

    func write(into w: inout ByteWriter) {
        w.u16(UInt16(min(peers.count, 1000)))
        for peer in peers.prefix(1000) { w.string(peer) }
        w.u16(UInt16(min(closest.count, 1000)))
        for node in closest.prefix(1000) { w.string(node) }
        w.u16(hops)
        w.u16(queries)
        w.u16(responses)
        w.u16(announcedTo)
    }

    init(reader r: inout ByteReader) throws {
        func list() throws -> [String] {
            let count = Int(try r.u16())
            guard count <= 1000 else { throw DecodeError.tooLarge(what: "list", length: count, limit: 1000) }
            var out: [String] = []
            for _ in 0..<count { out.append(try r.string()) }
            return out
        }
        peers = try list()
        closest = try list()
        hops = try r.u16()
        queries = try r.u16()
        responses = try r.u16()
        announcedTo = try r.u16()
    }
}
