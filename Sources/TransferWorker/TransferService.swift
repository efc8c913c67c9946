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
/// file: chunks to serve are read by the hash worker into slots of their shared chunk pool
/// (`readChunk`), and chunks downloaded are put into slots for it to verify and write
/// (`writeChunk`); the data channel names the slots, the supervisor hears only the verdicts
/// (`chunkStored`).
///
/// All state is confined to `loop`; the skeleton's reader thread hops onto it.
public final class TransferService: WorkerService, @unchecked Sendable {
    let loop: EventLoop
    let group: MultiThreadedEventLoopGroup
    let logger: Logger
    let pipe: WorkerPipe
    /// From `transferSettings`, which comes first.
    var requestsInFlight = 16
    var maxPeers = 64
    /// Serving every downloader connected to us (read-ahead, fair turns, upload limits): the
    /// Instance whose directives `applyUpload` carries out.
    var upload: Upload
    /// Download limit for the download (which owns its own bucket), kept for when it starts.
    var downloadRate: Double
    private let startedAt = DispatchTime.now().uptimeNanoseconds

    // Serving.
    var servedShareID: [UInt8]?
    var servedManifest: [UInt8]?
    var servedChunkCount = 0
    /// Serving a download in progress: only verified chunks are offered.
    var servingPartial = false
    var listener: Channel?
    /// A listening socket inherited from the supervisor (`--listener-fd`): served on instead
    /// of binding one; it outlives us, so a restart or a wake-up keeps the same port.
    let inheritedListener: Int32?
    /// Peers past the handshake; `limits.maxPeers` bounds these.
    var servingConnections = 0
    /// What `countersRequest` reports (loop-confined, like everything here).
    var tally = Tally()

    struct Tally {
        var bytesSent: UInt64 = 0
        var piecesSent: UInt64 = 0
        var bytesVerified: UInt64 = 0
        var chunksVerified: UInt64 = 0
        var chunksRejected: UInt64 = 0
        /// Downloading connections established, by how they reached the peer.
        var connections: [String: UInt64] = [:]
        var peersServed: UInt64 = 0
        /// Chunks served from the pool (verified here, still in memory) and read by the hash
        /// worker from disk.
        var chunksServedFromPool: UInt64 = 0
        var chunksReadForPeers: UInt64 = 0
        /// The most arrived chunks that waited at once for a slot (each held in memory).
        var mostChunksWaitingForSlot: UInt64 = 0
        /// The most connections that stopped reading at once to wait for a slot for the
        /// piece they had begun (`ArrivingFrameReader`).
        var mostConnectionsWaitingForSlot: UInt64 = 0
    }
    /// Connections still in their handshake, in total and by address: a quota of their own,
    /// so strangers that never finish cannot take the slots of established peers.
    var handshaking: [ServeHandler] = []
    var handshakingByAddress: [String: Int] = [:]
    /// Greeted inbound connections, by the id `Upload` knows them by; each is told of every
    /// newly verified chunk (`have`).
    var serveHandlers: [Int: ServeHandler] = [:]
    var nextServeConnection = 1
    /// The pool shared with the hash worker, and who holds which of its slots (cut once the
    /// share's chunk size is known).
    let pool: ChunkPool?
    var slots: ChunkSlots?
    /// Reads lent to the hash worker: read id -> slot.
    var readsAtHash: [Upload.ReadID: Int] = [:]
    /// Chunks read for `Upload`, in their slots, held until it says send (or discard);
    /// `cached`: the slot is a cached verified chunk, pinned for this send.
    var readChunks: [Upload.ReadID: (slot: Int, length: Int, cached: Bool)] = [:]
    /// Reads and arrived chunks waiting for a free slot, in order.
    var readsWaitingForSlot: [(read: Upload.ReadID, index: UInt32)] = []
    var storesWaitingForSlot: [(index: UInt32, data: [UInt8], peer: String)] = []
    /// Write requests carry the top bit: the data channel's answers (`failure` in
    /// particular) name reads and writes by id, and `Upload` numbers the reads from 1.
    private var nextWrite: UInt32 = 0x8000_0000
    /// Chunks handed to the hash worker to verify and write: request id -> (index, size,
    /// peer, slot).
    private var pendingWrites: [UInt32: (index: UInt32, bytes: UInt32, peer: String, slot: Int)] = [:]
    /// The data channel to the hash worker: chunk requests out, its replies in.
    let hash: MessagePipe<ChunkRequest, ChunkReply>?
    /// Requests queued this turn of the loop (`sendToHash`).
    private var toHash: [ChunkRequest] = []
    /// Reports and socket flushes held until the end of this turn of the loop (`afterTurn`).
    private var toSupervisor: [WorkerReport] = []
    private var toFlush: [ObjectIdentifier: Channel] = [:]
    private var afterTurnScheduled = false

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
    var fetch: DownloadShell?
    /// The pipeline every connection runs (`configurePipeline`).
    var pipeline = PipelineSetup()
    /// The supervisor, which holds the secrets, as the handshakes' key holder.
    let keyHolder: SupervisorKeyHolder

    /// Seconds since start on the monotonic clock: the time the buckets are given.
    var now: Double { Double(DispatchTime.now().uptimeNanoseconds - startedAt) / 1e9 }

    public init(logger: Logger, pipe: WorkerPipe, inheritedListener: Int32? = nil) {
        self.inheritedListener = inheritedListener
        self.upload = Upload(now: 0)
        self.downloadRate = 0
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.loop = group.next()
        self.logger = logger
        self.pipe = pipe
        self.keyHolder = SupervisorKeyHolder(pipe: pipe)
        self.hash = DataChannel.inherited()
        self.pool = ChunkPool.inherited()
        if pool == nil {
            logger.error("started without a chunk pool shared with the hash worker: cannot serve or download")
        }
        if let hash {
            DataChannel.startReading(
                hash,
                deliver: { [self] messages in loop.execute { for message in messages { self.onHash(message) } } },
                logger: logger,
                closed: { [logger] reason in
                    // The supervisor restarts the hash worker on a new channel, and us with it.
                    logger.debug("data channel: \(reason); waiting to be restarted with the hash worker")
                })
        } else {
            logger.error("started without a data channel to the hash worker: cannot serve or download")
        }
    }

    public func counters() -> [WorkerCounter] {
        (try? loop.submit { [self] in
            var out = [
                WorkerCounter("bytes_sent", tally.bytesSent), WorkerCounter("pieces_sent", tally.piecesSent),
                WorkerCounter("bytes_verified", tally.bytesVerified),
                WorkerCounter("chunks_verified", tally.chunksVerified),
                WorkerCounter("chunks_rejected", tally.chunksRejected),
                WorkerCounter("peers_banned", UInt64(fetch?.bannedCount ?? 0)),
                WorkerCounter("peers_served", tally.peersServed),
                WorkerCounter("serving_connections", UInt64(servingConnections)),
                WorkerCounter("chunks_served_from_pool", tally.chunksServedFromPool),
                WorkerCounter("chunks_read_for_peers", tally.chunksReadForPeers),
                WorkerCounter("most_chunks_waiting_for_slot", tally.mostChunksWaitingForSlot),
                WorkerCounter("most_connections_waiting_for_slot", tally.mostConnectionsWaitingForSlot),
                WorkerCounter("download_peers", UInt64(fetch?.connectedCount ?? 0)),
            ]
            for (path, count) in tally.connections.sorted(by: { $0.key < $1.key }) {
                out.append(WorkerCounter("connections_\(path)", count))
            }
            return out
        }.wait()) ?? []
    }

    public func statusLine() -> String {
        (try? loop.submit { [self] in
            var parts: [String] = []
            if servedShareID != nil { parts.append("serving \(servingConnections) peers") }
            if let fetch { parts.append(fetch.statusLine) }
            return parts.isEmpty ? "idle" : parts.joined(separator: ", ")
        }.wait()) ?? "busy"
    }

    public func handle(_ message: WorkerCommand, pipe: WorkerPipe) {
        // Answers to key requests go straight to the handshake waiting for them (on the loop).
        if keyHolder.deliver(message) { return }
        loop.execute { [self] in onSupervisor(message) }
    }

    /// Sends to the supervisor; a broken pipe means the supervisor is gone, so we go too.
    /// On the event loop, what one turn says goes in one write after the turn (a burst of
    /// verdicts from the hash worker is one wake-up of the supervisor, not one per chunk).
    func tell(_ message: WorkerReport) {
        guard loop.inEventLoop else { return pipe.sendOrExit(message, logger: logger) }
        toSupervisor.append(message)
        afterTurn()
    }

    /// Flushes `channel` after this turn of the event loop, with every other write of the
    /// turn: a burst of chunks read or verified is one TCP send per peer, not one per chunk.
    func flushAfterTurn(_ channel: Channel) {
        toFlush[ObjectIdentifier(channel)] = channel
        afterTurn()
    }

    private func afterTurn() {
        guard !afterTurnScheduled else { return }
        afterTurnScheduled = true
        loop.execute { [self] in
            afterTurnScheduled = false
            if !toHash.isEmpty {
                let batch = toHash
                toHash.removeAll(keepingCapacity: true)
                do {
                    guard let hash else { throw WorkerError.pipe("no data channel") }
                    try hash.send(batch)
                } catch {
                    // The hash worker is gone; the supervisor is about to restart us with the next one.
                    logger.debug("cannot reach the hash worker: \(error)")
                }
            }
            let channels = toFlush.values
            toFlush.removeAll(keepingCapacity: true)
            for channel in channels { channel.flush() }
            guard !toSupervisor.isEmpty else { return }
            let reports = toSupervisor
            toSupervisor.removeAll(keepingCapacity: true)
            do {
                try pipe.send(reports)
            } catch {
                logger.error("lost the supervisor: \(error)")
                exit(70)
            }
        }
    }

    /// The pipeline could not be set up (a plugin refused its options, say): nothing is
    /// served or fetched, and the supervisor, told so, ends the run. A `share` must not print
    /// a link it cannot serve.
    private var pipelineFailed = false

    private func onSupervisor(_ message: WorkerCommand) {
        if pipelineFailed, [.serve, .fetch, .startChunks, .addPeers].contains(message.tag) { return }
        switch message {
        case .serve(let shareID, let manifest, let host, let port, let partial):
            servingPartial = partial
            startServing(shareID: shareID, manifest: manifest, host: host, port: Int(port))
        case .fetch(let shareID, let peers):
            if fetch == nil {
                let session = DownloadShell(service: self, shareID: shareID, peers: peers)
                fetch = session
                session.start()
            }
        case .startChunks(let verified):
            fetch?.start(verified: verified)
        case .addPeers(let peers, let nearby):
            fetch?.add(peers: peers, nearby: nearby)
        case .configurePipeline(let planBytes, let tag, let publicKey):
            do {
                try Sodium.start()
                pipeline.plan = try PipelinePlan(bytes: planBytes)
                pipeline.tagKey = tag.isEmpty ? nil : tag
                pipeline.publicKey = publicKey
                pipeline.keyHolder = keyHolder
                pipeline.ciphers = StreamCipher.available(environment: ProcessInfo.processInfo.environment)
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
        case .transferSettings(let requestsInFlight, let maxPeers, let uploadRate, let download, let perPeer):
            self.requestsInFlight = max(1, Int(requestsInFlight))
            self.maxPeers = max(1, Int(maxPeers))
            _ = upload.setRates(upload: Double(uploadRate), perPeer: Double(perPeer), now: now)
            downloadRate = Double(download)
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
                fetch?.relaysKnown()
            }
        default:
            logger.warning("ignoring unexpected \(message.tag) from the supervisor")
        }
    }

    /// Answers from the hash worker on the data channel. Each gives back the slot its
    /// request lent.
    private func onHash(_ message: ChunkReply) {
        switch message {
        case .chunkRead(let id, _, let length):
            guard let slot = readsAtHash.removeValue(forKey: id) else { return }
            guard let slots, Int(length) <= slots.slotBytes else {
                self.slots?.give(slot)
                return applyUpload(upload.readFailed(id, reason: "the hash worker overfilled a slot", now: now))
            }
            readChunks[id] = (slot, Int(length), false)
            applyUpload(upload.readDone(id, bytes: Int(length), now: now))
        case .chunkWritten(let id, let index, let accepted):
            guard let write = pendingWrites.removeValue(forKey: id), write.index == index else { return }
            if accepted {
                // Kept in the pool: the peers we serve are likely to ask for it next.
                slots?.keep(write.slot, holding: Int(index), length: Int(write.bytes))
            } else {
                slots?.give(write.slot)
            }
            fetch?.verdict(index: Int(index), accepted: accepted)
            if accepted {
                tally.chunksVerified += 1
                tally.bytesVerified += UInt64(write.bytes)
            } else {
                tally.chunksRejected += 1
            }
            tell(.chunkStored(index: index, accepted: accepted, bytes: write.bytes, peer: write.peer))
        case .failure(let id, let code, let text):
            if let write = pendingWrites.removeValue(forKey: id) {
                slots?.give(write.slot)
                // Not the peer's fault (a full disk, say): the download cannot go on.
                tell(.failure(requestID: 0, code: code, message: text))
            } else if let slot = readsAtHash.removeValue(forKey: id) {
                slots?.give(slot)
                applyUpload(upload.readFailed(id, reason: text, now: now))
            }
        }
        startWaiting()
    }

    /// Cuts the pool into slots as long as the share's longest chunk, once the manifest is
    /// known. A folder of 10 KiB files in 512 KiB chunks then has 256 slots of 10 KiB, not 32
    /// of 512 KiB mostly empty, and reads ahead as many chunks as the pool can hold in
    /// about two chunk sizes: its small chunks go to the hash worker in bursts.
    func useSlots(chunkSize: Int, largestChunk: Int) {
        guard slots == nil, let pool else { return }
        // Rounded up to whole cache lines: slots stay aligned for the cipher and the hash.
        let slotBytes = max(64, (min(chunkSize, largestChunk) + 63) / 64 * 64)
        slots = ChunkSlots(poolBytes: pool.byteCount, slotBytes: slotBytes, leadBytes: ChunkPool.slotLeadBytes)
        guard let slots else {
            return logger.error("the chunk pool cannot hold chunks of \(slotBytes) bytes")
        }
        upload.setReadAhead(min(max(Upload.defaultReadAhead, 2 * chunkSize / slotBytes), slots.count / 8))
        logger.info(
            "chunk pool: \(slots.count) slots of \(slotBytes) bytes; reading \(upload.readAheadChunks) chunks ahead per peer"
        )
    }

    /// Hands a chunk that arrived from `peer` to the hash worker, which verifies it against
    /// the manifest and writes it only if it is genuine. The bytes are copied into a slot of
    /// the pool (or, when none is free, kept to wait in order for one).
    func store(index: UInt32, bytes: UnsafeRawBufferPointer, from peer: String) {
        guard storesWaitingForSlot.isEmpty, let slot = slots?.take() else {
            storesWaitingForSlot.append((index, Array(bytes), peer))
            tally.mostChunksWaitingForSlot = max(tally.mostChunksWaitingForSlot, UInt64(storesWaitingForSlot.count))
            // The hash worker is behind: reading stops until a slot comes back, and TCP's
            // window holds the peers back, instead of chunks piling up in our memory.
            fetch?.pauseReading()
            return
        }
        store(index: index, bytes: bytes, from: peer, in: slot)
    }

    private func store(index: UInt32, bytes: UnsafeRawBufferPointer, from peer: String, in slot: Int) {
        guard let place = poolSlot(slot, length: bytes.count), let memory = pool?.bytes(of: place) else {
            slots?.give(slot)
            logger.error("chunk \(index) from \(peer) does not fit a pool slot; dropped")
            fetch?.verdict(index: Int(index), accepted: false)
            return
        }
        memory.copyMemory(from: bytes)
        store(index: index, length: bytes.count, from: peer, inPlace: slot)
    }

    /// Hands chunk `index`, already in `slot` (`length` bytes: opened there from a sealed
    /// piece, `takeSlot(forSealedPiece:)`), to the hash worker to verify and write.
    func store(index: UInt32, length: Int, from peer: String, inPlace slot: Int) {
        guard let place = poolSlot(slot, length: length) else { return giveBack(slot) }
        let id = nextWrite
        nextWrite = nextWrite == UInt32.max ? 0x8000_0000 : nextWrite + 1
        pendingWrites[id] = (index, UInt32(length), peer, slot)
        sendToHash(.writeChunk(requestID: id, index: index, slot: place))
    }

    /// A free slot to open a sealed piece of `messageBytes` (header and chunk) into, and the
    /// memory it opens into: the slot's lead room for the header, then the slot. Nil when
    /// none is free or arrived chunks wait for one (the piece is then opened like any other
    /// message), or when the message would not fit.
    func takeSlot(forSealedPiece messageBytes: Int) -> (slot: Int, memory: UnsafeMutableRawBufferPointer)? {
        guard storesWaitingForSlot.isEmpty, let slots, messageBytes <= PieceHeader.bytes + slots.slotBytes,
            let slot = self.slots?.take()
        else { return nil }
        guard let memory = messageMemory(slot, chunkLength: messageBytes - PieceHeader.bytes) else {
            giveBack(slot)
            return nil
        }
        return (slot, memory)
    }

    /// Slots that connections are reading plaintext pieces into (`takeSlot(forArrivingChunk:)`).
    private var slotsFillingFromPeers = 0

    /// A free slot to read an arriving plaintext chunk of `length` bytes into as its bytes
    /// arrive, and its memory. At most half the slots fill from peers at once: a slot
    /// filling waits on its peer, and a peer may trickle its piece for ever. Past that, or
    /// for a chunk no slot holds, `.never`: the piece is gathered whole and copied in as
    /// before, so peers that trickle hold half the pool at most and never hold up an honest
    /// one. `.later` when no slot is free now (the hash worker is behind, or arrived chunks
    /// wait): slots at the hash worker come back.
    func takeSlot(forArrivingChunk length: Int) -> ArrivingPieceSlot {
        guard let slots, length > 0, length <= slots.slotBytes, slotsFillingFromPeers < slots.count / 2 else {
            return .never
        }
        guard storesWaitingForSlot.isEmpty, let slot = self.slots?.take() else { return .later }
        guard let memory = poolSlot(slot, length: length).flatMap({ pool?.bytes(of: $0) }) else {
            giveBack(slot)
            return .never
        }
        slotsFillingFromPeers += 1
        return .slot(slot, memory: memory)
    }

    /// A slot from `takeSlot(forArrivingChunk:)` is filled, or given up on.
    func filledFromPeer(_ slot: Int) {
        slotsFillingFromPeers = max(0, slotsFillingFromPeers - 1)
        fetch?.slotsMayBeFree()
    }

    /// A slot taken for an arriving piece that did not go to the hash worker after all.
    func giveBack(_ slot: Int) {
        slots?.give(slot)
        startWaiting()
    }

    /// A piece message around slot `slot`'s chunk of `chunkLength` bytes: its header in the
    /// slot's lead room, then the chunk (nil: more than a slot holds, or no lead room).
    private func messageMemory(_ slot: Int, chunkLength: Int) -> UnsafeMutableRawBufferPointer? {
        guard chunkLength >= 0, let place = poolSlot(slot, length: chunkLength), place.offset >= PieceHeader.bytes
        else { return nil }
        return pool?.bytes(
            of: PoolSlot(
                offset: place.offset - UInt32(PieceHeader.bytes), length: place.length + UInt32(PieceHeader.bytes)))
    }

    /// Where slot `slot` lies in the pool, holding `length` bytes (nil: more than a slot holds).
    private func poolSlot(_ slot: Int, length: Int) -> PoolSlot? {
        guard let slots, length <= slots.slotBytes else { return nil }
        return PoolSlot(offset: UInt32(slots.offset(of: slot)), length: UInt32(length))
    }

    /// Asks the hash worker for chunk `index` into a slot, or queues the read for one.
    func readForUpload(_ read: Upload.ReadID, index: UInt32) {
        tally.chunksReadForPeers += 1
        guard readsWaitingForSlot.isEmpty, let slot = slots?.take() else {
            readsWaitingForSlot.append((read, index))
            return
        }
        lendForRead(read, index: index, slot: slot)
    }

    /// Lends `slot` to the hash worker to read chunk `index` into.
    private func lendForRead(_ read: Upload.ReadID, index: UInt32, slot: Int) {
        guard let slots, let place = poolSlot(slot, length: slots.slotBytes) else { return }
        readsAtHash[read] = slot
        sendToHash(.readChunk(requestID: read, index: index, slot: place))
    }

    /// Slots came back: what waited for one goes now, in order.
    func startWaiting() {
        while !storesWaitingForSlot.isEmpty, let slot = slots?.take() {
            let store = storesWaitingForSlot.removeFirst()
            store.data.withUnsafeBytes { self.store(index: store.index, bytes: $0, from: store.peer, in: slot) }
            if storesWaitingForSlot.isEmpty { fetch?.resumeReading() }
        }
        while !readsWaitingForSlot.isEmpty, let slot = slots?.take() {
            let (read, index) = readsWaitingForSlot.removeFirst()
            lendForRead(read, index: index, slot: slot)
        }
        fetch?.slotsMayBeFree()
    }

    /// Runs `body` over a chunk read for `Upload`, where it lies in the pool, then gives the
    /// slot back (or unpins it); nil when there is no such read.
    func withReadChunk<T>(_ read: Upload.ReadID, index: UInt32, _ body: (PooledPiece) -> T) -> T? {
        guard let held = readChunks.removeValue(forKey: read) else { return nil }
        defer { release(held) }
        // The header's room before the slot is ours too: a sealed piece is sealed from there.
        guard let memory = messageMemory(held.slot, chunkLength: held.length) else { return nil }
        return body(PooledPiece(index: index, message: memory))
    }

    /// Upload discarded a read: its slot comes back.
    func discardRead(_ read: Upload.ReadID) {
        if let held = readChunks.removeValue(forKey: read) { release(held) }
        readsWaitingForSlot.removeAll { $0.read == read }
    }

    /// A read is over: its slot goes back to the free ones, or (a cached verified chunk) is
    /// unpinned; whatever waited for a slot may go.
    private func release(_ held: (slot: Int, length: Int, cached: Bool)) {
        if held.cached { slots?.unpin(held.slot) } else { slots?.give(held.slot) }
        startWaiting()
    }

    /// Queues a request for the hash worker; what one turn of the event loop queues goes in
    /// one write, after the turn (a burst of small chunks costs one system call and one
    /// wake-up of the hash worker, not one per chunk).
    func sendToHash(_ message: ChunkRequest) {
        toHash.append(message)
        afterTurn()
    }

    private func setLimits(upload: UInt64, download: UInt64, perPeer: UInt64) {
        func changed(_ value: UInt64) -> Double? { value == LimitChange.unchanged ? nil : Double(value) }
        applyUpload(self.upload.setRates(upload: changed(upload), perPeer: changed(perPeer), now: now))
        if let rate = changed(download) {
            downloadRate = rate
            fetch?.setDownloadRate(rate)
        }
        let uploadRate = ByteRate.describe(self.upload.uploadBucket.rate)
        let perPeerRate = ByteRate.describe(self.upload.perPeerRate)
        logger.info(
            "limits now: upload \(uploadRate), download \(ByteRate.describe(downloadRate)), per peer \(perPeerRate)")
        tell(
            .status(
                requestID: 0,
                text:
                    "limits: upload \(uploadRate), download \(ByteRate.describe(downloadRate)), per-peer upload \(perPeerRate)"
            ))
    }

    private var reportedPlugins: Set<String> = []

    /// A plugin stage hung, crashed or answered garbage on this connection: the supervisor
    /// restarts it (once per plugin: it restarts this worker too).
    func reportPluginFailure(_ codec: WireCodec) {
        guard let (name, reason) = codec.failedPlugin, reportedPlugins.insert(name).inserted else { return }
        logger.error("\(reason)")
        tell(.pluginFailed(name: name, reason: reason))
    }

    /// Connects to the plugin stages' pipes (inherited on descriptors 6, 7, ...) and says hello.
    private func startPlugins() throws {
        var next: Int32 = WorkerDescriptor.firstPlugin
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
}
