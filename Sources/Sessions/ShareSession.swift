import Foundation
import IPC
import Logging
import NIOCore
import PeerShareCore
import Supervisor
import Traversal

/// `peershare share PATH`: hash the share, print its link, serve it until stopped.
///
/// The session is the supervisor's policy for one share: what each worker is told, and when
/// the link is printed. Chunk reads go from the transfer worker to the hash worker over their
/// data channel, never through here. Loop-confined.
public final class ShareSession: SupervisorDelegate, @unchecked Sendable {
    public let context: SessionContext
    let path: String
    let listen: PeerAddress
    let pipeline: PeerPipeline
    let identity: [UInt8]
    /// Relays to register with: as named (for the link) and resolved (for the transfer worker).
    private(set) var relays: [PeerAddress]
    private(set) var relayAddresses: [String]
    /// `--relay dht`: look for relays in the DHT before printing the link.
    let findRelays: Bool
    /// nat.relay: this share also volunteers as a relay, on this address.
    let volunteerRelay: PeerAddress?
    /// Relays taken from the DHT at most (each is a registration and a name in the link).
    static let relaysFromDHT = 2
    /// Ask the router to forward our ports (NAT-PMP, UPnP): nat.enabled and not --no-nat.
    let mapPorts: Bool
    private var mapped: (ip: String, tcp: UInt16, udp: UInt16, method: String)?
    private var mapRequest: UInt32 = 0
    private var servingPort: UInt16?
    private var dhtPort: UInt16?
    /// What peers' handshakes say they see us at (`ObservedAddresses`).
    private var observed = ObservedAddresses()
    private var manifest: [UInt8]?
    /// A manifest made before (the daemon waking a sleeping share, or restarting), and when
    /// (Unix nanoseconds): the hash worker opens the share with it instead of hashing it again,
    /// unless a file was modified since — then it is hashed again.
    private var knownManifest: (bytes: [UInt8], hashedAt: UInt64)?
    private var shareID: ShareID?
    private var linkPrinted = false
    private var buildRequest: UInt32 = 0

    public init(
        context: SessionContext, path: String, listen: PeerAddress,
        pipeline: PeerPipeline = PeerPipeline(stages: [], secret: nil), identity: [UInt8] = [],
        relays: [PeerAddress] = [], relayAddresses: [String] = [], mapPorts: Bool = false,
        findRelays: Bool = false, volunteerRelay: PeerAddress? = nil,
        knownManifest: (bytes: [UInt8], hashedAt: UInt64)? = nil
    ) {
        self.knownManifest = knownManifest
        self.findRelays = findRelays
        self.volunteerRelay = volunteerRelay
        self.mapPorts = mapPorts
        self.relays = relays
        self.relayAddresses = relayAddresses
        self.pipeline = pipeline
        self.identity = identity
        self.context = context
        self.path = path
        self.listen = listen
        context.supervisor.delegate = self
    }

    public func begin() {
        if let dht {
            dht.onReady = { [self] port in
                dhtPort = UInt16(clamping: port)
                output.status("DHT node listening on UDP \(dht.settings.host):\(port)")
            }
            dht.start()
        }
        supervisor.keyHolder = pipeline.keyHolder(identity: identity)
        if let volunteerRelay {
            supervisor.send(
                .relayStart(
                    host: volunteerRelay.host, port: UInt16(volunteerRelay.port), maxCircuits: 0, maxCircuitRate: 0,
                    circuitSeconds: 3600), to: .nat, tracking: .setup(key: "relay"))
        }
        buildRequest = supervisor.makeRequestID()
        if let knownManifest {
            // The hash worker checks that every file is there, with its size, unmodified.
            supervisor.send(
                .openShare(
                    requestID: buildRequest, path: path, manifest: knownManifest.bytes,
                    hashedAt: knownManifest.hashedAt), to: .hash, tracking: .request)
            return
        }
        hash()
    }

    private func hash() {
        buildRequest = supervisor.makeRequestID()
        output.status("hashing \(path) ...")
        supervisor.send(.buildManifest(requestID: buildRequest, path: path), to: .hash, tracking: .request)
    }

    public func stop(exitCode: Int32) { context.finish(exitCode: exitCode) }

    /// Announces the share's DHT key with our TCP port; the discovery worker re-announces
    /// every 15 minutes, and the supervisor re-sends this if that worker restarts.
    /// An announce that reached no node (the node was still joining: the daemon's shares are
    /// often added the moment it starts) is tried again after 2, 4, 8 … s, `announceAttempts`
    /// times in all; the discovery worker re-announces every 15 minutes after that anyway.
    private func announce(port: UInt16, attempt: Int = 1) {
        guard let dht, let shareID else { return }
        let key = pipeline.dhtKey(for: shareID)
        dht.request(.announce, key: key, port: port, setupKey: "announce") { [self] result in
            switch result {
            case .success(let report) where report.announcedTo > 0:
                output.status("announced in the DHT to \(report.announcedTo) nodes")
            case .success where attempt < ShareSession.announceAttempts:
                supervisor.eventLoop.scheduleTask(in: .seconds(Int64(1) << attempt)) { [self] in
                    announce(port: port, attempt: attempt + 1)
                }
            case .success:
                logger.warning(
                    "DHT announce reached no node (no bootstrap node answered); peers need the link's hints")
            case .failure(let failure):
                logger.warning("DHT announce failed: \(failure)")
            }
        }
    }

    static let announceAttempts = 6

    public func supervisor(_ supervisor: Supervisor, received message: WorkerReport, from role: WorkerRole) {
        if role == .discovery, let dht, dht.handle(message) { return }
        switch message {
        case .hashProgress(_, let done, let total):
            output.progress(done, total, "hashing", nil)
        case .shareOpened(let id) where id == buildRequest && id != 0:
            guard let knownManifest else { return }
            manifestReady(knownManifest.bytes)
        case .failure(let id, _, let text) where id == buildRequest && knownManifest != nil:
            // Changed (or gone) since it was hashed: hash what is there now.
            knownManifest = nil
            output.status("\(text); hashing it again")
            hash()
        case .manifestBuilt(_, let bytes):
            manifestReady(bytes)
        case .serving(let port):
            guard let shareID, let manifest else { return }
            // A restarted transfer worker must come back on the same port: the link names it.
            supervisor.send(
                .serve(shareID: shareID.bytes, manifest: manifest, host: listen.host, port: port, partial: false),
                to: .transfer, tracking: .setup(key: "serve"))
            guard servingPort == nil else { return }
            servingPort = port
            output.serving?(port)
            discoverRelays { [self] in mapThenPrintLink(port: port) }
        case .relayListening(let port):
            guard let volunteerRelay else { return }
            output.status("also relaying for peers that cannot reach each other, on \(volunteerRelay.host):\(port)")
            dht?.request(.announce, key: DHTKey.relays, port: port, setupKey: "relayAnnounce") { _ in }
        case .portMapped(let id, let method, let ip, let tcp, let udp, let lifetime, let note) where id == mapRequest:
            // Nothing forwarded and no public address of our own: the DHT node cannot be
            // reached, so it asks others to keep it out of their tables (BEP 43).
            if dht != nil, method.isEmpty, LocalAddresses.allPrivate() {
                supervisor.send(.dhtReadOnly(readOnly: true), to: .discovery, tracking: .setup(key: "readOnly"))
            }
            if method.isEmpty {
                logger.info("no port mapping: \(note)")
                output.status(
                    "the router maps no ports (\(InertText.make(note))); reachable through relays and hole punching")
            } else {
                let fresh = mapped == nil || mapped?.ip != ip || mapped?.tcp != tcp
                mapped = (ip, tcp, udp, method)
                if fresh {
                    output.status(
                        "\(method): the router forwards \(ip):\(tcp) (TCP) and UDP \(udp) to us for \(lifetime) s")
                }
            }
            printLink()
        case .failure(let id, let code, let text):
            if id == buildRequest || role == .transfer {
                output.error(text)
                stop(exitCode: Int32(code))
            } else {
                logger.error("\(role): \(text)")
            }
        case .listenFailed(let text):
            // A share that cannot listen has nothing to offer.
            output.error(text)
            stop(exitCode: ExitCodes.unavailable)
        case .peerEvent(let text):
            logger.info("\(text)")
        case .observedAddress(let source, let address):
            // Peers' words: printed inert, and believed only when two of them agree.
            logger.info("peer \(source) sees us at \(address)")
            if let sourceIP = try? PeerAddress.parse(source).host, let seen = try? PeerAddress.parse(address),
                let agreed = observed.record(sourceIP: sourceIP, observed: seen)
            {
                output.status("peers see this machine at \(InertText.make(agreed))")
            }
        case .relayRegistered(let relay, let observed):
            output.status("registered with relay \(relay), which sees this machine at \(observed)")
        case .status(_, let text):
            output.status("\(role): \(text)")
        default:
            logger.debug("ignoring \(message.tag) from \(role)")
        }
    }

    /// The manifest is known (hashed, or opened from the daemon's copy): serve it.
    private func manifestReady(_ bytes: [UInt8]) {
        manifest = bytes
        let id = ShareID(manifestBytes: bytes)
        shareID = id
        output.finishProgress()
        // The hash worker checked it as a downloader will; here only its name and size are read.
        if let summary = try? Manifest.summary(of: bytes) {
            output.described?(InertText.make(summary.rootName), summary.totalBytes)
        }
        output.manifest?(bytes)
        // If the hash worker restarts, it must reopen the share without hashing it again.
        supervisor.rememberSetup(
            .openShare(requestID: 0, path: path, manifest: bytes, hashedAt: 0), key: "share", for: .hash)
        // The pipeline needs the share id (an encrypted share's tag comes from it).
        supervisor.send(
            pipeline.configureMessage(shareID: id, identity: identity), to: .transfer,
            tracking: .setup(key: "pipeline"))
        supervisor.send(
            .serve(
                shareID: id.bytes, manifest: bytes, host: listen.host, port: UInt16(listen.port), partial: false),
            to: .transfer, tracking: .setup(key: "serve"))
    }

    /// Ask the router first (briefly): a mapped address is the one a link needs most.
    private func mapThenPrintLink(port: UInt16) {
        if mapPorts, PortMapping.worthAsking(listenHost: listen.host), let gateway = PortMapping.defaultGateway() {
            mapRequest = supervisor.makeRequestID()
            let request = WorkerCommand.mapPorts(
                requestID: mapRequest, gateway: gateway, tcpPort: port, udpPort: dhtPort ?? 0)
            supervisor.send(request, to: .nat, tracking: .setup(key: "map"))
            supervisor.eventLoop.scheduleTask(in: .seconds(PortMapping.linkWaitSeconds)) { [self] in printLink() }
        } else {
            printLink()
        }
    }

    /// `--relay dht`: relays announced in the DHT (`DHTKey.relays`) join the configured
    /// ones, at most `relaysFromDHT`, before the link (which names them) is printed.
    private func discoverRelays(then next: @escaping @Sendable () -> Void) {
        guard findRelays, let dht else { return next() }
        output.status("looking for relays in the DHT ...")
        dht.request(.getPeers, key: DHTKey.relays) { [self] result in
            if case .success(let report) = result {
                relaysFound(report.peers, then: next)
            } else {
                relaysFound([], then: next)
            }
        }
        // The DHT may be slow to join: the link is not held back for long.
        supervisor.eventLoop.scheduleTask(in: .seconds(ShareSession.relayLookupSeconds)) { [self] in
            relaysFound([], then: next)
        }
    }

    private var relayLookupDone = false

    private func relaysFound(_ found: [String], then next: () -> Void) {
        guard !relayLookupDone else { return }
        relayLookupDone = true
        let own = Set(LocalAddresses.hints(listenHost: "0.0.0.0", port: 0).map(\.host))
        let fresh = found.compactMap { try? PeerAddress.parse($0) }
            .filter { !own.contains($0.host) && !relays.contains($0) }.prefix(ShareSession.relaysFromDHT)
        if fresh.isEmpty {
            output.status("no relay found in the DHT")
        } else {
            output.status("relays found in the DHT: \(fresh.map(\.description).joined(separator: ", "))")
            relays += fresh
            relayAddresses += fresh.map(\.description)
        }
        next()
    }

    static let relayLookupSeconds: Int64 = 8

    /// The link, once: the mapped public address first, then this machine's own addresses.
    private func printLink() {
        guard !linkPrinted, let shareID, let port = servingPort else { return }
        linkPrinted = true
        var hints = LocalAddresses.hints(listenHost: listen.host, port: Int(port))
        if let mapped, let address = try? PeerAddress.parse("\(mapped.ip):\(mapped.tcp)") {
            hints = Array(([address] + hints.filter { $0 != address }).prefix(ShareLink.maxPeerHints))
        }
        output.link(ShareLink(shareID: shareID, peers: hints, secret: pipeline.secret, relays: relays).description)
        if pipeline.encrypts {
            output.status("encrypted share: only holders of this link (it carries the key) can fetch it")
        }
        output.status("serving on \(listen.host):\(port); press Ctrl-C to stop")
        // Peers outside reach the port the router forwards; the DHT hears that one. The LAN
        // hears our own port: its peers reach us directly.
        announce(port: mapped?.tcp ?? port)
        if let lan, lan.start() {
            lan.announce(key: pipeline.dhtKey(for: shareID), port: port, listenHost: listen.host, serving: true)
            output.status("announced on the LAN (BEP 14)")
        }
        if !relayAddresses.isEmpty {
            supervisor.send(
                .useRelays(key: pipeline.dhtKey(for: shareID), relays: relayAddresses, register: true, punch: true),
                to: .transfer, tracking: .setup(key: "relays"))
        }
    }

    public func supervisor(_ supervisor: Supervisor, restarted role: WorkerRole) {}

    public func supervisor(_ supervisor: Supervisor, gaveUpOn role: WorkerRole, reason: String) {
        output.error(reason)
        stop(exitCode: ExitCodes.software)
    }
}
