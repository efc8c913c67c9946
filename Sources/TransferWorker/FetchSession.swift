import IPC
import Logging
import NIOCore
import NIOPosix
import PeerShareCore
import PeerWire
import Swarm
import Traversal
import Wire
import WorkerRuntime

/// Downloads one share from the peers it was given: connects to each, fetches the manifest
/// from the first that answers, then spreads chunk requests over every connected peer using
/// `ChunkScheduler`. Loop-confined, like everything in the transfer worker (hence
/// `@unchecked Sendable`: NIO's callbacks for its connections run on that same loop).
final class FetchSession: @unchecked Sendable {
    /// Connection attempts per peer address before it is given up on (about 20 s of retries,
    /// long enough for a restarted peer to come back).
    static let maxAttempts = 8
    /// A peer with requests outstanding that delivers nothing for this long is dropped and its
    /// chunks go to others.
    static let stallTimeout = 20.0
    /// How long the download may sit with chunks that no connected peer has before it fails.
    static let unavailableTimeout = 30.0

    /// Loop-confined with its session.
    final class PeerConnection: @unchecked Sendable {
        let id: Int
        let address: String
        /// What our hello named the share by (a fresh tag per connection when encrypted).
        var helloID: [UInt8] = []
        var channel: Channel?
        var accepted = false
        var refusals = 0
        /// From `helloAccepted`: the bitfield and `have` indices are checked against it.
        var chunkCount = 0
        /// What the peer has, from its bitfield and `have` messages; nil until the bitfield.
        var has: ChunkBitfield?
        /// Registered with the scheduler (which needs the manifest and the bitfield).
        var joined = false
        var depth: RequestDepth
        let codec: WireCodec
        /// How the connection reached the peer ("direct", "relayed via HOST:PORT"), and when
        /// the attempt began: both are said once the peer accepts.
        var path = "direct"
        let startedAt: Double
        init(id: Int, address: String, now: Double, pipeline: PipelineSetup) {
            self.id = id
            self.address = address
            self.startedAt = now
            self.depth = RequestDepth(now: now)
            self.codec = WireCodec(setup: pipeline, role: .client)
        }
    }

    let service: TransferService
    let shareID: [UInt8]
    private(set) var addresses: [String]
    var logger: Logger { service.logger }

    private var attempts: [String: Int] = [:]
    private var lastError: [String: String] = [:]
    /// Addresses whose chunks failed verification too often: never contacted again.
    private var bannedAddresses = Set<String>()
    private var connections: [Int: PeerConnection] = [:]
    /// Addresses waiting for a free connection slot (`limits.maxPeers`).
    private var waiting: [String] = []
    private var nextPeerID = 1
    private var manifest: Manifest?
    private var manifestRequestedFrom: Int?
    private var scheduler: ChunkScheduler?
    private var finished = false
    private var reportedPeers = -1
    private var stuckSince: Double?
    private var ticking = false

    init(service: TransferService, shareID: [UInt8], peers: [String]) {
        self.service = service
        self.shareID = shareID
        self.addresses = []
        for peer in peers where !addresses.contains(peer) { addresses.append(peer) }
    }

    var statusLine: String {
        let verified = scheduler?.verifiedCount ?? 0
        return "fetching: \(connections.count) peers, \(verified)/\(manifest?.chunkCount ?? 0) chunks verified"
    }

    func isVerified(_ index: Int) -> Bool {
        guard let scheduler, index >= 0, index < scheduler.chunkCount else { return false }
        return scheduler.states[index] == .verified
    }

    /// Tells the supervisor how many peers are connected, when that changes.
    private func reportPeerCount() {
        let count = connections.values.filter(\.accepted).count
        guard count != reportedPeers else { return }
        reportedPeers = count
        service.tell(.peerCount(count: UInt16(clamping: count)))
    }

    func start() {
        guard !addresses.isEmpty || !service.relayRoutes.isEmpty else {
            return failAll(code: 69, "no peers to download from (give --peer HOST:PORT or a link with peer hints)")
        }
        for address in addresses { connect(address) }
        startTicking()
        if addresses.isEmpty {
            startRelays()
        } else {
            service.loop.scheduleTask(in: FetchSession.relayDelay) { [self] in startRelays() }
        }
    }

    /// Peers found later (the supervisor's periodic DHT lookups): connect to the new ones.
    func add(peers: [String]) {
        guard !finished else { return }
        for address in peers where !addresses.contains(address) && !bannedAddresses.contains(address) {
            addresses.append(address)
            logger.info("new peer \(address)")
            connect(address)
        }
    }

    func limitsChanged() { requestMoreFromAll() }

    private func connect(_ address: String) {
        guard !finished, !bannedAddresses.contains(address) else { return }
        guard connections.count < service.maxPeers else {
            if !waiting.contains(address) { waiting.append(address) }
            return
        }
        attempts[address, default: 0] += 1
        let connection = PeerConnection(id: nextPeerID, address: address, now: service.now, pipeline: service.pipeline)
        if let manifest { connection.codec.decodeLimit = manifest.chunkSize + 64 }
        nextPeerID += 1
        connections[connection.id] = connection
        // A relay route: a rendezvous through the relay (`Rendezvous`): punched, reversed, or
        // bridged by the relay when neither works.
        let relay = address.hasPrefix(FetchSession.relayPrefix)
        let parsed: PeerAddress
        do {
            parsed = try PeerAddress.parse(relay ? String(address.dropFirst(FetchSession.relayPrefix.count)) : address)
        } catch {
            lastError[address] = "\(error)"
            attempts[address] = FetchSession.maxAttempts
            connections[connection.id] = nil
            return checkAlive()
        }
        if relay {
            guard let key = service.relayKey else {
                connections[connection.id] = nil
                return
            }
            connection.path = "via relay \(parsed)"
            let rendezvous = Rendezvous(session: self, connection: connection, relay: parsed, key: key)
            rendezvousByPeer[connection.id] = rendezvous
            rendezvous.start()
            return
        }
        ClientBootstrap(group: service.group)
            .channelOption(ChannelOptions.recvAllocator, value: ChunkTrafficReads.allocator)
            .connectTimeout(.seconds(5))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture { try addFetchHandlers(to: channel, for: connection) }
            }
            .connect(host: parsed.host, port: parsed.port)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel): attached(connection, channel: channel)
                case .failure(let error):
                    lastError[address] = "\(error)"
                    logger.info("cannot reach \(address): \(error)")
                    connectionClosed(peerID: connection.id)
                }
            }
    }

    /// The downloader's side of the peer protocol on a connection, however it was made.
    func addFetchHandlers(to channel: Channel, for connection: PeerConnection) throws {
        try channel.pipeline.syncOperations.addHandlers([
            IdleStateHandler(readTimeout: .seconds(30)),
            FrameChannelDecoder.handler(maxFrameLength: PeerMessage.maxFrameLength),
            MessageToByteHandler(FrameChannelEncoder()),
            FetchHandler(session: self, peerID: connection.id),
        ])
    }

    /// A connection to the peer is ready (direct, punched, reversed or relayed): say hello.
    func attached(_ connection: PeerConnection, channel: Channel) {
        guard connections[connection.id] === connection else {
            channel.close(promise: nil)
            return
        }
        connection.channel = channel
        greet(connection)
    }

    /// Rendezvous through relays, by peer id, and those introduced, by circuit (a seeder's
    /// reverse connection names its circuit).
    private var rendezvousByPeer: [Int: Rendezvous] = [:]
    private var rendezvousByCircuit: [[UInt8]: Rendezvous] = [:]

    func rendezvousIntroduced(_ rendezvous: Rendezvous) {
        if let circuit = rendezvous.circuit { rendezvousByCircuit[circuit] = rendezvous }
    }

    func rendezvousFailed(_ connection: PeerConnection, reason: String) {
        guard connections[connection.id] === connection, connection.channel == nil else { return }
        lastError[connection.address] = reason
        logger.info("\(connection.address): \(reason)")
        connectionClosed(peerID: connection.id)
    }

    /// A seeder dialled our listener for a circuit we asked a relay for (a reverse
    /// connection); the channel carries the downloader's handlers from now on.
    func reverseArrived(circuit: [UInt8], channel: Channel) -> Bool {
        guard let rendezvous = rendezvousByCircuit[circuit], connections[rendezvous.connection.id] != nil else {
            return false
        }
        rendezvous.adopt(channel, path: "reversed", reversed: true)
        return true
    }

    static let relayPrefix = "relay/"

    private func greet(_ connection: PeerConnection) {
        connection.helloID = service.pipeline.helloID(for: shareID)
        // Through a relay the far end is the relay: nothing to tell the seeder then.
        let relayed = connection.path.hasPrefix("relayed")
        send(
            .hello(
                version: PeerMessage.version, shareID: connection.helloID, stages: service.pipeline.descriptors,
                observed: relayed ? nil : connection.channel?.remoteAddress?.wireAddress),
            to: connection)
    }

    /// Relays come into play when no peer has accepted us directly a little while after the
    /// start (or at once, with no direct address at all): a reachable peer never goes
    /// through a relay.
    static let relayDelay: TimeAmount = .seconds(1)
    private var relaysStarted = false

    /// Relays arrived after the start (the supervisor resolved them late): use them if no
    /// peer has accepted us yet.
    func startRelaysIfStuck() {
        if !connections.values.contains(where: \.accepted) { startRelays() }
    }

    func startRelays() {
        guard !relaysStarted, !finished, !service.relayRoutes.isEmpty else { return }
        guard !connections.values.contains(where: \.accepted) else { return }
        relaysStarted = true
        for relay in service.relayRoutes {
            let route = FetchSession.relayPrefix + relay
            guard !addresses.contains(route) else { continue }
            addresses.append(route)
            logger.info("no direct connection yet; trying relay \(relay)")
            connect(route)
        }
    }

    private func send(_ message: PeerMessage, to connection: PeerConnection) {
        do {
            connection.channel?.writeAndFlush(try connection.codec.frame(message), promise: nil)
        } catch {
            service.reportPluginFailure(connection.codec)
            drop(connection, reason: "\(error)")
        }
    }

    private func drop(_ connection: PeerConnection, reason: String) {
        logger.warning("peer \(connection.address): \(reason); disconnecting")
        lastError[connection.address] = reason
        service.tell(.peerEvent(text: "peer \(connection.address): \(reason)"))
        connection.channel?.close(promise: nil)
    }

    // MARK: Events from connections

    func received(_ frame: Frame, from peerID: Int) {
        guard let connection = connections[peerID], !finished else { return }
        let message: PeerMessage
        do {
            message = try connection.codec.message(from: frame)
        } catch {
            service.reportPluginFailure(connection.codec)
            return drop(connection, reason: "\(error)")
        }
        if connection.codec.awaitingHandshake, message.tag != .stageHandshake, message.tag != .error {
            return drop(connection, reason: "sent \(message.tag) before the encryption handshake finished")
        }
        switch message {
        case .helloAccepted(let version, let chunkCount, let stages, let observed):
            if let observed, !connection.path.hasPrefix("relayed") {
                service.tell(.observedAddress(source: connection.address, address: observed.description))
            }
            guard version == PeerMessage.version, !connection.accepted else {
                return drop(connection, reason: "unexpected handshake reply")
            }
            if let manifest, manifest.chunkCount != Int(chunkCount) {
                return drop(connection, reason: "claims \(chunkCount) chunks; the share has \(manifest.chunkCount)")
            }
            let ours = service.pipeline.descriptors
            let context =
                connection.helloID + StageDescriptor.encoded(ours) + StageDescriptor.encoded(stages)
            do {
                for message in try connection.codec.agree(remote: stages, context: context) {
                    send(.stageHandshake(stage: message.stage, data: message.data), to: connection)
                }
            } catch {
                return drop(connection, reason: "\(error)")
            }
            connection.accepted = true
            connection.chunkCount = Int(chunkCount)
            if !connection.codec.awaitingHandshake { established(connection) }
        case .stageHandshake(let stage, let data):
            guard connection.accepted, connection.codec.awaitingHandshake else {
                return drop(connection, reason: "sent a handshake message out of turn")
            }
            do {
                for reply in try connection.codec.handshake(stage: stage, data) {
                    send(.stageHandshake(stage: reply.stage, data: reply.data), to: connection)
                }
            } catch {
                service.reportPluginFailure(connection.codec)
                return drop(connection, reason: "\(error)")
            }
            if !connection.codec.awaitingHandshake {
                logger.info(
                    "peer \(connection.address): encrypted; its peer id is \(connection.codec.remotePeerID ?? "?")")
                established(connection)
            }
        case .bitfield(let bits):
            guard connection.accepted, connection.has == nil else {
                return drop(connection, reason: "sent a bitfield out of turn")
            }
            guard let has = ChunkBitfield(bytes: bits, count: connection.chunkCount) else {
                return drop(
                    connection,
                    reason: "sent a bitfield of \(bits.count) bytes for \(connection.chunkCount) chunks")
            }
            connection.has = has
            // Only a peer whose first message after the whole handshake decoded earns fresh
            // retries: one whose handshake or frames fail every time (a wrong key, an altered
            // handshake) runs out of attempts instead of being retried forever.
            attempts[connection.address] = 0
            join(connection)
        case .have(let index):
            guard connection.accepted, var has = connection.has, Int(index) < connection.chunkCount else {
                return drop(connection, reason: "sent have for chunk \(index) of \(connection.chunkCount)")
            }
            has[Int(index)] = true
            connection.has = has
            if connection.joined {
                scheduler?.peerHas(connection.id, index: Int(index))
                stuckSince = nil
                if scheduler?.haveMayHelp(Int(index)) == true { requestMore(from: connection) }
            }
        case .manifest(let bytes):
            guard manifestRequestedFrom == peerID, manifest == nil else {
                return drop(connection, reason: "sent a manifest nobody asked for")
            }
            guard ShareID(manifestBytes: bytes).bytes == shareID else {
                manifestRequestedFrom = nil
                // It would send the same manifest again: never retry it.
                attempts[connection.address] = FetchSession.maxAttempts
                return drop(connection, reason: "sent a manifest that does not match the share id")
            }
            do {
                manifest = try Manifest.decode(bytes)
            } catch {
                return failAll(code: 65, "the share's manifest is unsafe or malformed: \(error)")
            }
            for other in connections.values { other.codec.decodeLimit = (manifest?.chunkSize ?? 0) + 64 }
            for other in connections.values where other.accepted && other.chunkCount != manifest?.chunkCount {
                drop(other, reason: "claims \(other.chunkCount) chunks; the share has \(manifest?.chunkCount ?? 0)")
            }
            service.tell(.manifestReceived(manifest: bytes))
        case .piece(let index, let data):
            guard var scheduler else { return drop(connection, reason: "sent a piece before any request") }
            let now = service.now
            let verdict = scheduler.pieceArrived(index: Int(index), from: peerID, now: now)
            var cancelled: [Int] = []
            if verdict == .verify { cancelled = scheduler.cancelDuplicates(of: Int(index)) }
            self.scheduler = scheduler
            connection.depth.record(bytes: data.count, now: now)
            switch verdict {
            case .unexpected: return drop(connection, reason: "sent chunk \(index) it was not asked for")
            case .duplicate: break  // an endgame copy that lost the race
            case .verify: service.store(index: index, data: data, from: connection.address)
            }
            for id in cancelled {
                guard let other = connections[id] else { continue }
                send(.cancel(index: index), to: other)
                requestMore(from: other)
            }
            requestMore(from: connection)
        case .reject(let index, let reason):
            guard Int(index) < connection.chunkCount else {
                return drop(connection, reason: "rejected chunk \(index) of \(connection.chunkCount)")
            }
            scheduler?.pieceRefused(index: Int(index), by: peerID)
            connection.refusals += 1
            logger.warning("peer \(connection.address) refused chunk \(index): \(reason)")
            if connection.refusals >= 3 {
                drop(connection, reason: "refused \(connection.refusals) chunks it claimed to have")
            } else {
                requestMoreFromAll()
            }
        case .error(let code, let text):
            // The peer will say the same next time: do not retry it.
            let permanent: [PeerMessage.ErrorCode] = [.unknownShare, .versionMismatch, .pipelineMismatch]
            if let known = PeerMessage.ErrorCode(rawValue: code), permanent.contains(known) {
                attempts[connection.address] = FetchSession.maxAttempts
            }
            drop(connection, reason: "error \(code): \(text)")
        default:
            drop(connection, reason: "unexpected \(message.tag) message")
        }
    }

    /// Past the hello and any stage handshake: count the peer, and ask the first for the manifest.
    private func established(_ connection: PeerConnection) {
        reportPeerCount()
        let milliseconds = Int((service.now - connection.startedAt) * 1000)
        logger.info("connected to \(connection.address), \(connection.path), in \(milliseconds) ms")
        service.tell(
            .peerEvent(text: "peer \(connection.address): connected, \(connection.path), in \(milliseconds) ms"))
        if manifest == nil && manifestRequestedFrom == nil {
            manifestRequestedFrom = connection.id
            send(.getManifest, to: connection)
        }
    }

    /// Registers a peer with the scheduler once both the scheduler (after the manifest) and
    /// the peer's bitfield exist, then asks it for chunks.
    private func join(_ connection: PeerConnection) {
        guard !connection.joined, let has = connection.has, scheduler != nil else { return }
        connection.joined = true
        scheduler?.peerJoined(connection.id, has: has, now: service.now)
        stuckSince = nil
        requestMore(from: connection)
    }

    /// A framing or socket error on a connection: say which peer and why, then drop it.
    func connectionError(peerID: Int, _ error: Error) {
        guard let connection = connections[peerID] else { return }
        drop(connection, reason: "\(error)")
    }

    func connectionClosed(peerID: Int) {
        guard let connection = connections.removeValue(forKey: peerID) else { return }
        if let rendezvous = rendezvousByPeer.removeValue(forKey: peerID), let circuit = rendezvous.circuit {
            rendezvousByCircuit[circuit] = nil
        }
        connection.codec.close()
        scheduler?.peerLeft(peerID)
        if !finished { reportPeerCount() }
        if manifestRequestedFrom == peerID && manifest == nil { manifestRequestedFrom = nil }
        guard !finished else { return }
        if !waiting.isEmpty { connect(waiting.removeFirst()) }
        requestMoreFromAll()
        if manifest == nil, manifestRequestedFrom == nil,
            let other = connections.values.first(where: { $0.accepted && !$0.codec.awaitingHandshake })
        {
            manifestRequestedFrom = other.id
            send(.getManifest, to: other)
        }
        // Try the address again after a pause, unless it has failed too often or was banned.
        let address = connection.address
        let tries = attempts[address, default: 0]
        if tries < FetchSession.maxAttempts && !bannedAddresses.contains(address) {
            let delay = Int64(250 << min(tries, 4))
            service.loop.scheduleTask(in: .milliseconds(delay)) { [self] in connect(address) }
        } else {
            checkAlive()
        }
    }

    /// Fails the download when no peer is connected and none is left to try.
    private func checkAlive() {
        guard !finished, connections.isEmpty else { return }
        let pending = addresses.filter {
            attempts[$0, default: 0] < FetchSession.maxAttempts && !bannedAddresses.contains($0)
        }
        if pending.isEmpty && !relaysStarted && !service.relayRoutes.isEmpty {
            return startRelays()
        }
        if pending.isEmpty {
            let reasons = addresses.map { "\($0) (\(lastError[$0] ?? "unknown error"))" }.joined(separator: ", ")
            failAll(code: 69, "could not reach any peer that has the share: \(reasons).\(missingText())")
        }
    }

    private func missingText() -> String {
        guard let indices = scheduler?.missingIndices, !indices.isEmpty else { return "" }
        let shown = indices.prefix(10).map(String.init).joined(separator: ", ")
        return " \(indices.count) chunks missing: \(shown)\(indices.count > 10 ? ", ..." : "")."
    }

    private func failAll(code: UInt16, _ reason: String) {
        guard !finished else { return }
        finished = true
        service.tell(.fetchFailed(code: code, reason: reason))
        for connection in connections.values { connection.channel?.close(promise: nil) }
    }

    /// Once a second: drop peers that stopped answering, and give up if the chunks still
    /// missing are held by no connected peer for too long.
    private func startTicking() {
        guard !ticking else { return }
        ticking = true
        service.loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [weak self] task in
            guard let self, !self.finished else { return task.cancel() }
            self.tick()
        }
    }

    private func tick() {
        guard let scheduler, !scheduler.isComplete else { return }
        let now = service.now
        for id in scheduler.stalledPeers(now: now, timeout: FetchSession.stallTimeout) {
            if let connection = connections[id] {
                drop(
                    connection,
                    reason:
                        "delivered nothing for \(Int(FetchSession.stallTimeout)) s with \(scheduler.outstanding(for: id)) requests outstanding; asking others"
                )
            }
        }
        let unavailable = scheduler.unavailableIndices
        let busy = scheduler.states.contains { state in
            if case .requested = state { return true }
            if case .verifying = state { return true }
            return false
        }
        let everyoneAnswered = connections.values.allSatisfy { $0.joined }
        guard !unavailable.isEmpty, !busy, everyoneAnswered, !connections.isEmpty else {
            stuckSince = nil
            return
        }
        let since = stuckSince ?? now
        stuckSince = since
        if now - since >= FetchSession.unavailableTimeout {
            let shown = unavailable.prefix(10).map(String.init).joined(separator: ", ")
            failAll(
                code: 69,
                "none of the \(connections.count) connected peers has \(unavailable.count) chunks of the share (\(shown)\(unavailable.count > 10 ? ", ..." : "")) and no other peer is known"
            )
        }
    }

    // MARK: Events from the supervisor

    func start(verified: [UInt8]) {
        guard let manifest, scheduler == nil else { return }
        let bitfield = ChunkBitfield(bytes: verified, count: manifest.chunkCount)
        scheduler = ChunkScheduler(
            chunkCount: manifest.chunkCount, verified: bitfield, maxInFlightPerPeer: service.requestsInFlight,
            seed: UInt64(truncatingIfNeeded: shareID.prefix(8).reduce(0) { $0 << 8 | Int($1) }) ^ UInt64(getpid()))
        if scheduler?.isComplete == true { return finish() }
        for connection in connections.values.sorted(by: { $0.id < $1.id }) { join(connection) }
    }

    func verdict(index: Int, accepted: Bool) {
        guard var scheduler else { return }
        let outcome = scheduler.verificationResult(index: index, accepted: accepted)
        self.scheduler = scheduler
        switch outcome {
        case .accepted:
            service.announceHave(index)
            if scheduler.isComplete { return finish() }
        case .rejected:
            logger.warning("chunk \(index) failed verification; requesting it again")
            service.tell(.peerEvent(text: "chunk \(index) failed verification; requesting it again"))
        case .rejectedAndBanned(let peer):
            if let connection = connections[peer] {
                bannedAddresses.insert(connection.address)
                drop(
                    connection,
                    reason:
                        "banned for the rest of the download: \(ChunkScheduler.strikesBeforeBan) chunks failed verification"
                )
            }
        }
        requestMoreFromAll()
    }

    private func finish() {
        finished = true
        logger.info("all chunks verified; closing connections to peers")
        for connection in connections.values { connection.channel?.close(promise: nil) }
    }

    private func requestMoreFromAll() {
        for connection in connections.values.sorted(by: { $0.id < $1.id }) { requestMore(from: connection) }
    }

    private func requestMore(from connection: PeerConnection) {
        guard connection.joined, scheduler != nil, !finished, let manifest else { return }
        scheduler?.setDepth(
            connection.id, connection.depth.depth(chunkSize: manifest.chunkSize, initial: service.requestsInFlight))
        var sent = false
        // One request at a time, each paid for in download tokens when it is made: the
        // limit then holds whatever the peers' speeds, and nothing waits in our buffers.
        while true {
            if !service.downloadBucket.isUnlimited {
                let wait = service.downloadBucket.take(manifest.chunkSize, now: service.now)
                if wait > 0 {
                    scheduleThrottledRequests(after: wait)
                    break
                }
            }
            guard let index = scheduler?.nextRequests(for: connection.id, max: 1, now: service.now).first else {
                // Tokens taken for nothing go back by being owed no more: refund the chunk.
                if !service.downloadBucket.isUnlimited { service.downloadBucket.refund(manifest.chunkSize) }
                break
            }
            do {
                connection.channel?.write(try connection.codec.frame(.request(index: UInt32(index))), promise: nil)
            } catch {
                service.reportPluginFailure(connection.codec)
                drop(connection, reason: "\(error)")
                break
            }
            sent = true
        }
        if sent { connection.channel?.flush() }
    }

    private var throttleScheduled = false

    private func scheduleThrottledRequests(after seconds: Double) {
        guard !throttleScheduled else { return }
        throttleScheduled = true
        service.loop.scheduleTask(in: .microseconds(Int64(seconds * 1e6))) { [self] in
            throttleScheduled = false
            requestMoreFromAll()
        }
    }
}

/// The downloader's end of one peer connection.
final class FetchHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    let session: FetchSession
    let peerID: Int

    init(session: FetchSession, peerID: Int) {
        self.session = session
        self.peerID = peerID
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        session.received(unwrapInboundIn(data), from: peerID)
    }

    func channelInactive(context: ChannelHandlerContext) {
        session.connectionClosed(peerID: peerID)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        session.connectionError(peerID: peerID, error)
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            session.logger.warning("peer sent nothing for 30 s; disconnecting")
            context.close(promise: nil)
        }
    }
}
