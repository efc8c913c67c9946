import Foundation
import IPC
import Logging
import NIOCore
import PeerShareCore
import Supervisor
import Traversal
import Wire

/// `peershare get LINK`: the supervisor's side of a download. The transfer worker fetches
/// the manifest; the hash worker prepares the staging file; then chunks go from the transfer
/// worker to the hash worker over their own data channel, and this session hears only the
/// verdicts (`chunkStored`) — it never touches chunk data. Finishes when the hash worker has
/// moved the share into place (or, with `seedAfter`, keeps serving it until stopped).
///
/// While downloading it also serves the chunks verified so far (`listen`), announces itself
/// in the DHT once it holds any, and looks up the DHT again now and then for new peers.
public final class DownloadSession: SupervisorDelegate, @unchecked Sendable {
    public let context: SessionContext
    let link: ShareLink
    let peers: [PeerAddress]
    let targetDirectory: String
    /// Where to serve verified chunks to other downloaders; nil: do not serve.
    let listen: PeerAddress?
    /// Keep serving the finished share until Ctrl-C.
    let seedAfter: Bool
    /// Show peer events (bans, rejected chunks, disconnect reasons) as status lines.
    let verbose: Bool
    let pipeline: PeerPipeline
    let identity: [UInt8]
    /// The link's relays, resolved: the way to the seeders when no direct path works.
    let relayAddresses: [String]
    /// Ask the router to forward our listening port (so seeders behind NAT can dial back).
    let mapPorts: Bool
    /// nat.punch: try hole punching and reverse connections before a relay's bridge.
    let punch: Bool
    private var mapRequest: UInt32 = 0
    private var servingPort: UInt16?
    /// "serving verified chunks" was said (the port may be known earlier, from listenEarly).
    private var servingSaid = false
    /// The download is done and `--seed` keeps serving it: every chunk, from its final place.
    private var seeding = false
    private var announced = false
    private var knownPeers: Set<String> = []
    /// Chunks and bytes verified per peer address, for the closing summary.
    private var perPeer: [String: (chunks: Int, bytes: UInt64)] = [:]
    /// Seconds between DHT lookups for more peers while downloading.
    static let peerRefreshSeconds: Int64 = 15
    /// What peers' handshakes say they see us at (`ObservedAddresses`).
    private var observed = ObservedAddresses()
    private var manifest: Manifest?
    /// The manifest's total, once: it is a sum over every file, and progress wants it per chunk.
    private var totalBytes: UInt64 = 0
    private var manifestBytes: [UInt8]?
    private var verified: ChunkBitfield?
    private var started = false
    private var finalizing = false
    private var finished = false
    private var verifiedBytes: UInt64 = 0
    /// Bytes received from peers in this run, good or bad: what resuming saves is visible here.
    private var fetchedBytes: UInt64 = 0
    private var connectedPeers = 0
    private var rejected = 0

    public init(
        context: SessionContext, link: ShareLink, peers: [PeerAddress], targetDirectory: String,
        listen: PeerAddress? = nil, seedAfter: Bool = false,
        verbose: Bool = false, pipeline: PeerPipeline = PeerPipeline(stages: [], secret: nil), identity: [UInt8] = [],
        relayAddresses: [String] = [], mapPorts: Bool = false, punch: Bool = true
    ) {
        self.punch = punch
        self.relayAddresses = relayAddresses
        self.mapPorts = mapPorts
        self.pipeline = pipeline
        self.identity = identity
        self.listen = listen
        self.seedAfter = seedAfter
        self.verbose = verbose
        self.context = context
        self.link = link
        self.peers = peers
        self.targetDirectory = targetDirectory
        context.supervisor.delegate = self
    }

    public func begin() {
        supervisor.keyHolder = pipeline.keyHolder(identity: identity)
        supervisor.send(
            pipeline.configureMessage(shareID: link.shareID, identity: identity), to: .transfer,
            tracking: .setup(key: "pipeline"))
        if !relayAddresses.isEmpty {
            listenEarly()
            supervisor.send(
                .useRelays(
                    key: pipeline.dhtKey(for: link.shareID), relays: relayAddresses, register: false, punch: punch),
                to: .transfer, tracking: .setup(key: "relays"))
        }
        let onLAN = lan?.start() ?? false
        if onLAN { lan?.announce(key: pipeline.dhtKey(for: link.shareID), port: 0, listenHost: "", serving: false) }
        if let dht {
            dht.start()
            if peers.isEmpty {
                output.status("looking for \(link.shareID.short) in the DHT")
                findPeers(in: dht, attempt: 1)
                // The link's relays reach the sharer whatever the DHT finds.
                if !relayAddresses.isEmpty { fetch(from: []) }
                return
            }
            // Peers are known already; the DHT may know more, found in the background.
            scheduleRefresh(dht)
        } else if peers.isEmpty, relayAddresses.isEmpty, onLAN {
            output.status("looking for \(link.shareID.short) on the LAN")
            supervisor.eventLoop.scheduleTask(in: .seconds(DownloadSession.lanWaitSeconds)) { [self] in
                guard !fetching, !finished else { return }
                output.error("no peer on the LAN announced this share within \(DownloadSession.lanWaitSeconds) s")
                stop(exitCode: ExitCodes.unavailable)
            }
            return
        }
        fetch(from: peers.map(\.description))
    }

    /// How long a download with nothing but the LAN to go on waits for an announce.
    static let lanWaitSeconds: Int64 = 10

    /// A peer on the LAN announced the share (BEP 14): it is fetched from at once, ahead of
    /// whatever the DHT finds later — the LAN is the fast path.
    private func lanPeer(_ address: String) {
        guard !isSelf(address), !knownPeers.contains(address), !finished, !finalizing else { return }
        output.status("found a peer on the LAN at \(InertText.make(address))")
        fetch(from: [address], nearby: true)
    }

    private var fetching = false

    /// `nearby`: found on the LAN, preferred over far peers.
    private func fetch(from peers: [String], nearby: Bool = false) {
        if fetching {
            // Already fetching (through relays, say): these are more peers for it.
            let fresh = peers.filter { !knownPeers.contains($0) }
            knownPeers.formUnion(fresh)
            if !fresh.isEmpty { supervisor.send(.addPeers(peers: fresh, nearby: nearby), to: .transfer) }
            return
        }
        fetching = true
        knownPeers.formUnion(peers)
        let through = peers.isEmpty ? "through its relays" : "at \(peers.joined(separator: ", "))"
        output.status("looking for \(link.shareID.short) \(through)")
        supervisor.send(
            .fetch(shareID: link.shareID.bytes, peers: peers), to: .transfer, tracking: .setup(key: "fetch"))
    }

    /// Our own listening address as the DHT would list it: not a peer to connect to.
    private func isSelf(_ address: String) -> Bool {
        guard let servingPort, let parsed = try? PeerAddress.parse(address), parsed.port == Int(servingPort) else {
            return false
        }
        let local = LocalAddresses.hints(listenHost: "0.0.0.0", port: Int(servingPort)).map(\.host)
        return local.contains(parsed.host) || parsed.host == listen?.host
    }

    /// While downloading, asks the DHT again now and then: peers that joined after we started
    /// (other downloaders that announced what they hold) are added to the swarm.
    private func scheduleRefresh(_ dht: DHTClient) {
        supervisor.eventLoop.scheduleTask(in: .seconds(DownloadSession.peerRefreshSeconds)) { [self] in
            guard !finished, !finalizing else { return }
            dht.request(.getPeers, key: pipeline.dhtKey(for: link.shareID)) { [self] result in
                guard !finished else { return }
                if case .success(let report) = result {
                    let fresh = report.peers.filter { !knownPeers.contains($0) && !isSelf($0) }
                    if !fresh.isEmpty {
                        knownPeers.formUnion(fresh)
                        logger.info("the DHT knows \(fresh.count) new peers")
                        supervisor.send(
                            .addPeers(peers: Array(fresh.prefix(FetchLimits.maxFetchPeers)), nearby: false),
                            to: .transfer)
                    }
                }
                scheduleRefresh(dht)
            }
        }
    }

    /// Announces our serving port under the share's key once we hold a verified chunk.
    private func announceIfReady() {
        guard !announced, let dht, let servingPort, (verified?.setCount ?? 0) > 0 else { return }
        announced = true
        dht.request(.announce, key: pipeline.dhtKey(for: link.shareID), port: servingPort, setupKey: "announce") {
            [logger] result in
            if case .success(let report) = result {
                logger.info("announced to \(report.announcedTo) DHT nodes")
            }
        }
    }

    /// get_peers on the share's key; a freshly started node may need a few tries while its
    /// routing table fills.
    static let dhtAttempts = 5

    private func findPeers(in dht: DHTClient, attempt: Int) {
        dht.request(.getPeers, key: pipeline.dhtKey(for: link.shareID)) { [self] result in
            guard !finished else { return }
            switch result {
            case .success(let report) where !report.peers.isEmpty:
                output.status(
                    "the DHT knows \(report.peers.count) peers for this share (\(report.hops) hops, \(report.queries) queries)"
                )
                fetch(from: Array(report.peers.prefix(FetchLimits.maxFetchPeers)))
                scheduleRefresh(dht)
            case .success, .failure:
                if case .failure(let failure) = result { logger.warning("DHT lookup failed: \(failure)") }
                guard attempt < DownloadSession.dhtAttempts else {
                    // Relays or the LAN gave us a way already.
                    if !relayAddresses.isEmpty || fetching { return }
                    output.error(
                        "no peers for this share in the DHT after \(attempt) lookups; ask for a link with peer hints or use --peer"
                    )
                    return stop(exitCode: ExitCodes.unavailable)
                }
                supervisor.eventLoop.scheduleTask(in: .seconds(Int64(attempt))) { [self] in
                    findPeers(in: dht, attempt: attempt + 1)
                }
            }
        }
    }

    public func stop(exitCode: Int32) {
        guard !finished else { return }
        finished = true
        output.finishProgress()
        context.finish(exitCode: exitCode)
    }

    public func supervisor(_ supervisor: Supervisor, received message: WorkerReport, from role: WorkerRole) {
        guard !finished else { return }
        if role == .discovery, let dht, dht.handle(message) { return }
        switch message {
        case .manifestReceived(let bytes):
            guard ShareID(manifestBytes: bytes) == link.shareID else {
                output.error("the transfer worker passed on a manifest that does not match the link")
                return stop(exitCode: ExitCodes.dataError)
            }
            if let verified, started {
                // A restarted transfer worker: tell it what is already done, and to serve
                // the manifest it has fetched again.
                supervisor.send(.startChunks(verified: verified.bytes), to: .transfer)
                if !seeding { startServing() }
                return
            }
            guard manifestBytes == nil else { return }
            manifestBytes = bytes
            output.manifest?(bytes)
            do {
                let decoded = try Manifest.decode(bytes)
                manifest = decoded
                totalBytes = decoded.totalBytes
                output.status(
                    "found '\(decoded.rootName)': \(formatBytes(decoded.totalBytes)) in \(decoded.chunkCount) chunks (manifest: \(bytes.count) bytes)"
                )
                output.described?(decoded.rootName, decoded.totalBytes)
            } catch {
                output.error("the share's manifest is unsafe or malformed: \(error)")
                return stop(exitCode: ExitCodes.dataError)
            }
            supervisor.send(
                .prepareDownload(
                    requestID: supervisor.makeRequestID(), manifest: bytes, targetDirectory: targetDirectory,
                    privateShare: pipeline.encrypts),
                to: .hash, tracking: .setup(key: "download"))
        case .downloadPrepared(_, let bits):
            guard let manifest, let incoming = ChunkBitfield(bytes: bits, count: manifest.chunkCount) else { return }
            var merged = verified ?? ChunkBitfield(count: manifest.chunkCount)
            for index in 0..<manifest.chunkCount where incoming[index] && !merged[index] {
                merged[index] = true
                verifiedBytes += UInt64(manifest.chunkLocations[index].length)
            }
            verified = merged
            if !started {
                started = true
                if merged.isComplete {
                    output.status("'\(manifest.rootName)' is already here, and every chunk verifies: nothing to fetch")
                } else if merged.setCount > 0 {
                    output.status(
                        "\(merged.setCount) of \(manifest.chunkCount) chunks already on disk; fetching the rest")
                }
                supervisor.send(.startChunks(verified: merged.bytes), to: .transfer)
                startServing()
            }
            finalizeIfComplete()
        case .chunkStored(let index, let ok, let bytes, let source):
            // The transfer worker passed the chunk to the hash worker over their data
            // channel; this is the verdict.
            fetchedBytes += UInt64(bytes)
            guard let manifest, verified != nil, Int(index) < manifest.chunkCount else { return }
            if ok && verified?[Int(index)] == false {
                // Set in place: a copy of the bitfield here would cost a copy of all of it
                // per chunk (100,000 chunks: a gigabyte of copying).
                verified?[Int(index)] = true
                let length = UInt64(manifest.chunkLocations[Int(index)].length)
                verifiedBytes += length
                let counts = perPeer[source] ?? (0, 0)
                perPeer[source] = (counts.chunks + 1, counts.bytes + length)
                output.verifiedFrom?(source, length)
                announceIfReady()
            } else if !ok {
                rejected += 1
            }
            output.progress(verifiedBytes, totalBytes, "downloading", connectedPeers)
            finalizeIfComplete()
        case .downloadFinalized(_, let path):
            output.finishProgress()
            var note = ""
            if rejected > 0 { note = " (\(rejected) corrupt chunks were rejected and fetched again)" }
            for (peer, counts) in perPeer.sorted(by: { $0.value.bytes > $1.value.bytes }) {
                output.status("from \(peer): \(counts.chunks) chunks, \(formatBytes(counts.bytes))")
            }
            output.link("verified and saved: \(path)\(note); fetched \(fetchedBytes) bytes from peers in this run")
            output.completed?(path)
            if seedAfter, let servingPort, let manifestBytes, let listen {
                seeding = true
                // From now on this is a seeder: a restarted transfer worker must serve every
                // chunk, and must not start the finished download again.
                supervisor.forgetSetup(key: "fetch", for: .transfer)
                supervisor.rememberSetup(
                    .serve(
                        shareID: link.shareID.bytes, manifest: manifestBytes, host: listen.host, port: servingPort,
                        partial: false), key: "serve", for: .transfer)
                supervisor.forgetSetup(key: "download", for: .hash)
                supervisor.rememberSetup(
                    .openShare(requestID: 0, path: path, manifest: manifestBytes, hashedAt: 0), key: "share", for: .hash
                )
                output.status("seeding on port \(servingPort); press Ctrl-C to stop")
                return
            }
            stop(exitCode: ExitCodes.ok)
        case .listenFailed(let text) where servingPort == nil:
            // Serving others is a courtesy: the download goes on without it.
            output.status("not serving chunks to other peers: \(text)")
            supervisor.forgetSetup(key: "serve", for: .transfer)
        case .listenFailed(let text):
            output.error(text)
            stop(exitCode: ExitCodes.unavailable)
        case .failure(_, let code, let text):
            if Int32(code) == ExitCodes.ioError, manifestBytes != nil {
                // A full disk, a folder gone read-only: what was verified stays in the
                // staging folder, and resuming picks it up. One line, so that the daemon,
                // which keeps an item's last line as its note, keeps the cause with it.
                output.error("\(text); the chunks verified so far are kept: once that is fixed, \(output.resumeHint)")
            } else {
                output.error(text)
            }
            stop(exitCode: Int32(code))
        case .fetchFailed(let code, let reason):
            output.error(reason)
            stop(exitCode: Int32(code))
        case .peerEvent(let text):
            logger.info("\(text)")
            output.peerEvent?(text)
            if verbose { output.status(text) }
        case .serving(let port):
            guard let listen else { return }
            if mapRequest == 0, mapPorts, PortMapping.worthAsking(listenHost: listen.host),
                let gateway = PortMapping.defaultGateway()
            {
                mapRequest = supervisor.makeRequestID()
                supervisor.send(
                    .mapPorts(requestID: mapRequest, gateway: gateway, tcpPort: port, udpPort: 0), to: .nat,
                    tracking: .setup(key: "map"))
            }
            guard let manifestBytes else {
                // Listening before the manifest (for reverse connections through relays):
                // a restarted transfer worker listens on the same port again.
                servingPort = servingPort ?? port
                supervisor.rememberSetup(
                    .serve(shareID: link.shareID.bytes, manifest: [], host: listen.host, port: port, partial: true),
                    key: "serve", for: .transfer)
                return
            }
            // A restarted transfer worker comes back on the same port (the DHT lists it).
            // While downloading, it serves the manifest it fetched (none is sent).
            supervisor.send(
                .serve(
                    shareID: link.shareID.bytes, manifest: seeding ? manifestBytes : [], host: listen.host, port: port,
                    partial: !seeding),
                to: .transfer, tracking: .setup(key: "serve"))
            if !servingSaid {
                servingSaid = true
                servingPort = port
                output.serving?(port)
                output.status("serving verified chunks to other peers on \(listen.host):\(port)")
                announceIfReady()
                // Other downloaders on the LAN may fetch from us too.
                lan?.announce(
                    key: pipeline.dhtKey(for: link.shareID), port: port, listenHost: listen.host, serving: false)
            }
        case .lanPeer(let key, let address) where key == pipeline.dhtKey(for: link.shareID):
            lanPeer(address)
        case .observedAddress(let source, let address):
            // Peers' words: printed inert, and believed only when two of them agree.
            logger.info("peer \(source) sees us at \(address)")
            if let sourceIP = try? PeerAddress.parse(source).host, let seen = try? PeerAddress.parse(address),
                let agreed = observed.record(sourceIP: sourceIP, observed: seen)
            {
                output.status("peers see this machine at \(InertText.make(agreed))")
            }
        case .portMapped(let id, let method, let ip, let tcp, _, _, let note) where id == mapRequest:
            // Nothing forwarded and no public address of our own: the DHT node cannot be
            // reached, so it asks others to keep it out of their tables (BEP 43).
            if dht != nil, method.isEmpty, LocalAddresses.allPrivate() {
                supervisor.send(.dhtReadOnly(readOnly: true), to: .discovery, tracking: .setup(key: "readOnly"))
            }
            if method.isEmpty {
                logger.info("no port mapping: \(note)")
            } else {
                logger.info("\(method): the router forwards \(ip):\(tcp) to our listening port")
                supervisor.send(.publicListenPort(port: tcp), to: .transfer, tracking: .setup(key: "publicPort"))
            }
        case .status(_, let text):
            output.status("\(role): \(text)")
        case .peerCount(let count):
            connectedPeers = Int(count)
        default:
            logger.debug("ignoring \(message.tag) from \(role)")
        }
    }

    /// Offers the chunks verified so far to other downloaders: the transfer worker serves the
    /// manifest it fetched, so none is sent (6.5 MB for a share of 100,000 files).
    private func startServing() {
        guard let listen, manifestBytes != nil else { return }
        supervisor.send(
            .serve(
                shareID: link.shareID.bytes, manifest: [], host: listen.host,
                port: servingPort ?? UInt16(listen.port), partial: true),
            to: .transfer, tracking: .setup(key: "serve"))
    }

    /// With relays in play, listen before the manifest arrives: a seeder the relay
    /// introduces may then connect to us (a reverse connection).
    private func listenEarly() {
        guard let listen, !relayAddresses.isEmpty else { return }
        supervisor.send(
            .serve(
                shareID: link.shareID.bytes, manifest: [], host: listen.host, port: UInt16(listen.port),
                partial: true),
            to: .transfer, tracking: .setup(key: "serve"))
    }

    private func finalizeIfComplete() {
        guard let verified, verified.isComplete, !finalizing else { return }
        finalizing = true
        supervisor.send(.finalizeDownload(requestID: supervisor.makeRequestID()), to: .hash, tracking: .request)
        reportServing()
    }

    /// What this download served to other downloaders while it ran, and how much of it went
    /// straight from memory (chunks verified moments before, still in the chunk pool) rather
    /// than read back from disk. Said once, while the files are flushed.
    private func reportServing() {
        supervisor.collectCounters(timeoutMs: 500).whenSuccess { [output] counters in
            let transfer = Dictionary(
                (counters[.transfer] ?? []).map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
            guard let sent = transfer["pieces_sent"], sent > 0 else { return }
            let fromPool = transfer["chunks_served_from_pool"] ?? 0
            let bytes = transfer["bytes_sent"] ?? 0
            output.status(
                "served \(sent) chunks (\(formatBytes(bytes))) to other peers, \(fromPool) of them from memory")
        }
    }

    public func supervisor(_ supervisor: Supervisor, restarted role: WorkerRole) {}

    public func supervisor(_ supervisor: Supervisor, gaveUpOn role: WorkerRole, reason: String) {
        output.error(reason)
        stop(exitCode: ExitCodes.software)
    }
}

public func formatBytes(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}
