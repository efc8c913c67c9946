import PeerShareCore
import PeerWire
import Wire

/// One share's download from its swarm, as a pure Instance: the transfer worker's
/// `DownloadShell` (and the swarm simulator) feed it events — a peer's connection came up or
/// went down, a message arrived, the hash worker gave a verdict, time passed — and carry out
/// the directives it returns: connect, send, close, hand a piece over for verification,
/// wake me at. It holds no sockets and reads no clock, so every decision (whom to connect
/// to and when to retry, what to request from whom, when a peer has stalled, whom to ban,
/// when to give up) can be driven in a unit test or on a virtual clock, like `DHTNode`.
///
/// What happens on the connection below the swarm — the hello, the pipeline's handshake,
/// encryption — is the shell's; the Instance hears `established` once a peer is past it.
public struct Download: Sendable {
    public typealias PeerID = Int

    public struct Config: Sendable {
        /// Connections open at once; further addresses wait for a free slot.
        public var maxPeers = 50
        /// Requests outstanding per peer until its rate is measured (`RequestDepth`).
        public var initialDepth = 8
        /// Connection attempts per address before it is given up on (about 20 s of retries
        /// with the backoff below: long enough for a restarted peer to come back).
        public var maxAttempts = 8
        /// A peer with requests outstanding that delivers nothing for this long is dropped and
        /// its chunks go to others.
        public var stallTimeout = 20.0
        /// How long the download may sit with chunks that no connected peer has before it fails.
        public var unavailableTimeout = 30.0
        /// Relays come into play when no peer has accepted us this long after the start (at
        /// once with no direct address): a reachable peer never goes through a relay.
        public var relayDelay = 1.0
        /// Download limit in bytes per second (0: none).
        public var downloadRate = 0.0
        public var strategy: PickStrategy = .rarestFirst
        /// Seeds the chunk picker's random choices (replayable in tests and simulations).
        public var seed: UInt64 = 1
        public init() {}
    }

    public enum LogLevel: Sendable, Equatable { case info, warning }

    public enum Directive: Sendable, Equatable {
        /// Open a connection to `address` (a relay route when `relayed`: `address` is then the
        /// relay's) and, once it is up and past its handshake, report `established`.
        case connect(PeerID, address: PeerAddress, viaRelay: Bool)
        case send(PeerMessage, to: PeerID)
        /// Close the connection; `reason` is what the user is told about this peer. The shell
        /// reports `closed` when the connection is gone.
        case close(PeerID, reason: String)
        /// The piece just received from this peer goes to the hash worker to be verified.
        case verify(index: Int, from: PeerID)
        /// The manifest arrived and matches the share id: tell the supervisor.
        /// The manifest checked out; `largestChunk`: the longest chunk it has.
        case manifestVerified(bytes: [UInt8], chunkSize: Int, largestChunk: Int)
        /// Connected peers past their handshake, when that number changes.
        case peerCount(Int)
        /// A chunk was verified: peers we serve hear of it (`have`).
        case announceHave(Int)
        /// Something the user should see about the swarm (a failed chunk, say).
        case event(String)
        case log(LogLevel, String)
        /// Call `tick(now:)` at this time.
        case wake(at: Double)
        /// Every chunk is verified: close every connection.
        case finished
        /// The download cannot go on (exit code and reason for the user).
        case failed(code: UInt16, reason: String)
    }

    struct Peer: Sendable {
        let address: String
        var established = false
        /// From the peer's hello reply: its bitfield and `have`s are checked against it.
        var chunkCount = 0
        /// What the peer has, from its bitfield and `have`s until it joins the scheduler
        /// (which then keeps it); nil until its bitfield.
        var has: ChunkBitfield?
        /// Registered with the scheduler (which needs the manifest and the bitfield).
        var joined = false
        var depth: RequestDepth
        /// Chunks it refused though it claimed them.
        var refusals = 0
    }

    public static let relayPrefix = "relay/"
    /// Peer errors after which asking again is pointless: it would say the same.
    static let permanentErrors: Set<UInt16> = [
        PeerMessage.ErrorCode.unknownShare.rawValue, PeerMessage.ErrorCode.versionMismatch.rawValue,
        PeerMessage.ErrorCode.pipelineMismatch.rawValue,
    ]

    public let shareID: [UInt8]
    public let config: Config
    /// Every address heard of, in order; relay routes are "relay/HOST:PORT".
    public private(set) var addresses: [String] = []
    public private(set) var relayRoutes: [String] = []
    public private(set) var finished = false
    public private(set) var scheduler: ChunkScheduler?
    public private(set) var chunkSize = 0
    /// The share's manifest once it arrived: how long each chunk is.
    public private(set) var manifest: Manifest?
    private var peers: [PeerID: Peer] = [:]
    private var attempts: [String: Int] = [:]
    /// Times each address was dropped for refusing chunks it claimed to have (a seeder whose
    /// file changed since it was hashed, say). Its attempts restart from here, not from zero,
    /// when it next connects: it is retried ever more slowly and then given up on, instead
    /// of every quarter second for ever.
    private var refusedChunks: [String: Int] = [:]
    private var lastError: [String: String] = [:]
    /// Addresses whose chunks failed verification too often: never contacted again.
    public private(set) var bannedAddresses = Set<String>()
    /// Addresses waiting for a free connection slot.
    private var waiting: [String] = []
    private var nextPeerID = 1
    private var haveManifest: Bool { manifest != nil }
    /// Who was asked for the manifest, and when. One peer at first; if it has not delivered
    /// within `stallTimeout`, another is asked as well, and so on: the first genuine one
    /// wins. (A peer that trickles a 16 MiB manifest a byte at a time is never silent long
    /// enough for the connection's idle timeout, and would otherwise hold the download
    /// for ever; one that is merely slow is not cut off, just raced.)
    private var manifestAskedOf: [PeerID: Double] = [:]
    private var reportedPeers = -1
    private var stuckSince: Double?
    private var relaysStarted = false
    private var downloadBucket: TokenBucket

    // Timers, as deadlines: `tick` does what is due, and every entry point asks for a wake
    // at the earliest one still ahead.
    private var retries: [(at: Double, address: String)] = []
    private var relaysAt: Double?
    private var throttledUntil: Double?
    private var nextCheck: Double?
    private var pendingWake: Double?

    public init(shareID: [UInt8], peers: [String], config: Config = .init()) {
        self.shareID = shareID
        self.config = config
        downloadBucket = TokenBucket(rate: config.downloadRate, now: 0)
        for peer in peers where !addresses.contains(peer) { addresses.append(peer) }
    }

    public var verifiedCount: Int { scheduler?.verifiedCount ?? 0 }
    public var chunkCount: Int { scheduler?.chunkCount ?? 0 }
    public var connectedCount: Int { peers.count }
    public var isComplete: Bool { scheduler?.isComplete ?? false }

    public func isVerified(_ index: Int) -> Bool {
        guard let scheduler, index >= 0, index < scheduler.chunkCount else { return false }
        return scheduler.states[index] == .verified
    }

    // MARK: Events

    /// Starts connecting. `relays`: routes known from the start ("HOST:PORT").
    public mutating func start(relays: [String] = [], now: Double) -> [Directive] {
        var out: [Directive] = []
        relayRoutes = relays
        guard !addresses.isEmpty || !relayRoutes.isEmpty else {
            fail(69, "no peers to download from (give --peer HOST:PORT or a link with peer hints)", &out)
            return out
        }
        for address in addresses { connect(address, now: now, &out) }
        nextCheck = now + 1
        if addresses.isEmpty {
            startRelays(now: now, &out)
        } else {
            relaysAt = now + config.relayDelay
        }
        return finish(out)
    }

    /// Relays became known after the start: used at once if no peer has accepted us yet.
    public mutating func relaysKnown(_ relays: [String], now: Double) -> [Directive] {
        var out: [Directive] = []
        relayRoutes = relays
        if !peers.values.contains(where: \.established) { startRelays(now: now, &out) }
        return finish(out)
    }

    /// Peers found later (the supervisor's periodic DHT lookups, the LAN): the new ones are
    /// tried. `nearby` (found on the LAN): when every connection slot is taken, they wait at
    /// the front of the line, ahead of far peers — a LAN peer is preferred over a far one.
    public mutating func peersFound(_ found: [String], nearby: Bool = false, now: Double) -> [Directive] {
        var out: [Directive] = []
        guard !finished else { return out }
        for address in found where !addresses.contains(address) && !bannedAddresses.contains(address) {
            addresses.append(address)
            out.append(.log(.info, nearby ? "new peer \(address) on the LAN" : "new peer \(address)"))
            connect(address, nearby: nearby, now: now, &out)
        }
        return finish(out)
    }

    /// The peer is past its hello and handshake; `chunkCount` is what it says the share has.
    public mutating func established(_ id: PeerID, chunkCount: Int, now: Double) -> [Directive] {
        var out: [Directive] = []
        guard !finished, var peer = peers[id], !peer.established else { return out }
        if let scheduler, scheduler.chunkCount != chunkCount {
            close(id, "claims \(chunkCount) chunks; the share has \(scheduler.chunkCount)", &out)
            return out
        }
        peer.established = true
        peer.chunkCount = chunkCount
        peers[id] = peer
        reportPeerCount(&out)
        if !haveManifest && manifestAskedOf.isEmpty { askForManifest(id, now: now, &out) }
        return finish(out)
    }

    /// A message from an established peer (hello and handshake messages are the shell's).
    public mutating func received(_ message: PeerMessage, from id: PeerID, now: Double) -> [Directive] {
        if case .piece(let index, let data) = message {
            return receivedPiece(index: index, bytes: data.count, from: id, now: now)
        }
        var out: [Directive] = []
        // Scalars only: a copy of the peer would share its bitfield, and the `have` below
        // would then copy the whole bitfield to change one bit.
        guard !finished, let established = peers[id]?.established, let address = peers[id]?.address,
            let chunkCount = peers[id]?.chunkCount
        else { return out }
        // A peer may refuse us (an error) before the handshake; nothing else.
        guard established || message.tag == .error else {
            close(id, "sent \(message.tag) before its handshake finished", &out)
            return out
        }
        switch message {
        case .bitfield(let bits):
            guard peers[id]?.has == nil else { return closing(id, "sent a bitfield out of turn", &out) }
            guard let has = ChunkBitfield(bytes: bits, count: chunkCount) else {
                return closing(id, "sent a bitfield of \(bits.count) bytes for \(chunkCount) chunks", &out)
            }
            peers[id]?.has = has
            // Only a peer whose first message after the whole handshake decoded earns fresh
            // retries: one whose handshake fails every time (a wrong key, an altered
            // handshake) runs out of attempts instead of being retried forever.
            attempts[address] = refusedChunks[address, default: 0]
            join(id, now: now, &out)
        case .have(let index):
            guard peers[id]?.has != nil, Int(index) < chunkCount else {
                return closing(id, "sent have for chunk \(index) of \(chunkCount)", &out)
            }
            if peers[id]?.joined == true {
                scheduler?.peerHas(id, index: Int(index))
                stuckSince = nil
                if scheduler?.haveMayHelp(Int(index)) == true { requestMore(from: id, now: now, &out) }
            } else {
                peers[id]?.has?[Int(index)] = true
            }
        case .manifest(let bytes):
            receivedManifest(bytes, from: id, now: now, &out)
        case .piece: break  // receivedPiece
        case .reject(let index, let reason):
            guard Int(index) < chunkCount else {
                return closing(id, "rejected chunk \(index) of \(chunkCount)", &out)
            }
            scheduler?.pieceRefused(index: Int(index), by: id)
            let refusals = (peers[id]?.refusals ?? 0) + 1
            peers[id]?.refusals = refusals
            out.append(.log(.warning, "peer \(address) refused chunk \(index): \(reason)"))
            if refusals >= 3 {
                refusedChunks[address, default: 0] += 1
                attempts[address] = max(attempts[address, default: 0], refusedChunks[address, default: 0])
                close(id, "refused \(refusals) chunks it claimed to have", &out)
            } else {
                requestMoreFromAll(now: now, &out)
            }
        case .error(let code, let text):
            if Download.permanentErrors.contains(code) { attempts[address] = config.maxAttempts }
            close(id, "error \(code): \(text)", &out)
        default:
            close(id, "unexpected \(message.tag) message", &out)
        }
        return finish(out)
    }

    /// The connection is gone (or never came up: `reason` says why).
    public mutating func closed(_ id: PeerID, reason: String? = nil, now: Double) -> [Directive] {
        var out: [Directive] = []
        guard let peer = peers.removeValue(forKey: id) else { return out }
        if let reason { lastError[peer.address] = reason }
        scheduler?.peerLeft(id)
        manifestAskedOf[id] = nil
        guard !finished else { return out }
        reportPeerCount(&out)
        if !waiting.isEmpty { connect(waiting.removeFirst(), now: now, &out) }
        requestMoreFromAll(now: now, &out)
        if !haveManifest, manifestAskedOf.isEmpty, let other = peerNotAskedForManifest() {
            askForManifest(other, now: now, &out)
        }
        // Try the address again after a pause, unless it has failed too often or was banned.
        let tries = attempts[peer.address, default: 0]
        if tries < config.maxAttempts && !bannedAddresses.contains(peer.address) {
            retries.append((now + 0.25 * Double(1 << min(tries, 4)), peer.address))
        } else {
            checkAlive(now: now, &out)
        }
        return finish(out)
    }

    /// The supervisor found which chunks are already verified on disk (resume): requests begin.
    public mutating func chunksOnDisk(_ verified: [UInt8], now: Double) -> [Directive] {
        var out: [Directive] = []
        guard haveManifest, scheduler == nil, let count = manifest?.chunkCount else { return out }
        scheduler = ChunkScheduler(
            chunkCount: count, verified: ChunkBitfield(bytes: verified, count: count),
            maxInFlightPerPeer: config.initialDepth, seed: config.seed, strategy: config.strategy)
        if scheduler?.isComplete == true {
            complete(&out)
            return out
        }
        for id in peers.keys.sorted() { join(id, now: now, &out) }
        return finish(out)
    }

    /// The hash worker's verdict on a chunk handed over with `verify`.
    public mutating func verdict(index: Int, accepted: Bool, now: Double) -> [Directive] {
        var out: [Directive] = []
        // Mutated in place: a local copy would make the next change to the scheduler copy all
        // of its per-chunk state (a megabyte and more for 100,000 chunks) for every chunk.
        guard let outcome = scheduler?.verificationResult(index: index, accepted: accepted) else { return out }
        switch outcome {
        case .accepted:
            out.append(.announceHave(index))
            if scheduler?.isComplete == true {
                complete(&out)
                return out
            }
        case .rejected:
            out.append(.log(.warning, "chunk \(index) failed verification; requesting it again"))
            out.append(.event("chunk \(index) failed verification; requesting it again"))
        case .rejectedAndBanned(let id):
            if let peer = peers[id] {
                bannedAddresses.insert(peer.address)
                close(
                    id,
                    "banned for the rest of the download: \(ChunkScheduler.strikesBeforeBan) chunks failed verification",
                    &out)
            }
        }
        requestMoreFromAll(now: now, &out)
        return finish(out)
    }

    public mutating func setDownloadRate(_ rate: Double, now: Double) -> [Directive] {
        var out: [Directive] = []
        downloadBucket.setRate(rate, now: now)
        requestMoreFromAll(now: now, &out)
        return finish(out)
    }

    /// Time passed: retries, relays, throttled requests and the once-a-second checks that
    /// are due now.
    public mutating func tick(now: Double) -> [Directive] {
        var out: [Directive] = []
        if let wake = pendingWake, wake <= now + Download.slack { pendingWake = nil }
        guard !finished else { return out }
        let due = retries.filter { $0.at <= now + Download.slack }
        retries.removeAll { $0.at <= now + Download.slack }
        for retry in due { connect(retry.address, now: now, &out) }
        if let at = relaysAt, at <= now + Download.slack {
            relaysAt = nil
            startRelays(now: now, &out)
        }
        if let at = throttledUntil, at <= now + Download.slack {
            throttledUntil = nil
            requestMoreFromAll(now: now, &out)
        }
        if let at = nextCheck, at <= now + Download.slack {
            nextCheck = now + 1
            checkManifest(now: now, &out)
            checkProgress(now: now, &out)
        }
        return finish(out)
    }

    /// Timers may fire a little early on a real clock.
    static let slack = 0.001

    // MARK: Decisions

    /// A piece of `bytes` bytes from an established peer: what `received` does with
    /// `.piece`, for a shell that keeps the bytes where they arrived (the Instance needs only
    /// their count; `verify` tells the shell to hand them to the hash worker).
    public mutating func receivedPiece(index: UInt32, bytes: Int, from id: PeerID, now: Double) -> [Directive] {
        var out: [Directive] = []
        guard !finished, let established = peers[id]?.established else { return out }
        guard established else { return closing(id, "sent piece before its handshake finished", &out) }
        guard scheduler != nil else { return closing(id, "sent a piece before any request", &out) }
        let verdict = scheduler?.pieceArrived(index: Int(index), from: id, now: now) ?? .unexpected
        var cancelled: [PeerID] = []
        if verdict == .verify { cancelled = scheduler?.cancelDuplicates(of: Int(index)) ?? [] }
        peers[id]?.depth.record(bytes: bytes, now: now)
        switch verdict {
        case .unexpected: return closing(id, "sent chunk \(index) it was not asked for", &out)
        case .duplicate: break  // an endgame copy that lost the race
        case .verify: out.append(.verify(index: Int(index), from: id))
        }
        for other in cancelled where peers[other] != nil {
            out.append(.send(.cancel(index: index), to: other))
            requestMore(from: other, now: now, &out)
        }
        requestMore(from: id, now: now, &out)
        return finish(out)
    }

    private mutating func askForManifest(_ id: PeerID, now: Double, _ out: inout [Directive]) {
        manifestAskedOf[id] = now
        out.append(.send(.getManifest, to: id))
    }

    private func peerNotAskedForManifest() -> PeerID? {
        peers.keys.sorted().first { peers[$0]?.established == true && manifestAskedOf[$0] == nil }
    }

    /// Once a second until the manifest is here: if every peer asked has had `stallTimeout`,
    /// ask one more.
    private mutating func checkManifest(now: Double, _ out: inout [Directive]) {
        guard !haveManifest, let latest = manifestAskedOf.values.max(), now - latest >= config.stallTimeout,
            let other = peerNotAskedForManifest()
        else { return }
        let waitingFor = manifestAskedOf.keys.sorted().compactMap { peers[$0]?.address }.joined(separator: ", ")
        out.append(
            .event(
                "no manifest from \(waitingFor) after \(Int(config.stallTimeout)) s; asking \(peers[other]?.address ?? "another peer") as well"
            ))
        askForManifest(other, now: now, &out)
    }

    private mutating func receivedManifest(_ bytes: [UInt8], from id: PeerID, now: Double, _ out: inout [Directive]) {
        // A second peer asked, answering after the first: nothing to do.
        if haveManifest, manifestAskedOf[id] != nil { return }
        guard manifestAskedOf[id] != nil, !haveManifest, let peer = peers[id] else {
            return close(id, "sent a manifest nobody asked for", &out)
        }
        guard ShareID(manifestBytes: bytes).bytes == shareID else {
            manifestAskedOf[id] = nil
            // It would send the same manifest again: never retry it.
            attempts[peer.address] = config.maxAttempts
            return close(id, "sent a manifest that does not match the share id", &out)
        }
        let manifest: Manifest
        do {
            manifest = try Manifest.decode(bytes)
        } catch {
            return fail(65, "the share's manifest is unsafe or malformed: \(error)", &out)
        }
        chunkSize = manifest.chunkSize
        self.manifest = manifest
        for (other, state) in peers.sorted(by: { $0.key < $1.key })
        where state.established && state.chunkCount != manifest.chunkCount {
            close(other, "claims \(state.chunkCount) chunks; the share has \(manifest.chunkCount)", &out)
        }
        out.append(
            .manifestVerified(bytes: bytes, chunkSize: manifest.chunkSize, largestChunk: manifest.largestChunkLength))
    }

    private mutating func connect(_ address: String, nearby: Bool = false, now: Double, _ out: inout [Directive]) {
        guard !finished, !bannedAddresses.contains(address) else { return }
        guard peers.count < config.maxPeers else {
            if !waiting.contains(address) {
                if nearby { waiting.insert(address, at: 0) } else { waiting.append(address) }
            }
            return
        }
        attempts[address, default: 0] += 1
        let viaRelay = address.hasPrefix(Download.relayPrefix)
        let parsed: PeerAddress
        do {
            parsed = try PeerAddress.parse(viaRelay ? String(address.dropFirst(Download.relayPrefix.count)) : address)
        } catch {
            lastError[address] = "\(error)"
            attempts[address] = config.maxAttempts
            return checkAlive(now: now, &out)
        }
        let id = nextPeerID
        nextPeerID += 1
        peers[id] = Peer(address: address, depth: RequestDepth(now: now))
        out.append(.connect(id, address: parsed, viaRelay: viaRelay))
    }

    private mutating func startRelays(now: Double, _ out: inout [Directive]) {
        guard !relaysStarted, !finished, !relayRoutes.isEmpty else { return }
        guard !peers.values.contains(where: \.established) else { return }
        relaysStarted = true
        for relay in relayRoutes {
            let route = Download.relayPrefix + relay
            guard !addresses.contains(route) else { continue }
            addresses.append(route)
            out.append(.log(.info, "no direct connection yet; trying relay \(relay)"))
            connect(route, now: now, &out)
        }
    }

    /// Registers a peer with the scheduler once both exist (after the manifest and the
    /// peer's bitfield), then asks it for chunks.
    private mutating func join(_ id: PeerID, now: Double, _ out: inout [Directive]) {
        guard peers[id]?.joined == false, let has = peers[id]?.has, scheduler != nil else { return }
        peers[id]?.joined = true
        // The scheduler keeps the peer's bitfield from now on.
        peers[id]?.has = ChunkBitfield(count: 0)
        scheduler?.peerJoined(id, has: has, now: now)
        stuckSince = nil
        requestMore(from: id, now: now, &out)
    }

    private mutating func requestMoreFromAll(now: Double, _ out: inout [Directive]) {
        for id in peers.keys.sorted() { requestMore(from: id, now: now, &out) }
    }

    /// Requests from one peer up to its depth. Each request is paid for in download tokens
    /// when it is made: the limit then holds whatever the peers' speeds, and nothing waits
    /// in buffers.
    private mutating func requestMore(from id: PeerID, now: Double, _ out: inout [Directive]) {
        guard !finished, chunkSize > 0, let depth = peers[id]?.depth, peers[id]?.joined == true, scheduler != nil
        else { return }
        // Depth counts chunks of the share's typical length: a folder of small files has
        // chunks far shorter than the chunk size, and needs more of them in flight.
        let typicalLength = manifest.map { Int($0.totalBytes / UInt64(max(1, $0.chunkCount))) } ?? chunkSize
        scheduler?.setDepth(id, depth.depth(chunkSize: max(1, typicalLength), initial: config.initialDepth))
        while true {
            if !downloadBucket.isUnlimited {
                let wait = downloadBucket.waitTime(now: now)
                if wait > 0 {
                    if throttledUntil == nil { throttledUntil = now + wait }
                    break
                }
            }
            guard let index = scheduler?.nextRequests(for: id, max: 1, now: now).first else { break }
            // Paid for at its real length (the bucket may go into debt by one chunk); with
            // no limit there is nothing to pay, and no length to look up.
            if !downloadBucket.isUnlimited {
                downloadBucket.charge(manifest?.location(ofChunk: index).length ?? chunkSize, now: now)
            }
            out.append(.send(.request(index: UInt32(index)), to: id))
        }
    }

    /// Once a second: drop peers that stopped answering, and give up if the chunks still
    /// missing are held by no connected peer for too long.
    private mutating func checkProgress(now: Double, _ out: inout [Directive]) {
        guard let scheduler, !scheduler.isComplete else { return }
        for id in scheduler.stalledPeers(now: now, timeout: config.stallTimeout) where peers[id] != nil {
            close(
                id,
                "delivered nothing for \(Int(config.stallTimeout)) s with \(scheduler.outstanding(for: id)) requests outstanding; asking others",
                &out)
        }
        let unavailable = scheduler.unavailableIndices
        let busy = scheduler.states.contains { state in
            switch state {
            case .requested, .verifying: return true
            case .missing, .verified: return false
            }
        }
        let everyoneAnswered = peers.values.allSatisfy(\.joined)
        guard !unavailable.isEmpty, !busy, everyoneAnswered, !peers.isEmpty else {
            stuckSince = nil
            return
        }
        let since = stuckSince ?? now
        stuckSince = since
        if now - since >= config.unavailableTimeout {
            fail(
                69,
                "none of the \(peers.count) connected peers has \(unavailable.count) chunks of the share (\(Download.list(unavailable))) and no other peer is known",
                &out)
        }
    }

    /// Fails the download when no peer is connected and none is left to try.
    private mutating func checkAlive(now: Double, _ out: inout [Directive]) {
        guard !finished, peers.isEmpty else { return }
        let pending = addresses.filter {
            attempts[$0, default: 0] < config.maxAttempts && !bannedAddresses.contains($0)
        }
        if pending.isEmpty && !relaysStarted && !relayRoutes.isEmpty {
            return startRelays(now: now, &out)
        }
        guard pending.isEmpty else { return }
        let reasons = addresses.map { "\($0) (\(lastError[$0] ?? "unknown error"))" }.joined(separator: ", ")
        var missing = ""
        if let indices = scheduler?.missingIndices, !indices.isEmpty {
            missing = " \(indices.count) chunks missing: \(Download.list(indices))."
        }
        fail(69, "could not reach any peer that has the share: \(reasons).\(missing)", &out)
    }

    private static func list(_ indices: [Int]) -> String {
        indices.prefix(10).map(String.init).joined(separator: ", ") + (indices.count > 10 ? ", ..." : "")
    }

    private mutating func reportPeerCount(_ out: inout [Directive]) {
        let count = peers.values.filter(\.established).count
        guard count != reportedPeers else { return }
        reportedPeers = count
        out.append(.peerCount(count))
    }

    private mutating func close(_ id: PeerID, _ reason: String, _ out: inout [Directive]) {
        if let peer = peers[id] { lastError[peer.address] = reason }
        out.append(.close(id, reason: reason))
    }

    /// `close`, then return the directives (for early exits from `received`).
    private mutating func closing(_ id: PeerID, _ reason: String, _ out: inout [Directive]) -> [Directive] {
        close(id, reason, &out)
        return out
    }

    private mutating func fail(_ code: UInt16, _ reason: String, _ out: inout [Directive]) {
        guard !finished else { return }
        finished = true
        out.append(.failed(code: code, reason: reason))
    }

    private mutating func complete(_ out: inout [Directive]) {
        finished = true
        out.append(.log(.info, "all chunks verified; closing connections to peers"))
        out.append(.finished)
    }

    /// Ends every entry point: asks for a wake at the earliest deadline ahead, unless one at
    /// or before it is already pending.
    /// Runs after every event, pieces and `have`s included: no allocation here.
    private mutating func finish(_ directives: [Directive]) -> [Directive] {
        var out = directives
        guard !finished else { return out }
        var earliest = min(relaysAt ?? .infinity, throttledUntil ?? .infinity, nextCheck ?? .infinity)
        for retry in retries { earliest = min(earliest, retry.at) }
        guard earliest < .infinity else { return out }
        if let pending = pendingWake, pending <= earliest { return out }
        pendingWake = earliest
        out.append(.wake(at: earliest))
        return out
    }
}
