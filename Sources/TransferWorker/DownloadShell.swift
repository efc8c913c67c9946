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

/// The transfer worker's shell around one `Download` (Swarm): it makes the connections the
/// download asks for — direct, or through a relay's rendezvous (`Rendezvous`) — speaks the
/// hello and the pipeline's handshake on each, and passes everything above that to the
/// Instance, carrying out the directives it returns. No swarm decision is made here.
/// Loop-confined, like everything in the transfer worker (hence `@unchecked Sendable`: NIO's
/// callbacks for its connections run on that same loop).
final class DownloadShell: @unchecked Sendable {
    /// One connection to a peer, below the swarm: its channel, codec and handshake state.
    /// Loop-confined with its shell.
    final class PeerConnection: @unchecked Sendable {
        let id: Int
        /// HOST:PORT, or the relay's HOST:PORT for a connection through a relay.
        let address: String
        /// What our hello named the share by (a fresh tag per connection when encrypted).
        var helloID: [UInt8] = []
        var channel: Channel?
        /// The peer accepted our hello (its handshake may still be running).
        var accepted = false
        /// The share's chunk count, as the peer's hello reply says.
        var chunkCount = 0
        let codec: WireCodec
        /// How the connection reached the peer ("direct", "relayed via HOST:PORT"), and when
        /// the attempt began: both are said once the peer accepts.
        var path = "direct"
        let startedAt: Double
        /// Why we closed it, for the Instance when the channel is gone.
        var closeReason: String?
        init(id: Int, address: String, now: Double, pipeline: PipelineSetup) {
            self.id = id
            self.address = address
            self.startedAt = now
            self.codec = WireCodec(setup: pipeline, role: .client)
        }
    }

    let service: TransferService
    let shareID: [UInt8]
    private(set) var download: Download
    var logger: Logger { service.logger }
    private var connections: [Int: PeerConnection] = [:]
    /// The piece being handed to the Instance: its bytes go to the hash worker if the
    /// Instance says `verify`. Plaintext pieces stay in the socket's read buffer until then.
    private var arrivingPiece: ArrivingChunk = .none
    /// Pieces that reached the pool straight from the socket's buffer (copied once, or
    /// opened there), and pieces decoded through the pipeline's stages first: said when the
    /// download ends, for whoever follows a chunk's path.
    private var piecesStraightIntoPool = 0
    private var piecesDecoded = 0
    /// Of the first, those gathered whole in memory before going into a slot: no slot was
    /// to be had as their bytes came (`ArrivingPieceSlot.never`).
    private var piecesGatheredWhole = 0
    /// Connections that stopped reading until a slot is free for the piece they have begun
    /// (`ArrivingFrameReader`), oldest first; and whether they are about to be woken.
    private var readersWaitingForSlot: [(reader: ArrivingFrameReader, peerID: Int)] = []
    private var wakingReaders = false

    private enum ArrivingChunk {
        case none
        case decoded([UInt8])
        case inPlace(ByteBuffer)
        /// Opened from a sealed piece straight into this slot of the pool (`length` bytes).
        case inSlot(slot: Int, length: Int)
    }

    init(service: TransferService, shareID: [UInt8], peers: [String]) {
        self.service = service
        self.shareID = shareID
        var config = Download.Config()
        config.maxPeers = service.maxPeers
        config.initialDepth = service.requestsInFlight
        config.downloadRate = service.downloadRate
        // Two downloaders of one seeder should not pick the same random chunks.
        config.seed =
            UInt64(truncatingIfNeeded: shareID.prefix(8).reduce(0) { $0 << 8 | Int($1) }) ^ UInt64(getpid())
        download = Download(shareID: shareID, peers: peers, config: config)
    }

    var statusLine: String {
        "fetching: \(connections.count) peers, \(download.verifiedCount)/\(download.chunkCount) chunks verified"
    }

    func isVerified(_ index: Int) -> Bool { download.isVerified(index) }

    /// Reading from the peers is paused while arrived chunks wait for a slot of the pool.
    private(set) var readingPaused = false

    func pauseReading() {
        guard !readingPaused else { return }
        readingPaused = true
        for connection in connections.values {
            try? connection.channel?.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
        }
    }

    func resumeReading() {
        guard readingPaused else { return }
        readingPaused = false
        // Not those still waiting for a slot for the piece they have begun.
        let waiting = Set(readersWaitingForSlot.map(\.peerID))
        for connection in connections.values where !waiting.contains(connection.id) {
            try? connection.channel?.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
        }
    }
    var bannedCount: Int { download.bannedAddresses.count }
    var connectedCount: Int { connections.count }

    // MARK: Events from the supervisor, passed to the Instance

    func start() { apply(download.start(relays: service.relayRoutes, now: service.now)) }
    func add(peers: [String], nearby: Bool) { apply(download.peersFound(peers, nearby: nearby, now: service.now)) }
    func setDownloadRate(_ rate: Double) { apply(download.setDownloadRate(rate, now: service.now)) }
    /// Relays arrived after the start (the supervisor resolved them late).
    func relaysKnown() { apply(download.relaysKnown(service.relayRoutes, now: service.now)) }
    func start(verified: [UInt8]) { apply(download.chunksOnDisk(verified, now: service.now)) }
    func verdict(index: Int, accepted: Bool) {
        apply(download.verdict(index: index, accepted: accepted, now: service.now))
    }

    // MARK: Directives

    private func apply(_ directives: [Download.Directive]) {
        var written: [Int: Channel] = [:]
        for directive in directives {
            switch directive {
            case .connect(let id, let address, let viaRelay):
                open(id, address: address, viaRelay: viaRelay)
            case .send(let message, let id):
                guard let connection = connections[id], let channel = connection.channel else { continue }
                do {
                    channel.write(try connection.codec.frame(message), promise: nil)
                    written[id] = channel
                } catch {
                    service.reportPluginFailure(connection.codec)
                    drop(connection, reason: "\(error)")
                }
            case .close(let id, let reason):
                if let connection = connections[id] { drop(connection, reason: reason) }
            case .verify(let index, let id):
                let address = connections[id]?.address ?? "?"
                switch arrivingPiece {
                case .inSlot(let slot, let length):
                    // Already where the hash worker reads it: the slot goes with the request.
                    service.store(index: UInt32(index), length: length, from: address, inPlace: slot)
                    arrivingPiece = .none
                case .inPlace(let buffer):
                    buffer.withUnsafeReadableBytes { service.store(index: UInt32(index), bytes: $0, from: address) }
                case .decoded(let bytes):
                    bytes.withUnsafeBytes { service.store(index: UInt32(index), bytes: $0, from: address) }
                case .none:
                    // The Instance says `verify` only for the piece in hand; should it not, the
                    // hash worker refuses the empty chunk, and the Instance hears so.
                    service.store(
                        index: UInt32(index), bytes: UnsafeRawBufferPointer(start: nil, count: 0), from: address)
                }
            case .manifestVerified(let bytes, let chunkSize, let largestChunk):
                service.useSlots(chunkSize: chunkSize, largestChunk: largestChunk)
                for connection in connections.values { connection.codec.decodeLimit = chunkSize + 64 }
                service.tell(.manifestReceived(manifest: bytes))
            case .peerCount(let count):
                service.tell(.peerCount(count: UInt16(clamping: count)))
            case .announceHave(let index):
                service.announceHave(index)
            case .event(let text):
                service.tell(.peerEvent(text: text))
            case .log(.info, let text):
                logger.info("\(text)")
            case .log(.warning, let text):
                logger.warning("\(text)")
            case .wake(let at):
                let delay = max(0, at - service.now)
                service.loop.scheduleTask(in: .microseconds(Int64(delay * 1e6))) { [self] in
                    apply(download.tick(now: service.now))
                }
            case .finished:
                logger.info(
                    "\(piecesStraightIntoPool + piecesDecoded) pieces arrived: \(piecesStraightIntoPool) went straight from the socket's buffer into the chunk pool, \(piecesDecoded) were decoded through the pipeline's stages first; \(piecesGatheredWhole) of the first were gathered whole before a slot was to be had; at most \(service.tally.mostChunksWaitingForSlot) waited at once for a slot, and at most \(service.tally.mostConnectionsWaitingForSlot) connections stopped reading at once to wait for one"
                )
                for connection in connections.values { connection.channel?.close(promise: nil) }
            case .failed(let code, let reason):
                service.tell(.fetchFailed(code: code, reason: reason))
                for connection in connections.values { connection.channel?.close(promise: nil) }
            }
        }
        for channel in written.values { service.flushAfterTurn(channel) }
    }

    private func open(_ id: Int, address: PeerAddress, viaRelay: Bool) {
        let connection = PeerConnection(
            id: id, address: viaRelay ? Download.relayPrefix + "\(address)" : "\(address)", now: service.now,
            pipeline: service.pipeline)
        if download.chunkSize > 0 { connection.codec.decodeLimit = download.chunkSize + 64 }
        connections[id] = connection
        if viaRelay {
            // A rendezvous through the relay: punched, reversed, or bridged by the relay when
            // neither works.
            guard let key = service.relayKey else {
                return connectionClosed(peerID: id, reason: "no share key to name the share at relays")
            }
            connection.path = "via relay \(address)"
            let rendezvous = Rendezvous(session: self, connection: connection, relay: address, key: key)
            rendezvousByPeer[id] = rendezvous
            rendezvous.start()
            return
        }
        ClientBootstrap(group: service.group)
            .channelOption(ChannelOptions.recvAllocator, value: ChunkTrafficReads.allocator)
            .connectTimeout(.seconds(5))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture { try addDownloadHandlers(to: channel, for: connection) }
            }
            .connect(host: address.host, port: address.port)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel): attached(connection, channel: channel)
                case .failure(let error):
                    logger.info("cannot reach \(address): \(error)")
                    connectionClosed(peerID: id, reason: "\(error)")
                }
            }
    }

    /// The downloader's side of the peer protocol on a connection, however it was made.
    func addDownloadHandlers(to channel: Channel, for connection: PeerConnection) throws {
        try channel.pipeline.syncOperations.addHandlers([
            IdleStateHandler(readTimeout: .seconds(30)),
            ArrivingFrameReader(room: self, peerID: connection.id),
            MessageToByteHandler(FrameChannelEncoder()),
            DownloadHandler(session: self, peerID: connection.id),
        ])
    }

    /// A connection to the peer is ready (direct, punched, reversed or relayed): say hello.
    func attached(_ connection: PeerConnection, channel: Channel) {
        guard connections[connection.id] === connection else {
            channel.close(promise: nil)
            return
        }
        connection.channel = channel
        // Opened while arrived chunks wait for the pool: it waits with the others.
        if readingPaused { try? channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false) }
        connection.helloID = service.pipeline.helloID(for: shareID)
        // Through a relay the far end is the relay: nothing to tell the seeder then.
        let relayed = connection.path.hasPrefix("relayed")
        send(
            .hello(
                version: PeerMessage.version, shareID: connection.helloID, stages: service.pipeline.descriptors,
                observed: relayed ? nil : channel.remoteAddress?.wireAddress),
            to: connection)
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
        logger.info("\(connection.address): \(reason)")
        connectionClosed(peerID: connection.id, reason: reason)
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
        connection.closeReason = reason
        service.tell(.peerEvent(text: "peer \(connection.address): \(reason)"))
        connection.channel?.close(promise: nil)
    }

    // MARK: Events from connections

    /// A frame from a peer. A plaintext piece on a connection that sends plaintext goes to
    /// the Instance as it lies in the read buffer, or in the slot it was read into;
    /// everything else is decoded first.
    func received(_ arriving: ArrivingFrame, from peerID: Int) {
        switch arriving {
        case .sealed(let payload): return receivedSealed(payload, from: peerID)
        case .pieceInSlot(let index, let slot, let length):
            service.filledFromPeer(slot)
            guard connections[peerID] != nil, !download.finished else { return service.giveBack(slot) }
            return receivedInSlot(index: index, slot: slot, length: length, from: peerID)
        case .piece(let index, let chunk):
            guard let connection = connections[peerID], !download.finished else { return }
            // A connection with stages sends nothing in plaintext once they are agreed: the
            // codec refuses the frame in its own words.
            guard connection.accepted, !connection.codec.sealed, !connection.codec.awaitingHandshake else {
                return received(arriving.frame, from: peerID)
            }
            arrivingPiece = .inPlace(chunk)
            piecesStraightIntoPool += 1
            piecesGatheredWhole += 1
            apply(download.receivedPiece(index: index, bytes: chunk.readableBytes, from: peerID, now: service.now))
            arrivingPiece = .none
        case .frame(let frame): received(frame, from: peerID)
        }
    }

    /// A piece already in a slot of the pool (read or opened into it): the Instance decides,
    /// and the slot goes to the hash worker with it, or back.
    private func receivedInSlot(index: UInt32, slot: Int, length: Int, from peerID: Int) {
        arrivingPiece = .inSlot(slot: slot, length: length)
        piecesStraightIntoPool += 1
        apply(download.receivedPiece(index: index, bytes: length, from: peerID, now: service.now))
        // Not handed to the hash worker (a duplicate, say): the slot comes back.
        if case .inSlot(let slot, _) = arrivingPiece { service.giveBack(slot) }
        arrivingPiece = .none
    }

    /// A large sealed frame. With encryption the only stage, it is opened straight into a
    /// free slot of the pool (header into the slot's lead room): a piece is then already
    /// where the hash worker reads it, with no copy. Otherwise it is decoded as any frame.
    private func receivedSealed(_ payload: ByteBuffer, from peerID: Int) {
        guard let connection = connections[peerID], !download.finished else { return }
        let messageBytes = payload.readableBytes - connection.codec.sealOverhead
        guard connection.accepted, connection.codec.sealsInPlace, messageBytes >= PieceHeader.bytes,
            let room = service.takeSlot(forSealedPiece: messageBytes)
        else {
            return received(ArrivingFrame.sealed(payload: payload).frame, from: peerID)
        }
        let opened: UnsafeRawBufferPointer
        do {
            let length = try payload.withUnsafeReadableBytes {
                try connection.codec.open(sealed: $0, into: room.memory)
            }
            opened = UnsafeRawBufferPointer(rebasing: room.memory[..<length])
        } catch {
            service.giveBack(room.slot)
            return drop(connection, reason: "\(error)")
        }
        guard let piece = PieceHeader.parse(opened) else {
            // Some other large message (or a malformed piece): parsed, and refused, as usual.
            let message = Result { try PeerMessage(innerBytes: Array(opened)) }
            service.giveBack(room.slot)
            do {
                return handle(try message.get(), on: connection)
            } catch {
                return drop(connection, reason: "\(error)")
            }
        }
        receivedInSlot(index: piece.index, slot: room.slot, length: piece.length, from: peerID)
    }

    /// A frame from a peer: the hello reply and the pipeline's handshake are handled here;
    /// everything else goes to the Instance.
    private func received(_ frame: Frame, from peerID: Int) {
        guard let connection = connections[peerID], !download.finished else { return }
        let message: PeerMessage
        do {
            message = try connection.codec.message(from: frame)
        } catch {
            service.reportPluginFailure(connection.codec)
            return drop(connection, reason: "\(error)")
        }
        handle(message, on: connection)
    }

    private func handle(_ message: PeerMessage, on connection: PeerConnection) {
        let peerID = connection.id
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
            let ours = service.pipeline.descriptors
            let context = connection.helloID + StageDescriptor.encoded(ours) + StageDescriptor.encoded(stages)
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
                    "peer \(connection.address): encrypted (\(connection.codec.cipher.map { "\($0)" } ?? "?")); its peer id is \(connection.codec.remotePeerID ?? "?")"
                )
                established(connection)
            }
        case .piece(_, let data):
            arrivingPiece = .decoded(data)
            piecesDecoded += 1
            apply(download.received(message, from: peerID, now: service.now))
            arrivingPiece = .none
        default:
            apply(download.received(message, from: peerID, now: service.now))
        }
    }

    /// Past the hello and any stage handshake: the swarm may use the peer.
    private func established(_ connection: PeerConnection) {
        let milliseconds = Int((service.now - connection.startedAt) * 1000)
        logger.info("connected to \(connection.address), \(connection.path), in \(milliseconds) ms")
        // "direct", "reversed", "punched", "relayed via …", "via relay …": the first word that
        // names the path, for /metrics.
        let kind =
            ["direct", "mapped", "reversed", "punched", "relayed"].first { connection.path.contains($0) } ?? "other"
        service.tally.connections[kind, default: 0] += 1
        service.tell(
            .peerEvent(text: "peer \(connection.address): connected, \(connection.path), in \(milliseconds) ms"))
        apply(download.established(connection.id, chunkCount: connection.chunkCount, now: service.now))
    }

    /// A framing or socket error on a connection: say which peer and why, then drop it.
    func connectionError(peerID: Int, _ error: Error) {
        guard let connection = connections[peerID] else { return }
        drop(connection, reason: "\(error)")
    }

    func connectionClosed(peerID: Int, reason: String? = nil) {
        guard let connection = connections.removeValue(forKey: peerID) else { return }
        if let rendezvous = rendezvousByPeer.removeValue(forKey: peerID), let circuit = rendezvous.circuit {
            rendezvousByCircuit[circuit] = nil
        }
        connection.codec.close()
        apply(download.closed(peerID, reason: reason ?? connection.closeReason, now: service.now))
    }
}

/// The downloader's end of one peer connection.
extension DownloadShell: ArrivingPieceRoom {
    /// A slot for a plaintext piece arriving on a connection that may send plaintext pieces:
    /// accepted, with no stages agreed or pending.
    func slot(forArrivingPiece length: Int, peerID: Int) -> ArrivingPieceSlot {
        guard let connection = connections[peerID], !download.finished, connection.accepted,
            !connection.codec.sealed, !connection.codec.awaitingHandshake
        else { return .never }
        return service.takeSlot(forArrivingChunk: length)
    }

    func abandon(slot: Int) {
        service.filledFromPeer(slot)
        service.giveBack(slot)
    }

    func waitForSlot(_ reader: ArrivingFrameReader, peerID: Int) {
        // Once in the list: one that got a slot on its own stays there until the next wake.
        if !readersWaitingForSlot.contains(where: { $0.reader === reader }) {
            readersWaitingForSlot.append((reader, peerID))
        }
        service.tally.mostConnectionsWaitingForSlot = max(
            service.tally.mostConnectionsWaitingForSlot, UInt64(readersWaitingForSlot.count))
        try? connections[peerID]?.channel?.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
    }

    /// Slots came back, or a slot filling from a peer was filled: readers waiting for one
    /// try again, oldest first, after this turn of the loop (not inside the code that gave
    /// the slot back).
    func slotsMayBeFree() {
        guard !readersWaitingForSlot.isEmpty, !wakingReaders else { return }
        wakingReaders = true
        service.loop.execute { [self] in
            wakingReaders = false
            // Every reader in the list, oldest first, not only up to the first that still
            // waits: one behind it may have got a slot on its own, or stopped waiting, and
            // its connection is not read until it is taken off the list. (A retry may add
            // or take off readers: the list is walked as it was.)
            for (reader, peerID) in readersWaitingForSlot {
                guard readersWaitingForSlot.contains(where: { $0.reader === reader }), reader.retry() else { continue }
                readersWaitingForSlot.removeAll { $0.reader === reader }
                // Read again, unless every connection waits for chunks to get slots.
                if !readingPaused {
                    try? connections[peerID]?.channel?.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
                }
            }
        }
    }
}

final class DownloadHandler: ChannelInboundHandler {
    typealias InboundIn = ArrivingFrame
    let session: DownloadShell
    let peerID: Int

    init(session: DownloadShell, peerID: Int) {
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
