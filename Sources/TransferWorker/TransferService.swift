import Foundation
import IPC
import Logging
import NIOCore
import NIOPosix
import PeerShareCore
import PeerWire
import Stages
import Swarm
import Traversal
import Wire
import WorkerRuntime

/// The transfer worker: every peer connection lives here, and nothing else. It never opens a
/// file: chunks to serve come from the hash worker over their data channel (`readChunk`), and
/// chunks downloaded go to it the same way (`writeChunk`) to be verified and written; the
/// supervisor hears only the verdicts (`chunkStored`).
///
/// All state is confined to `loop`; the skeleton's reader thread hops onto it.
public final class TransferService: WorkerService, @unchecked Sendable {
    let loop: EventLoop
    let group: MultiThreadedEventLoopGroup
    let logger: Logger
    let pipe: WorkerPipe
    let requestsInFlight: Int
    let maxPeers: Int
    /// Global limits (token buckets), shared by every connection. Loop-confined.
    var uploadBucket: TokenBucket
    var downloadBucket: TokenBucket
    /// Upload limit for each connection on its own (0: none), so one greedy peer cannot
    /// take a whole limited upload.
    var perPeerUploadRate: Double
    /// Connections with pieces waiting for upload tokens (each keeps its own queue, oldest
    /// first). They take turns, one piece each, so every peer gets an equal share of a
    /// limited upload however many requests it keeps outstanding.
    private var uploadRing: [ServeHandler] = []
    private var ringCursor = 0
    private var uploadPumpScheduled = false
    private let startedAt = DispatchTime.now().uptimeNanoseconds

    // Serving.
    var servedShareID: [UInt8]?
    var servedManifest: [UInt8]?
    var servedChunkCount = 0
    /// Serving a download in progress: only verified chunks are offered.
    var servingPartial = false
    var listener: Channel?
    /// Peers past the handshake; `limits.maxPeers` bounds these.
    var servingConnections = 0
    /// Connections still in their handshake, in total and by address: a quota of their own,
    /// so strangers that never finish cannot take the slots of established peers.
    var handshaking: [ServeHandler] = []
    var handshakingByAddress: [String: Int] = [:]
    /// Greeted inbound connections, told of every newly verified chunk (`have`).
    var serveHandlers: [ObjectIdentifier: ServeHandler] = [:]
    private var nextLocalRequest: UInt32 = 1
    /// readChunk requests sent to the hash worker, by our request id.
    var pendingReads: [UInt32: (ServeHandler, UInt32)] = [:]
    /// Reads among those whose chunk the peer cancelled: dropped when they arrive.
    var cancelledReads: Set<UInt32> = []
    /// Chunks handed to the hash worker to verify and write: request id -> (index, size, peer).
    private var pendingWrites: [UInt32: (index: UInt32, bytes: UInt32, peer: String)] = [:]
    /// The data channel to the hash worker (chunk data both ways).
    let hash: WorkerPipe?

    // Relays.
    /// The share's DHT key, which names it at relays; the relays to reach it through (when
    /// fetching) and our registrations with relays (when serving).
    var relayKey: [UInt8]?
    var relayRoutes: [String] = []
    /// Our listening port as the router forwards it from outside (NAT-PMP/UPnP), if it does.
    var publicListenPort: UInt16?
    /// Ask relays to introduce us to seeders (punch, reverse) before bridging (nat.punch).
    var relayPunch = true
    var registrar: RelayRegistrar?

    // Fetching.
    var fetch: FetchSession?
    /// The pipeline every connection runs (`configurePipeline`).
    var pipeline = PipelineSetup()
    /// The supervisor, which holds the secrets, as the handshakes' key holder.
    let keyHolder: SupervisorKeyHolder

    /// Seconds since start on the monotonic clock: the time the buckets are given.
    var now: Double { Double(DispatchTime.now().uptimeNanoseconds - startedAt) / 1e9 }

    public init(
        logger: Logger, pipe: WorkerPipe, requestsInFlight: Int, maxPeers: Int, maxUploadRate: Double = 0,
        maxDownloadRate: Double = 0, maxPeerUploadRate: Double = 0
    ) {
        self.perPeerUploadRate = maxPeerUploadRate
        self.uploadBucket = TokenBucket(rate: maxUploadRate, now: 0)
        self.downloadBucket = TokenBucket(rate: maxDownloadRate, now: 0)
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.loop = group.next()
        self.logger = logger
        self.pipe = pipe
        self.keyHolder = SupervisorKeyHolder(pipe: pipe)
        self.requestsInFlight = requestsInFlight
        self.maxPeers = maxPeers
        self.hash = DataChannel.inherited()
        if let hash {
            DataChannel.startReading(
                hash, as: .transfer,
                deliver: { [self] message in loop.execute { self.onHash(message) } },
                logger: logger,
                closed: { [logger] reason in
                    // The supervisor restarts the hash worker on a new channel, and us with it.
                    logger.debug("data channel: \(reason); waiting to be restarted with the hash worker")
                })
        } else {
            logger.error("started without a data channel to the hash worker: cannot serve or download")
        }
    }

    public func statusLine() -> String {
        (try? loop.submit { [self] in
            var parts: [String] = []
            if servedShareID != nil { parts.append("serving \(servingConnections) peers") }
            if let fetch { parts.append(fetch.statusLine) }
            return parts.isEmpty ? "idle" : parts.joined(separator: ", ")
        }.wait()) ?? "busy"
    }

    public func handle(_ message: IPCMessage, pipe: WorkerPipe) {
        // Answers to key requests go straight to the handshake waiting for them (on the loop).
        if keyHolder.deliver(message) { return }
        loop.execute { [self] in onSupervisor(message) }
    }

    /// Sends to the supervisor; a broken pipe means the supervisor is gone, so we go too.
    func tell(_ message: IPCMessage) { pipe.sendOrExit(message, logger: logger) }

    /// The pipeline could not be set up (a plugin refused its options, say): nothing is
    /// served or fetched, and the supervisor, told so, ends the run. A `share` must not print
    /// a link it cannot serve.
    private var pipelineFailed = false

    private func onSupervisor(_ message: IPCMessage) {
        if pipelineFailed, [.serve, .fetch, .startChunks, .addPeers].contains(message.tag) { return }
        switch message {
        case .serve(let shareID, let manifest, let host, let port, let partial):
            servingPartial = partial
            startServing(shareID: shareID, manifest: manifest, host: host, port: Int(port))
        case .fetch(let shareID, let peers):
            if fetch == nil {
                let session = FetchSession(service: self, shareID: shareID, peers: peers)
                fetch = session
                session.start()
            }
        case .startChunks(let verified):
            fetch?.start(verified: verified)
        case .addPeers(let peers):
            fetch?.add(peers: peers)
        case .configurePipeline(let planBytes, let tag, let publicKey):
            do {
                try Sodium.start()
                pipeline.plan = try PipelinePlan(bytes: planBytes)
                pipeline.tagKey = tag.isEmpty ? nil : tag
                pipeline.publicKey = publicKey
                pipeline.keyHolder = keyHolder
            } catch {
                pipelineFailed = true
                tell(.failure(requestID: 0, code: 78, message: "bad pipeline from the supervisor: \(error)"))
                return
            }
            do {
                try startPlugins()
            } catch {
                // Usually a plugin refusing its options: the user's configuration, said once.
                pipelineFailed = true
                tell(.failure(requestID: 0, code: 78, message: "pipeline.json: \(error)"))
                return
            }
            pipelineFailed = false
            let names = pipeline.plan.stages.map(\.name).joined(separator: ", ")
            logger.info(
                "pipeline: \(names.isEmpty ? "no stages" : names); peer id \(PeerIdentity.peerID(of: pipeline.publicKey))"
            )
        case .setLimits(let upload, let download, let perPeer):
            setLimits(upload: upload, download: download, perPeer: perPeer)
        case .publicListenPort(let port):
            publicListenPort = port
        case .useRelays(let key, let relays, let register, let punch):
            relayKey = key
            relayPunch = punch
            if register {
                registrar?.stop()
                let registrar = RelayRegistrar(service: self, key: key, relays: relays)
                self.registrar = registrar
                registrar.start()
            } else {
                relayRoutes = relays
                fetch?.startRelaysIfStuck()
            }
        default:
            logger.warning("ignoring unexpected \(message.tag) from the supervisor")
        }
    }

    /// Answers from the hash worker on the data channel.
    private func onHash(_ message: IPCMessage) {
        switch message {
        case .chunkData(let id, let index, let data):
            guard let (handler, _) = endRead(id) else { return }
            if cancelledReads.remove(id) != nil {
                // Read for a peer that then cancelled: dropped, and charged as if sent, so
                // request-then-cancel costs the peer its upload share like any request.
                let now = now
                uploadBucket.charge(data.count, now: now)
                handler.bucket.charge(data.count, now: now)
                readAhead(for: handler)
            } else {
                handler.deliver(index: index, data: data)
            }
        case .chunkWritten(let id, let index, let accepted):
            guard let write = pendingWrites.removeValue(forKey: id), write.index == index else { return }
            fetch?.verdict(index: Int(index), accepted: accepted)
            tell(.chunkStored(index: index, accepted: accepted, bytes: write.bytes, peer: write.peer))
        case .failure(let id, let code, let text):
            if let (handler, index) = endRead(id) {
                if cancelledReads.remove(id) == nil { handler.refuse(index: index, reason: text) }
                readAhead(for: handler)
            } else if pendingWrites.removeValue(forKey: id) != nil {
                // Not the peer's fault (a full disk, say): the download cannot go on.
                tell(.failure(requestID: 0, code: code, message: text))
            }
        default:
            break
        }
    }

    /// Hands a chunk that arrived from `peer` to the hash worker, which verifies it against
    /// the manifest and writes it only if it is genuine.
    func store(index: UInt32, data: [UInt8], from peer: String) {
        let id = nextLocalRequest
        nextLocalRequest &+= 1
        pendingWrites[id] = (index, UInt32(data.count), peer)
        sendToHash(.writeChunk(requestID: id, index: index, data: data))
    }

    private func sendToHash(_ message: IPCMessage) {
        do {
            guard let hash else { throw WorkerError.pipe("no data channel") }
            try hash.send(message)
        } catch {
            // The hash worker is gone; the supervisor is about to restart us with the next one.
            logger.debug("cannot reach the hash worker: \(error)")
        }
    }

    private func setLimits(upload: UInt64, download: UInt64, perPeer: UInt64) {
        if upload != LimitChange.unchanged { uploadBucket.setRate(Double(upload), now: now) }
        if download != LimitChange.unchanged { downloadBucket.setRate(Double(download), now: now) }
        if perPeer != LimitChange.unchanged {
            perPeerUploadRate = Double(perPeer)
            for handler in serveHandlers.values { handler.bucket.setRate(perPeerUploadRate, now: now) }
        }
        logger.info(
            "limits now: upload \(ByteRate.describe(uploadBucket.rate)), download \(ByteRate.describe(downloadBucket.rate)), per peer \(ByteRate.describe(perPeerUploadRate))"
        )
        tell(
            .status(
                requestID: 0,
                text:
                    "limits: upload \(ByteRate.describe(uploadBucket.rate)), download \(ByteRate.describe(downloadBucket.rate)), per-peer upload \(ByteRate.describe(perPeerUploadRate))"
            ))
        fetch?.limitsChanged()
        pumpUploads()
    }

    private var reportedPlugins: Set<String> = []

    /// A plugin stage hung, crashed or answered garbage on this connection: the supervisor
    /// restarts it (once per plugin: it restarts this worker too).
    func reportPluginFailure(_ codec: WireCodec) {
        guard let (name, reason) = codec.failedPlugin, reportedPlugins.insert(name).inserted else { return }
        logger.error("\(reason)")
        tell(.pluginFailed(name: name, reason: reason))
    }

    /// Connects to the plugin stages' pipes (inherited on descriptors 5, 6, ...) and says hello.
    private func startPlugins() throws {
        var next: Int32 = WorkerRole.dataChannelDescriptor + 1
        pipeline.plugins = [:]
        for index in pipeline.plan.stages.indices where pipeline.plan.stages[index].kind == .plugin {
            let stage = pipeline.plan.stages[index]
            let channel = PluginChannel(name: stage.name, descriptor: next)
            next += 1
            try channel.start(options: stage.options)
            pipeline.plan.stages[index].version = channel.version
            pipeline.plugins[stage.name] = channel
            logger.info("plugin '\(stage.name)' ready, stage version \(channel.version)")
        }
    }

    // MARK: Serving

    /// Whether a chunk may be offered to peers: always when seeding; when serving a download
    /// in progress, only once the hash worker has verified it.
    func mayServe(_ index: Int) -> Bool {
        guard index >= 0, index < servedChunkCount else { return false }
        guard servingPartial else { return true }
        guard let fetch, fetch.shareID == servedShareID else { return false }
        return fetch.isVerified(index)
    }

    func servableBitfield() -> ChunkBitfield {
        var bits = ChunkBitfield(count: servedChunkCount)
        for index in 0..<servedChunkCount where mayServe(index) { bits[index] = true }
        return bits
    }

    /// A chunk was verified: every greeted inbound peer hears of it.
    func announceHave(_ index: Int) {
        guard servingPartial, index < servedChunkCount else { return }
        for handler in serveHandlers.values { handler.send(.have(index: UInt32(index))) }
    }

    /// Listens, and serves the share once its manifest is known. A download listens from
    /// its start with no manifest yet (hellos are refused until then), so that a seeder
    /// behind a NAT can reach it (a reverse connection) before it has a single chunk.
    private func startServing(shareID: [UInt8], manifest: [UInt8], host: String, port: Int) {
        var newlyServing = false
        if !manifest.isEmpty && servedShareID == nil {
            do {
                servedChunkCount = try Manifest.decode(manifest).chunkCount
            } catch {
                tell(.failure(requestID: 0, code: 65, message: "cannot serve: \(error)"))
                return
            }
            servedShareID = shareID
            servedManifest = manifest
            newlyServing = true
        }
        if let listener {
            // Said again only when something changed: the supervisor answers `serving` with
            // the same `serve` (to replay after a restart), which must not loop.
            if newlyServing, let bound = listener.localAddress?.port { tell(.serving(port: UInt16(bound))) }
            return
        }
        ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(ChannelOptions.recvAllocator, value: ChunkTrafficReads.allocator)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture { try addServeHandlers(to: channel) }
            }
            .bind(host: host, port: port)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    listener = channel
                    let bound = channel.localAddress?.port ?? port
                    logger.info("listening on \(host):\(bound)")
                    tell(.serving(port: UInt16(bound)))
                case .failure(let error):
                    logger.debug("cannot listen on \(host):\(port): \(error)")
                    tell(.failure(requestID: 0, code: 69, message: "cannot listen on \(host):\(port): \(error)"))
                }
            }
    }

    /// The serving side of the peer protocol on a connection: an accepted one, or one a
    /// relay has joined to a downloader (behind the relay's `FramedPreamble`).
    /// `relayed`: the connection's far end is a relay, not the downloader.
    func addServeHandlers(to channel: Channel, relayed: Bool = false) throws {
        // A few KiB until the hello is accepted: a stranger cannot make us buffer
        // megabytes before it has said which share it wants.
        let limit = FrameLimit(ServeHandler.handshakeFrameLength)
        try channel.pipeline.syncOperations.addHandlers([
            IdleStateHandler(readTimeout: .seconds(120)),
            FrameChannelDecoder.handler(limit: limit, largest: PeerMessage.maxFrameLength),
            MessageToByteHandler(FrameChannelEncoder()),
            ServeHandler(service: self, frameLimit: limit, relayed: relayed),
        ])
    }

    /// Chunks read ahead per connection: being read, waiting for upload tokens, or handed to
    /// the socket and not yet written. A peer may keep 64 requests outstanding; reading all
    /// of them at once would hold 32 MiB per peer in memory for nothing.
    static let readAhead = 4

    /// Takes a peer's request; the chunk is read from the hash worker when its turn comes.
    func serve(_ index: UInt32, for handler: ServeHandler) {
        handler.waiting.append(index)
        readAhead(for: handler)
    }

    /// Asks the hash worker (over the data channel) for the next requested chunks, as far as
    /// the read-ahead allows.
    func readAhead(for handler: ServeHandler) {
        // Nothing is read while the upload limits are in debt: the cost of serving follows
        // the upload limit, not what a peer asks for.
        let wait = max(uploadBucket.waitTime(now: now), handler.bucket.waitTime(now: now))
        if wait > 0 {
            if !handler.waiting.isEmpty && !handler.readAheadScheduled {
                handler.readAheadScheduled = true
                loop.scheduleTask(in: .microseconds(Int64(wait * 1e6))) { [self] in
                    handler.readAheadScheduled = false
                    if handler.context != nil { readAhead(for: handler) }
                }
            }
            return
        }
        while handler.reading + handler.queued.count + handler.unsent < TransferService.readAhead,
            !handler.waiting.isEmpty
        {
            let index = handler.waiting.removeFirst()
            let id = nextLocalRequest
            nextLocalRequest &+= 1
            pendingReads[id] = (handler, index)
            handler.reading += 1
            sendToHash(.readChunk(requestID: id, index: index))
        }
    }

    /// Forgets a read sent to the hash worker (answered or cancelled): the connection may
    /// then read further ahead.
    private func endRead(_ id: UInt32) -> (ServeHandler, UInt32)? {
        guard let (handler, index) = pendingReads.removeValue(forKey: id) else { return nil }
        handler.reading -= 1
        return (handler, index)
    }

    func forget(_ handler: ServeHandler) {
        for (id, read) in pendingReads where read.0 === handler { cancelledReads.remove(id) }
        pendingReads = pendingReads.filter { $0.value.0 !== handler }
        uploadRing.removeAll { $0 === handler }
        handler.queued.removeAll()
        handler.waiting.removeAll()
        serveHandlers[ObjectIdentifier(handler)] = nil
    }

    /// The peer no longer wants a chunk: drop it from the read or upload queue (a cancel for
    /// a chunk already sent is ignored). Returns true if the request was still outstanding
    /// (waiting, being read, or read and queued for upload).
    func cancel(_ index: UInt32, for handler: ServeHandler) -> Bool {
        if let position = handler.waiting.firstIndex(of: index) {
            handler.waiting.remove(at: position)
            return true
        }
        if let id = pendingReads.first(where: {
            $0.value.0 === handler && $0.value.1 == index && !cancelledReads.contains($0.key)
        })?.key {
            // Being read: the hash worker finishes it and the chunk is dropped on arrival. The
            // read keeps its read-ahead slot until then, so cancelling never lets a peer make
            // us read more than the read-ahead at once.
            cancelledReads.insert(id)
            return true
        }
        // Read and waiting for upload tokens: dropped, and charged as if sent (as a cancelled
        // read is), so the freed read-ahead slot cannot be used to read faster than the
        // limit. It is no longer outstanding: forgetting that let a request-then-cancel loop
        // at a limited seeder count past 64 and be disconnected for it.
        var dropped = 0
        handler.queued.removeAll {
            guard case .piece(let queued, let data) = $0, queued == index else { return false }
            dropped += data.count
            return true
        }
        guard dropped > 0 else { return false }
        uploadBucket.charge(dropped, now: now)
        handler.bucket.charge(dropped, now: now)
        readAhead(for: handler)
        return true
    }

    /// Sends a piece now, or queues it until the upload limit allows.
    func upload(_ message: PeerMessage, via handler: ServeHandler) {
        handler.queued.append(message)
        if !uploadRing.contains(where: { $0 === handler }) { uploadRing.append(handler) }
        pumpUploads()
    }

    /// Sends queued pieces, one per connection in turn, as far as the global bucket and each
    /// peer's own bucket allow. A peer over its own limit is skipped, not waited for, so it
    /// does not hold up the others.
    private func pumpUploads() {
        var soonest = Double.infinity
        var skipped = 0
        while !uploadRing.isEmpty && skipped < uploadRing.count {
            if ringCursor >= uploadRing.count { ringCursor = 0 }
            let handler = uploadRing[ringCursor]
            guard let message = handler.queued.first else {
                uploadRing.remove(at: ringCursor)
                continue
            }
            let peerWait = handler.bucket.waitTime(now: now)
            if peerWait > 0 {
                soonest = min(soonest, peerWait)
                skipped += 1
                ringCursor += 1
                continue
            }
            let bytes = if case .piece(_, let data) = message { data.count } else { 0 }
            let wait = uploadBucket.take(bytes, now: now)
            if wait > 0 {
                soonest = min(soonest, wait)
                break
            }
            _ = handler.bucket.take(bytes, now: now)
            handler.queued.removeFirst()
            handler.sendPiece(message)
            skipped = 0
            // Sending may close the connection (a plugin stage failed, the peer left), and a
            // closed connection is forgotten, which changes the ring: find the handler again.
            guard let position = uploadRing.firstIndex(where: { $0 === handler }) else { continue }
            if handler.queued.isEmpty {
                uploadRing.remove(at: position)
                ringCursor = position
            } else {
                ringCursor = position + 1
            }
        }
        guard soonest < .infinity, !uploadPumpScheduled else { return }
        uploadPumpScheduled = true
        loop.scheduleTask(in: .microseconds(Int64(soonest * 1e6))) { [self] in
            uploadPumpScheduled = false
            pumpUploads()
        }
    }
}

/// One inbound peer connection: handshake, manifest, then chunk requests answered in order.
/// Loop-confined, like everything in the transfer worker (hence `@unchecked Sendable`).
final class ServeHandler: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    /// A well-behaved downloader keeps a handful of requests outstanding; hundreds is a flood.
    static let maxOutstanding = 64
    /// Before the hello is accepted: the largest frame (a hello is under 2 KiB, a stage's
    /// handshake message at most 4 KiB plus its header), the time allowed to complete the
    /// whole handshake (bytes do not extend it), and how many connections may be at that
    /// stage at once, from one address and in all.
    static let handshakeFrameLength = 8 * 1024
    static let handshakeDeadline: TimeAmount = .seconds(10)
    static let maxHandshakingPerAddress = 4
    static let maxHandshaking = 32

    let service: TransferService
    var context: ChannelHandlerContext?
    var greeted = false
    var outstanding = 0
    var peer = "?"
    /// This connection's own upload limit (`limits.maxPeerUploadRate`).
    var bucket: TokenBucket
    /// Pieces read and waiting for upload tokens, oldest first.
    var queued: [PeerMessage] = []
    /// Requested chunks not yet read from the hash worker, oldest first.
    var waiting: [UInt32] = []
    /// Reads sent to the hash worker and not yet answered.
    var reading = 0
    /// Pieces handed to the socket and not yet written to it.
    var unsent = 0
    /// A read-ahead is scheduled for when the upload limits allow reading again.
    var readAheadScheduled = false
    /// The pipeline on this connection (negotiated in the hello).
    var codec: WireCodec
    let frameLimit: FrameLimit
    /// Counted among the connections still in their handshake.
    private var inHandshakeQuota = false
    /// Counted among the established peers.
    private var established = false
    private var address = "?"

    /// The connection comes through a relay's circuit: its remote address is the relay's.
    let relayed: Bool

    init(service: TransferService, frameLimit: FrameLimit, relayed: Bool = false) {
        self.relayed = relayed
        self.service = service
        self.frameLimit = frameLimit
        self.bucket = TokenBucket(rate: service.perPeerUploadRate, now: service.now)
        self.codec = WireCodec(setup: service.pipeline, role: .server)
        // A downloader only ever sends small messages; nothing it sends may inflate further.
        codec.decodeLimit = 64 * 1024
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        peer = context.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?"
        address = context.remoteAddress?.ipAddress ?? "?"
    }

    func channelActive(context: ChannelHandlerContext) {
        let fromAddress = service.handshakingByAddress[address, default: 0]
        guard fromAddress < ServeHandler.maxHandshakingPerAddress else {
            service.logger.info("peer \(peer): too many unfinished handshakes from \(address); refusing the connection")
            context.close(promise: nil)
            return
        }
        // All full (strangers from many addresses): the oldest unfinished handshake makes
        // room. An honest peer finishes in milliseconds, so it is rarely the one to go.
        if service.handshaking.count >= ServeHandler.maxHandshaking, let oldest = service.handshaking.first {
            oldest.fail(.busy, "too many unfinished handshakes; dropping the oldest")
            oldest.leaveHandshakeQuota()
        }
        inHandshakeQuota = true
        service.handshaking.append(self)
        service.handshakingByAddress[address] = fromAddress + 1
        context.eventLoop.scheduleTask(in: ServeHandler.handshakeDeadline) { [self] in
            if inHandshakeQuota { fail(.protocolViolation, "handshake not completed in time") }
        }
    }

    func leaveHandshakeQuota() {
        guard inHandshakeQuota else { return }
        inHandshakeQuota = false
        service.handshaking.removeAll { $0 === self }
        let left = service.handshakingByAddress[address, default: 1] - 1
        service.handshakingByAddress[address] = left > 0 ? left : nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        codec.close()
        leaveHandshakeQuota()
        if established { service.servingConnections -= 1 }
        service.forget(self)
        self.context = nil
        service.logger.debug("peer \(peer) disconnected")
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A peer that hung up (it finished, or went away) is routine, not a warning.
        if let io = error as? IOError, io.errnoCode == ECONNRESET || io.errnoCode == EPIPE {
            service.logger.info("peer \(peer) hung up")
            context.close(promise: nil)
            return
        }
        // Usually a frame over the length limit: tell the peer why before hanging up.
        fail(.protocolViolation, "\(error)")
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            service.logger.info("peer \(peer) idle for too long; disconnecting")
            context.close(promise: nil)
        }
    }

    /// Sends a piece; when the socket has taken it, the next chunk may be read.
    func sendPiece(_ message: PeerMessage) {
        guard let context else { return }
        let promise = context.eventLoop.makePromise(of: Void.self)
        unsent += 1
        promise.futureResult.whenComplete { [self] _ in
            unsent -= 1
            service.readAhead(for: self)
        }
        do {
            context.writeAndFlush(wrapOutboundOut(try codec.frame(message)), promise: promise)
        } catch {
            promise.fail(error)
            service.logger.warning("peer \(peer): \(error); disconnecting")
            service.reportPluginFailure(codec)
            context.close(promise: nil)
        }
    }

    func send(_ message: PeerMessage) {
        do {
            context?.writeAndFlush(wrapOutboundOut(try codec.frame(message)), promise: nil)
        } catch {
            service.logger.warning("peer \(peer): \(error); disconnecting")
            service.reportPluginFailure(codec)
            context?.close(promise: nil)
        }
    }

    /// A seeder we asked a relay for dialled our listener and names the circuit (a reverse
    /// connection): if we are waiting for that circuit, this connection becomes our download
    /// connection to it; anything else is closed.
    private func reverseConnection(_ frame: Frame, context: ChannelHandlerContext) {
        guard case .attach(let circuit) = try? RelayMessage(frame: frame), let fetch = service.fetch else {
            return fail(.protocolViolation, "unexpected reverse connection")
        }
        leaveHandshakeQuota()
        frameLimit.bytes = PeerMessage.maxFrameLength
        let channel = context.channel
        context.pipeline.syncOperations.removeHandler(context: context).whenComplete { [service] result in
            guard case .success = result else { return channel.close(promise: nil) }
            if !fetch.reverseArrived(circuit: circuit, channel: channel) {
                service.logger.info(
                    "peer \(channel.remoteAddress?.description ?? "?"): reverse connection for no circuit of ours")
                channel.close(promise: nil)
            }
        }
    }

    func fail(_ code: PeerMessage.ErrorCode, _ text: String) {
        service.logger.warning("peer \(peer): \(text); disconnecting")
        send(.error(code: code.rawValue, message: text))
        context?.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if !greeted && frame.type == RelayMessage.Tag.attach.rawValue {
            return reverseConnection(frame, context: context)
        }
        let message: PeerMessage
        do {
            message = try codec.message(from: frame)
        } catch {
            service.reportPluginFailure(codec)
            fail(.protocolViolation, "bad message: \(error)")
            return
        }
        if codec.awaitingHandshake, message.tag != .stageHandshake {
            return fail(.protocolViolation, "\(message.tag) before the encryption handshake finished")
        }
        switch message {
        case .hello(let version, let helloID, let stages, let observed):
            if let observed, !relayed { service.tell(.observedAddress(source: peer, address: observed.description)) }
            guard !greeted else { return fail(.protocolViolation, "hello sent twice") }
            guard version == PeerMessage.version else {
                return fail(.versionMismatch, "version \(version) not supported (we speak \(PeerMessage.version))")
            }
            // Checked in constant time: for a private share the tag is keyed with the secret.
            guard let shareID = service.servedShareID, service.pipeline.accepts(helloID: helloID, for: shareID) else {
                return fail(
                    .unknownShare,
                    service.pipeline.plan.encrypts
                        ? "we do not serve that share with that key" : "we do not have that share")
            }
            let ours = service.pipeline.descriptors
            let context = helloID + StageDescriptor.encoded(stages) + StageDescriptor.encoded(ours)
            do {
                _ = try codec.agree(remote: stages, context: context)  // the server never opens a handshake
            } catch {
                // Logged as we see it, sent as the peer sees it, so each end reads "we"
                // and "the peer" the right way round.
                service.logger.warning("peer \(peer): \(error); disconnecting")
                var theirs = "\(error)"
                if case .failure(let mismatch) = PipelineNegotiation.agree(local: stages, remote: ours) {
                    theirs = "pipeline mismatch: \(mismatch.description)"
                }
                send(.error(code: PeerMessage.ErrorCode.pipelineMismatch.rawValue, message: theirs))
                self.context?.close(promise: nil)
                return
            }
            greeted = true
            // Past the hello: frames may now carry what the pipeline's stages produce.
            frameLimit.bytes = PeerMessage.maxFrameLength
            service.logger.info("peer \(peer) connected")
            send(
                .helloAccepted(
                    version: PeerMessage.version, chunkCount: UInt32(service.servedChunkCount), stages: ours,
                    observed: relayed ? nil : self.context?.remoteAddress?.wireAddress)
            )
            if !codec.awaitingHandshake { welcome() }
        case .stageHandshake(let stage, let data) where greeted && codec.awaitingHandshake:
            do {
                for reply in try codec.handshake(stage: stage, data) {
                    send(.stageHandshake(stage: reply.stage, data: reply.data))
                }
            } catch {
                service.reportPluginFailure(codec)
                return fail(.handshakeFailed, "\(error)")
            }
            if !codec.awaitingHandshake {
                service.logger.info("peer \(peer): encrypted; its peer id is \(codec.remotePeerID ?? "?")")
                welcome()
            }
        case .getManifest where greeted:
            send(.manifest(bytes: service.servedManifest ?? []))
        case .request(let index) where greeted:
            guard Int(index) < service.servedChunkCount else {
                return fail(.protocolViolation, "request for chunk \(index) of \(service.servedChunkCount)")
            }
            outstanding += 1
            guard outstanding <= ServeHandler.maxOutstanding else {
                return fail(.protocolViolation, "more than \(ServeHandler.maxOutstanding) requests outstanding")
            }
            guard service.mayServe(Int(index)) else { return refuse(index: index, reason: "not verified here yet") }
            service.serve(index, for: self)
        case .cancel(let index) where greeted:
            if service.cancel(index, for: self) { outstanding -= 1 }
        default:
            fail(.protocolViolation, "unexpected \(message.tag) message")
        }
    }

    /// Past the hello (and the encryption handshake, if any): offer what we have.
    private func welcome() {
        leaveHandshakeQuota()
        established = true
        service.servingConnections += 1
        guard service.servingConnections <= service.maxPeers else { return fail(.busy, "too many peers") }
        service.serveHandlers[ObjectIdentifier(self)] = self
        send(.bitfield(bits: service.servableBitfield().bytes))
    }

    func deliver(index: UInt32, data: [UInt8]) {
        outstanding -= 1
        service.upload(.piece(index: index, data: data), via: self)
    }

    func refuse(index: UInt32, reason: String) {
        outstanding -= 1
        send(.reject(index: index, reason: reason))
    }
}
