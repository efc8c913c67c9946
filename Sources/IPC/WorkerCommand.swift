import PeerShareCore
import Wire

/// Everything the supervisor tells a worker on its pipe. The other direction is
/// `WorkerReport`; which role receives which command is `WorkerRole.mayReceive`.
public enum WorkerCommand: ChannelMessage {
    // Lifecycle, every worker.
    case welcome(version: UInt16)
    case ping(nonce: UInt64)
    case statusRequest(requestID: UInt32)
    /// What the worker has counted since it started (bytes, chunks, packets): answered with
    /// `WorkerReport.counters`, for `/metrics`.
    case countersRequest(requestID: UInt32)
    case shutdown
    /// The answer to a request the supervisor refuses (a key request on a public share).
    case failure(requestID: UInt32, code: UInt16, message: String)

    // Hash worker: the only process that touches shared and downloaded files.
    case buildManifest(requestID: UInt32, path: String)
    /// `hashedAt`: when the manifest was made (Unix nanoseconds); a file modified later is
    /// refused as changed. 0: no such check (a restarted worker reopening its share).
    case openShare(requestID: UInt32, path: String, manifest: [UInt8], hashedAt: UInt64)
    /// `privateShare`: files and folders are created for the user alone (0600/0700).
    case prepareDownload(requestID: UInt32, manifest: [UInt8], targetDirectory: String, privateShare: Bool)
    case finalizeDownload(requestID: UInt32)

    // Transfer worker: the only process that talks to peers.
    /// First of all (its table row's setup): how many requests to keep outstanding per peer
    /// at first, how many peers at most, and the configured limits. Settings go over the pipe,
    /// not the command line: one owner, one encoding.
    case transferSettings(
        requestsInFlight: UInt16, maxPeers: UInt16, upload: UInt64, download: UInt64, perPeerUpload: UInt64)
    /// Listen for peers and serve this share. `partial`: a download in progress, so only the
    /// chunks verified so far are offered (the transfer worker knows them from its fetch).
    case serve(shareID: [UInt8], manifest: [UInt8], host: String, port: UInt16, partial: Bool)
    case fetch(shareID: [UInt8], peers: [String])
    /// The chunks already verified on disk (a bitfield): fetch the rest.
    case startChunks(verified: [UInt8])
    /// More peers for the running download (a later DHT lookup found them, or the LAN:
    /// `nearby`, tried ahead of far peers waiting for a connection slot).
    case addPeers(peers: [String], nearby: Bool)
    /// New bandwidth limits in bytes per second (0: unlimited; `LimitChange.unchanged`: keep).
    case setLimits(upload: UInt64, download: UInt64, perPeerUpload: UInt64)
    /// The pipeline for every connection (`PipelinePlan` bytes), the key an encrypted share's
    /// hello tags are made with (empty: a public share) and this peer's Ed25519 public key. No
    /// secret: the link secret and the identity's secret key stay with the supervisor.
    case configurePipeline(plan: [UInt8], tagKey: [UInt8], identityPublicKey: [UInt8])
    /// The answer to `WorkerReport.sessionKeysRequest`: both directions' keys (32 bytes
    /// each), our public key and signature.
    case sessionKeys(
        requestID: UInt32, clientToServer: [UInt8], serverToClient: [UInt8], publicKey: [UInt8], signature: [UInt8])
    /// Relays for this share (`HOST:PORT`, resolved), and its DHT key, which names it there.
    /// `register`: a seeder registers with them so downloaders can reach it through them;
    /// otherwise a downloader reaches the share's seeders through them. `punch`: let the
    /// relay introduce the two ends first (hole punching, reverse connections).
    case useRelays(key: [UInt8], relays: [String], register: Bool, punch: Bool)
    /// The transfer worker's listening port as seen from outside (a router mapped it): the
    /// port a relay tells seeders to dial back (a reverse connection).
    case publicListenPort(port: UInt16)

    // NAT worker: address discovery and the relay.
    /// Ask STUN servers (`HOST:PORT`, resolved) from one UDP socket what they see.
    case natProbe(requestID: UInt32, servers: [String])
    /// Run a relay on HOST:PORT with these limits (0: none).
    case relayStart(host: String, port: UInt16, maxCircuits: UInt32, maxCircuitRate: UInt64, circuitSeconds: UInt32)
    /// Ask the router (NAT-PMP at `gateway`, then UPnP) to forward these ports (0: none);
    /// the nat worker renews the mapping and removes it at shutdown.
    case mapPorts(requestID: UInt32, gateway: String, tcpPort: UInt16, udpPort: UInt16)

    // Discovery worker: the DHT node.
    case dhtStart(host: String, port: UInt16, routers: [String], state: [UInt8])
    case dhtRequest(requestID: UInt32, operation: DHTOperation, key: [UInt8], port: UInt16, trace: Bool)
    case dhtStateRequest(requestID: UInt32)
    /// BEP 43: this node cannot be reached (behind a NAT that maps nothing): read-only.
    case dhtReadOnly(readOnly: Bool)
    /// Start LAN discovery (BEP 14) on these interfaces, enumerated by the supervisor (the
    /// worker's sandbox has no netlink): one "INDEX ADDRESS/PREFIX ..." line each.
    case lanStart(interfaces: [String])
    /// Announce a 20-byte share key on the LAN with our TCP port: `serving` a share, or looking
    /// for its peers (port 0: looking, taking no connections). `families`: where the port takes
    /// connections, 1 IPv4, 2 IPv6, 3 both (announced on those groups only).
    case lanAnnounce(key: [UInt8], port: UInt16, serving: Bool, families: UInt8)
    /// Stop announcing (and looking for) a 20-byte key, in the DHT and on the LAN: a share the
    /// daemon paused or removed.
    case withdraw(key: [UInt8])

    public enum Tag: UInt16, CaseIterable, Sendable {
        case welcome = 0x0002
        case ping = 0x0003
        case statusRequest = 0x0005
        case shutdown = 0x0007
        case failure = 0x0008
        case countersRequest = 0x0009
        case buildManifest = 0x0100
        case openShare = 0x0103
        case prepareDownload = 0x0107
        case finalizeDownload = 0x010B
        case serve = 0x0200
        case fetch = 0x0202
        case startChunks = 0x0204
        case addPeers = 0x020A
        case setLimits = 0x020B
        case configurePipeline = 0x020C
        case sessionKeys = 0x020F
        case useRelays = 0x0210
        case transferSettings = 0x0214
        case dhtStart = 0x0300
        case dhtRequest = 0x0302
        case dhtStateRequest = 0x0305
        case dhtReadOnly = 0x0307
        case lanStart = 0x0308
        case lanAnnounce = 0x0309
        case withdraw = 0x030B
        case natProbe = 0x0400
        case relayStart = 0x0402
        case mapPorts = 0x0404
        case publicListenPort = 0x0406
    }

    public var tag: Tag {
        switch self {
        case .welcome: return .welcome
        case .ping: return .ping
        case .statusRequest: return .statusRequest
        case .countersRequest: return .countersRequest
        case .shutdown: return .shutdown
        case .failure: return .failure
        case .buildManifest: return .buildManifest
        case .openShare: return .openShare
        case .prepareDownload: return .prepareDownload
        case .finalizeDownload: return .finalizeDownload
        case .transferSettings: return .transferSettings
        case .serve: return .serve
        case .fetch: return .fetch
        case .startChunks: return .startChunks
        case .addPeers: return .addPeers
        case .setLimits: return .setLimits
        case .configurePipeline: return .configurePipeline
        case .sessionKeys: return .sessionKeys
        case .useRelays: return .useRelays
        case .publicListenPort: return .publicListenPort
        case .natProbe: return .natProbe
        case .relayStart: return .relayStart
        case .mapPorts: return .mapPorts
        case .dhtStart: return .dhtStart
        case .dhtRequest: return .dhtRequest
        case .dhtStateRequest: return .dhtStateRequest
        case .dhtReadOnly: return .dhtReadOnly
        case .lanStart: return .lanStart
        case .lanAnnounce: return .lanAnnounce
        case .withdraw: return .withdraw
        }
    }

    /// The request this command carries, if any: the supervisor re-issues unanswered
    /// requests to a restarted worker by this id.
    public var requestID: UInt32? {
        switch self {
        case .statusRequest(let id), .countersRequest(let id), .failure(let id, _, _), .buildManifest(let id, _),
            .openShare(let id, _, _, _),
            .prepareDownload(let id, _, _, _), .finalizeDownload(let id), .sessionKeys(let id, _, _, _, _),
            .natProbe(let id, _), .mapPorts(let id, _, _, _), .dhtRequest(let id, _, _, _, _),
            .dhtStateRequest(let id):
            return id
        default:
            return nil
        }
    }

    public var payloadSizeHint: Int {
        switch self {
        case .openShare(_, _, let m, _), .prepareDownload(_, let m, _, _), .serve(_, let m, _, _, _):
            return m.count + 300
        default: return 64
        }
    }

    public func writePayload(into w: inout ByteWriter) {
        switch self {
        case .welcome(let version): w.u16(version)
        case .ping(let nonce): w.u64(nonce)
        case .statusRequest(let id), .countersRequest(let id), .finalizeDownload(let id), .dhtStateRequest(let id):
            w.u32(id)
        case .shutdown: break
        case .failure(let id, let code, let text):
            w.u32(id)
            w.u16(code)
            w.text(text)
        case .buildManifest(let id, let path):
            w.u32(id)
            w.text(path)
        case .openShare(let id, let path, let manifest, let hashedAt):
            w.u32(id)
            w.text(path)
            w.blob(manifest)
            w.u64(hashedAt)
        case .prepareDownload(let id, let manifest, let target, let privateShare):
            w.u32(id)
            w.blob(manifest)
            w.text(target)
            w.bool(privateShare)
        case .transferSettings(let requestsInFlight, let maxPeers, let upload, let download, let perPeer):
            w.u16(requestsInFlight)
            w.u16(maxPeers)
            w.u64(upload)
            w.u64(download)
            w.u64(perPeer)
        case .serve(let shareID, let manifest, let host, let port, let partial):
            w.raw(shareID)
            w.blob(manifest)
            w.string(host)
            w.u16(port)
            w.bool(partial)
        case .fetch(let shareID, let peers):
            w.raw(shareID)
            w.list(peers)
        case .startChunks(let verified): w.blob(verified)
        case .addPeers(let peers, let nearby):
            w.list(peers)
            w.bool(nearby)
        case .setLimits(let upload, let download, let perPeer):
            w.u64(upload)
            w.u64(download)
            w.u64(perPeer)
        case .configurePipeline(let plan, let tag, let publicKey):
            w.blob(plan)
            w.blob(tag)
            w.blob(publicKey)
        case .sessionKeys(let id, let c2s, let s2c, let publicKey, let signature):
            w.u32(id)
            w.blob(c2s)
            w.blob(s2c)
            w.blob(publicKey)
            w.blob(signature)
        case .useRelays(let key, let relays, let register, let punch):
            w.blob(key)
            w.list(relays)
            w.bool(register)
            w.bool(punch)
        case .publicListenPort(let port): w.u16(port)
        case .natProbe(let id, let servers):
            w.u32(id)
            w.list(servers)
        case .relayStart(let host, let port, let circuits, let rate, let seconds):
            w.string(host)
            w.u16(port)
            w.u32(circuits)
            w.u64(rate)
            w.u32(seconds)
        case .mapPorts(let id, let gateway, let tcp, let udp):
            w.u32(id)
            w.string(gateway)
            w.u16(tcp)
            w.u16(udp)
        case .dhtStart(let host, let port, let routers, let state):
            w.string(host)
            w.u16(port)
            w.list(routers)
            w.blob(state)
        case .dhtRequest(let id, let operation, let key, let port, let trace):
            w.u32(id)
            w.u8(operation.rawValue)
            w.raw(key)
            w.u16(port)
            w.bool(trace)
        case .dhtReadOnly(let readOnly): w.bool(readOnly)
        case .lanStart(let interfaces): w.list(interfaces)
        case .lanAnnounce(let key, let port, let serving, let families):
            w.raw(key)
            w.u16(port)
            w.bool(serving)
            w.u8(families)
        case .withdraw(let key): w.raw(key)
        }
    }

    public init(type: UInt16, reader: ByteReader) throws {
        var r = reader
        let maxData = IPCLimits.maxData
        switch try Self.tag(type) {
        case .welcome: self = .welcome(version: try r.u16())
        case .ping: self = .ping(nonce: try r.u64())
        case .statusRequest: self = .statusRequest(requestID: try r.u32())
        case .countersRequest: self = .countersRequest(requestID: try r.u32())
        case .shutdown: self = .shutdown
        case .failure: self = .failure(requestID: try r.u32(), code: try r.u16(), message: try r.text())
        case .buildManifest: self = .buildManifest(requestID: try r.u32(), path: try r.text())
        case .openShare:
            self = .openShare(
                requestID: try r.u32(), path: try r.text(), manifest: try r.blob(limit: maxData, what: "manifest"),
                hashedAt: try r.u64())
        case .prepareDownload:
            self = .prepareDownload(
                requestID: try r.u32(), manifest: try r.blob(limit: maxData, what: "manifest"),
                targetDirectory: try r.text(), privateShare: try r.bool())
        case .finalizeDownload: self = .finalizeDownload(requestID: try r.u32())
        case .transferSettings:
            self = .transferSettings(
                requestsInFlight: try r.u16(), maxPeers: try r.u16(), upload: try r.u64(), download: try r.u64(),
                perPeerUpload: try r.u64())
        case .serve:
            self = .serve(
                shareID: try r.raw(ShareID.byteCount), manifest: try r.blob(limit: maxData, what: "manifest"),
                host: try r.string(), port: try r.u16(), partial: try r.bool())
        case .fetch: self = .fetch(shareID: try r.raw(ShareID.byteCount), peers: try r.list(what: "peer list"))
        case .startChunks: self = .startChunks(verified: try r.blob(limit: maxData, what: "bitfield"))
        case .addPeers: self = .addPeers(peers: try r.list(what: "peer list"), nearby: try r.bool())
        case .setLimits: self = .setLimits(upload: try r.u64(), download: try r.u64(), perPeerUpload: try r.u64())
        case .configurePipeline:
            self = .configurePipeline(
                plan: try r.blob(limit: 4096, what: "pipeline"), tagKey: try r.blob(limit: 64, what: "tag key"),
                identityPublicKey: try r.blob(limit: 64, what: "public key"))
        case .sessionKeys:
            self = .sessionKeys(
                requestID: try r.u32(), clientToServer: try r.blob(limit: 32, what: "key"),
                serverToClient: try r.blob(limit: 32, what: "key"),
                publicKey: try r.blob(limit: 32, what: "public key"),
                signature: try r.blob(limit: 64, what: "signature"))
        case .useRelays:
            let key = try r.blob(limit: 32, what: "key")
            self = .useRelays(key: key, relays: try r.list(), register: try r.bool(), punch: try r.bool())
        case .publicListenPort: self = .publicListenPort(port: try r.u16())
        case .natProbe: self = .natProbe(requestID: try r.u32(), servers: try r.list())
        case .relayStart:
            self = .relayStart(
                host: try r.string(), port: try r.u16(), maxCircuits: try r.u32(), maxCircuitRate: try r.u64(),
                circuitSeconds: try r.u32())
        case .mapPorts:
            self = .mapPorts(
                requestID: try r.u32(), gateway: try r.string(), tcpPort: try r.u16(), udpPort: try r.u16())
        case .dhtStart:
            let host = try r.string()
            let port = try r.u16()
            let routers = try r.list(what: "router list")
            self = .dhtStart(host: host, port: port, routers: routers, state: try r.blob(limit: maxData, what: "state"))
        case .dhtRequest:
            let id = try r.u32()
            guard let operation = DHTOperation(rawValue: try r.u8()) else {
                throw DecodeError.invalid("unknown DHT operation")
            }
            self = .dhtRequest(
                requestID: id, operation: operation, key: try r.raw(20), port: try r.u16(), trace: try r.bool())
        case .dhtStateRequest: self = .dhtStateRequest(requestID: try r.u32())
        case .dhtReadOnly: self = .dhtReadOnly(readOnly: try r.bool())
        case .lanStart: self = .lanStart(interfaces: try r.list(what: "interface list"))
        case .lanAnnounce:
            self = .lanAnnounce(key: try r.raw(20), port: try r.u16(), serving: try r.bool(), families: try r.u8())
        case .withdraw: self = .withdraw(key: try r.raw(20))
        }
        try r.expectEnd()
    }
}
