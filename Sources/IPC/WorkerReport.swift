import PeerShareCore
import Wire

/// Everything a worker tells the supervisor on its pipe. The other direction is
/// `WorkerCommand`; which role may send which report is `WorkerRole.mayEmit`.
public enum WorkerReport: ChannelMessage {
    // Lifecycle, every worker.
    /// The worker's first word, and only once (`WorkerLifecycle` checks).
    case hello(version: UInt16, role: WorkerRole, pid: Int32)
    case pong(nonce: UInt64)
    case status(requestID: UInt32, text: String)
    case failure(requestID: UInt32, code: UInt16, message: String)
    /// The answer to `countersRequest`: named totals since the worker started (a restarted
    /// worker starts again from zero). Names are `[a-z_]`, at most 256 of them.
    case counters(requestID: UInt32, values: [WorkerCounter])

    // Hash worker.
    case hashProgress(requestID: UInt32, bytesDone: UInt64, bytesTotal: UInt64)
    case manifestBuilt(requestID: UInt32, manifest: [UInt8])
    case shareOpened(requestID: UInt32)
    case downloadPrepared(requestID: UInt32, verified: [UInt8])
    case downloadFinalized(requestID: UInt32, path: String)

    // Transfer worker.
    case serving(port: UInt16)
    /// The listening socket could not be opened. A `share` cannot go on; a `get` downloads
    /// without serving others.
    case listenFailed(reason: String)
    case manifestReceived(manifest: [UInt8])
    /// The hash worker's verdict on a chunk from `peer` (`bytes` long), passed on by the
    /// transfer worker, which sent the chunk to the hash worker over their data channel.
    case chunkStored(index: UInt32, accepted: Bool, bytes: UInt32, peer: String)
    case peerEvent(text: String)
    case fetchFailed(code: UInt16, reason: String)
    /// The number of peers the downloader is connected to, sent when it changes.
    case peerCount(count: UInt16)
    /// A plugin stage hung or answered garbage: the supervisor restarts it.
    case pluginFailed(name: String, reason: String)
    /// In an encryption handshake, the connection's keys and our signature are asked of the
    /// supervisor (`HandshakeKeyHolder`): role 0 client, 1 server; the X25519 shared secret
    /// and the transcript hash, 32 bytes each. Each transcript is answered once.
    case sessionKeysRequest(requestID: UInt32, role: UInt8, sharedSecret: [UInt8], transcript: [UInt8])
    /// A relay accepted our registration and saw us at `observed`.
    case relayRegistered(relay: String, observed: String)
    /// A peer (at `source`) said in its handshake which address it sees us at.
    case observedAddress(source: String, address: String)

    // NAT worker.
    /// `observed`: one `SERVER MAPPED` line per server that answered; `mapping`: `MappingKind`.
    case natReport(requestID: UInt32, observed: [String], mapping: UInt8, localPort: UInt16)
    case relayListening(port: UInt16)
    /// What the router granted (`method` "NAT-PMP" or "UPnP"), or `method` empty and why not.
    case portMapped(
        requestID: UInt32, method: String, externalIP: String, tcpPort: UInt16, udpPort: UInt16, lifetime: UInt32,
        note: String)

    // Discovery worker.
    case dhtReady(port: UInt16, nodeID: [UInt8])
    case dhtTrace(requestID: UInt32, line: String)
    case dhtResult(requestID: UInt32, report: DHTReport)
    case dhtState(requestID: UInt32, state: [UInt8], summary: String)
    /// A peer on the LAN announced this share key (BEP 14) at "IP:PORT" or "[IPv6]:PORT".
    case lanPeer(key: [UInt8], address: String)

    public enum Tag: UInt16, CaseIterable, Sendable {
        case hello = 0x0001
        case pong = 0x0004
        case status = 0x0006
        case failure = 0x0008
        case counters = 0x000A
        case hashProgress = 0x0101
        case manifestBuilt = 0x0102
        case shareOpened = 0x0104
        case downloadPrepared = 0x0108
        case downloadFinalized = 0x010C
        case serving = 0x0201
        case manifestReceived = 0x0203
        case chunkStored = 0x0205
        // 0x0206 is retired (chunkResult, from when chunk data went through the supervisor).
        case peerEvent = 0x0207
        case fetchFailed = 0x0208
        case peerCount = 0x0209
        case pluginFailed = 0x020D
        case sessionKeysRequest = 0x020E
        case relayRegistered = 0x0211
        case observedAddress = 0x0212
        case listenFailed = 0x0213
        case dhtReady = 0x0301
        case dhtTrace = 0x0303
        case dhtResult = 0x0304
        case dhtState = 0x0306
        case lanPeer = 0x030A
        case natReport = 0x0401
        case relayListening = 0x0403
        case portMapped = 0x0405
    }

    public var tag: Tag {
        switch self {
        case .hello: return .hello
        case .pong: return .pong
        case .status: return .status
        case .failure: return .failure
        case .counters: return .counters
        case .hashProgress: return .hashProgress
        case .manifestBuilt: return .manifestBuilt
        case .shareOpened: return .shareOpened
        case .downloadPrepared: return .downloadPrepared
        case .downloadFinalized: return .downloadFinalized
        case .serving: return .serving
        case .listenFailed: return .listenFailed
        case .manifestReceived: return .manifestReceived
        case .chunkStored: return .chunkStored
        case .peerEvent: return .peerEvent
        case .fetchFailed: return .fetchFailed
        case .peerCount: return .peerCount
        case .pluginFailed: return .pluginFailed
        case .sessionKeysRequest: return .sessionKeysRequest
        case .relayRegistered: return .relayRegistered
        case .observedAddress: return .observedAddress
        case .natReport: return .natReport
        case .relayListening: return .relayListening
        case .portMapped: return .portMapped
        case .dhtReady: return .dhtReady
        case .dhtTrace: return .dhtTrace
        case .dhtResult: return .dhtResult
        case .dhtState: return .dhtState
        case .lanPeer: return .lanPeer
        }
    }

    /// The request this report answers, if any.
    public var requestID: UInt32? {
        switch self {
        case .status(let id, _), .failure(let id, _, _), .counters(let id, _), .hashProgress(let id, _, _),
            .manifestBuilt(let id, _),
            .shareOpened(let id), .downloadPrepared(let id, _), .downloadFinalized(let id, _),
            .sessionKeysRequest(let id, _, _, _), .natReport(let id, _, _, _), .portMapped(let id, _, _, _, _, _, _),
            .dhtTrace(let id, _), .dhtResult(let id, _), .dhtState(let id, _, _):
            return id
        default:
            return nil
        }
    }

    public var payloadSizeHint: Int {
        switch self {
        case .manifestBuilt(_, let m), .manifestReceived(let m), .downloadPrepared(_, let m): return m.count + 300
        default: return 64
        }
    }

    public func writePayload(into w: inout ByteWriter) {
        switch self {
        case .hello(let version, let role, let pid):
            w.u16(version)
            w.u8(role.code)
            w.u32(UInt32(bitPattern: pid))
        case .pong(let nonce): w.u64(nonce)
        case .counters(let id, let values):
            w.u32(id)
            let kept = values.prefix(WorkerCounter.maxCount)
            w.u16(UInt16(kept.count))
            for counter in kept {
                w.string(counter.name)
                w.u64(counter.value)
            }
        case .status(let id, let text), .downloadFinalized(let id, let text), .dhtTrace(let id, let text):
            w.u32(id)
            w.text(text)
        case .failure(let id, let code, let text):
            w.u32(id)
            w.u16(code)
            w.text(text)
        case .hashProgress(let id, let done, let total):
            w.u32(id)
            w.u64(done)
            w.u64(total)
        case .manifestBuilt(let id, let bytes), .downloadPrepared(let id, let bytes):
            w.u32(id)
            w.blob(bytes)
        case .shareOpened(let id): w.u32(id)
        case .serving(let port), .relayListening(let port): w.u16(port)
        case .listenFailed(let reason): w.string(reason)
        case .manifestReceived(let manifest): w.blob(manifest)
        case .chunkStored(let index, let accepted, let bytes, let peer):
            w.u32(index)
            w.bool(accepted)
            w.u32(bytes)
            w.string(peer)
        case .peerEvent(let text): w.text(text)
        case .fetchFailed(let code, let text):
            w.u16(code)
            w.text(text)
        case .peerCount(let count): w.u16(count)
        case .pluginFailed(let name, let reason):
            w.string(name)
            w.text(reason)
        case .sessionKeysRequest(let id, let role, let shared, let transcript):
            w.u32(id)
            w.u8(role)
            w.blob(shared)
            w.blob(transcript)
        case .relayRegistered(let one, let two), .observedAddress(let one, let two):
            w.string(one)
            w.string(two)
        case .natReport(let id, let observed, let mapping, let localPort):
            w.u32(id)
            w.list(observed)
            w.u8(mapping)
            w.u16(localPort)
        case .portMapped(let id, let method, let ip, let tcp, let udp, let lifetime, let note):
            w.u32(id)
            w.string(method)
            w.string(ip)
            w.u16(tcp)
            w.u16(udp)
            w.u32(lifetime)
            w.text(note)
        case .dhtReady(let port, let nodeID):
            w.u16(port)
            w.raw(nodeID)
        case .dhtResult(let id, let report):
            w.u32(id)
            report.write(into: &w)
        case .dhtState(let id, let state, let summary):
            w.u32(id)
            w.blob(state)
            w.text(summary)
        case .lanPeer(let key, let address):
            w.raw(key)
            w.string(address)
        }
    }

    public init(type: UInt16, reader: ByteReader) throws {
        var r = reader
        let maxData = IPCLimits.maxData
        switch try Self.tag(type) {
        case .hello:
            let version = try r.u16()
            guard let role = WorkerRole(code: try r.u8()) else { throw DecodeError.invalid("unknown worker role") }
            self = .hello(version: version, role: role, pid: Int32(bitPattern: try r.u32()))
        case .pong: self = .pong(nonce: try r.u64())
        case .counters:
            let id = try r.u32()
            let count = Int(try r.u16())
            guard count <= WorkerCounter.maxCount else {
                throw DecodeError.tooLarge(what: "counters", length: count, limit: WorkerCounter.maxCount)
            }
            var values: [WorkerCounter] = []
            for _ in 0..<count {
                let name = try r.string()
                guard WorkerCounter.isValidName(name) else { throw DecodeError.invalid("bad counter name") }
                values.append(WorkerCounter(name, try r.u64()))
            }
            self = .counters(requestID: id, values: values)
        case .status: self = .status(requestID: try r.u32(), text: try r.text())
        case .failure: self = .failure(requestID: try r.u32(), code: try r.u16(), message: try r.text())
        case .hashProgress:
            self = .hashProgress(requestID: try r.u32(), bytesDone: try r.u64(), bytesTotal: try r.u64())
        case .manifestBuilt:
            self = .manifestBuilt(requestID: try r.u32(), manifest: try r.blob(limit: maxData, what: "manifest"))
        case .shareOpened: self = .shareOpened(requestID: try r.u32())
        case .downloadPrepared:
            self = .downloadPrepared(requestID: try r.u32(), verified: try r.blob(limit: maxData, what: "bitfield"))
        case .downloadFinalized: self = .downloadFinalized(requestID: try r.u32(), path: try r.text())
        case .serving: self = .serving(port: try r.u16())
        case .listenFailed: self = .listenFailed(reason: try r.string())
        case .manifestReceived: self = .manifestReceived(manifest: try r.blob(limit: maxData, what: "manifest"))
        case .chunkStored:
            self = .chunkStored(index: try r.u32(), accepted: try r.bool(), bytes: try r.u32(), peer: try r.string())
        case .peerEvent: self = .peerEvent(text: try r.text())
        case .fetchFailed: self = .fetchFailed(code: try r.u16(), reason: try r.text())
        case .peerCount: self = .peerCount(count: try r.u16())
        case .pluginFailed: self = .pluginFailed(name: try r.string(), reason: try r.text())
        case .sessionKeysRequest:
            self = .sessionKeysRequest(
                requestID: try r.u32(), role: try r.u8(), sharedSecret: try r.blob(limit: 32, what: "shared secret"),
                transcript: try r.blob(limit: 32, what: "transcript"))
        case .relayRegistered: self = .relayRegistered(relay: try r.string(), observed: try r.string())
        case .observedAddress: self = .observedAddress(source: try r.string(), address: try r.string())
        case .natReport:
            self = .natReport(
                requestID: try r.u32(), observed: try r.list(), mapping: try r.u8(), localPort: try r.u16())
        case .relayListening: self = .relayListening(port: try r.u16())
        case .portMapped:
            self = .portMapped(
                requestID: try r.u32(), method: try r.string(), externalIP: try r.string(), tcpPort: try r.u16(),
                udpPort: try r.u16(), lifetime: try r.u32(), note: try r.text())
        case .dhtReady: self = .dhtReady(port: try r.u16(), nodeID: try r.raw(20))
        case .dhtTrace: self = .dhtTrace(requestID: try r.u32(), line: try r.text())
        case .dhtResult: self = .dhtResult(requestID: try r.u32(), report: try DHTReport(reader: &r))
        case .dhtState:
            self = .dhtState(
                requestID: try r.u32(), state: try r.blob(limit: maxData, what: "state"), summary: try r.text())
        case .lanPeer: self = .lanPeer(key: try r.raw(20), address: try r.string())
        }
        try r.expectEnd()
    }
}

/// One named total a worker keeps (`WorkerReport.counters`).
public struct WorkerCounter: Equatable, Sendable {
    public var name: String
    public var value: UInt64
    public static let maxCount = 256

    public init(_ name: String, _ value: UInt64) {
        self.name = name
        self.value = value
    }

    /// 1 to 64 characters of `a-z`, `0-9` and `_`, starting with a letter: a name a worker
    /// sends ends up in the metrics text, so it is checked, not trusted.
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.utf8.first, (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first),
            name.utf8.count <= 64
        else { return false }
        return name.utf8.allSatisfy {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
                || $0 == UInt8(ascii: "_")
        }
    }
}
