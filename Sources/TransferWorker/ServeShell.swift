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

/// The serving side of the transfer worker: the listener, the hello and handshake of each
/// inbound connection (`ServeHandler`), and the shell around `Upload`, which decides when
/// chunks are read and sent.
extension TransferService {

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
        for handler in serveHandlers.values { handler.send(.have(index: UInt32(index)), afterTurn: true) }
    }

    /// Listens, and serves the share once its manifest is known. A download listens from
    /// its start with no manifest yet (hellos are refused until then), so that a seeder
    /// behind a NAT can reach it (a reverse connection) before it has a single chunk.
    ///
    /// A download's `serve` carries no manifest: it serves the one it fetched (and checked),
    /// so the 6.5 MB of a 100,000-file share are not sent back to it, nor kept twice. Until
    /// that has arrived (a restarted worker fetching it again), it only listens.
    func startServing(shareID: [UInt8], manifest given: [UInt8], host: String, port: Int) {
        var newlyServing = false
        if servedShareID == nil {
            let served: Manifest?
            if !given.isEmpty {
                do {
                    served = try Manifest.decode(given)
                } catch {
                    tell(.failure(requestID: 0, code: 65, message: "cannot serve: \(error)"))
                    return
                }
            } else if servingPartial, fetch?.shareID == shareID {
                served = fetch?.download.manifest
            } else {
                served = nil
            }
            if let served {
                servedChunkCount = served.chunkCount
                servedManifest = served.encoded()
                useSlots(chunkSize: served.chunkSize, largestChunk: served.largestChunkLength)
                servedShareID = shareID
                newlyServing = true
            }
        }
        if let listener {
            // Said again only when something changed: the supervisor answers `serving` with
            // the same `serve` (to replay after a restart), which must not loop.
            if newlyServing, let bound = listener.localAddress?.port { tell(.serving(port: UInt16(bound))) }
            return
        }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(ChannelOptions.recvAllocator, value: ChunkTrafficReads.allocator)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture { try addServeHandlers(to: channel) }
            }
        // The daemon's sleeping share: its port is already bound and listening, and peers
        // may be waiting in its backlog for us to accept them.
        let bound = inheritedListener.map { bootstrap.withBoundSocket($0) } ?? bootstrap.bind(host: host, port: port)
        bound
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    listener = channel
                    let bound = channel.localAddress?.port ?? port
                    logger.info("listening on \(host):\(bound)")
                    tell(.serving(port: UInt16(bound)))
                case .failure(let error):
                    logger.debug("cannot listen on \(host):\(port): \(error)")
                    tell(.listenFailed(reason: "cannot listen on \(host):\(port): \(error)"))
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
            FrameChannelWriter(),
            ServeHandler(service: self, frameLimit: limit, relayed: relayed),
        ])
    }

    // MARK: Uploads: `Upload`'s directives

    /// Carries out what `Upload` decided: reads (from the pool when the chunk was just
    /// verified here, else by the hash worker), pieces to send, refusals, failures, and the
    /// wake-up the limits need.
    func applyUpload(_ directives: [Upload.Directive]) {
        var readFromPool: [(Upload.ReadID, Int)] = []
        for directive in directives {
            switch directive {
            case .read(let read, let index, _):
                if let cached = slots?.pin(Int(index)) {
                    readChunks[read] = (cached.slot, cached.length, true)
                    tally.chunksServedFromPool += 1
                    readFromPool.append((read, cached.length))
                } else {
                    readForUpload(read, index: index)
                }
            case .sendPiece(let read, let index, let id):
                guard let handler = serveHandlers[id] else {
                    discardRead(read)
                    continue
                }
                let sent = withReadChunk(read, index: index) { piece in
                    handler.sendPiece(piece)
                    return piece.chunk.count
                }
                guard let sent else { continue }
                tally.piecesSent += 1
                tally.bytesSent += UInt64(sent)
            case .discard(let read):
                discardRead(read)
            case .refuse(let index, let reason, let id):
                serveHandlers[id]?.send(.reject(index: index, reason: reason))
            case .fail(let id, let reason):
                serveHandlers[id]?.fail(.protocolViolation, reason)
            case .wake(let at):
                let delay = max(0, at - now)
                loop.scheduleTask(in: .microseconds(Int64(delay * 1e6))) { [self] in
                    applyUpload(upload.tick(now: now))
                }
            }
        }
        // After the batch, as if the hash worker had answered at once.
        for (read, length) in readFromPool { applyUpload(upload.readDone(read, bytes: length, now: now)) }
    }

    /// A connection is past its handshake: requests from it now count.
    func opened(_ handler: ServeHandler) {
        serveHandlers[handler.id] = handler
        upload.opened(handler.id, now: now)
    }

    /// A connection is gone: whatever was read or queued for it is dropped.
    func forget(_ handler: ServeHandler) {
        guard serveHandlers.removeValue(forKey: handler.id) != nil else { return }
        applyUpload(upload.closed(handler.id))
    }
}

/// One inbound peer connection: handshake, manifest, then chunk requests answered in order.
/// Loop-confined, like everything in the transfer worker (hence `@unchecked Sendable`).
final class ServeHandler: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = Frame
    typealias OutboundOut = OutgoingFrame

    /// Before the hello is accepted: the largest frame (a hello is under 2 KiB, a stage's
    /// handshake message at most 4 KiB plus its header), the time allowed to complete the
    /// whole handshake (bytes do not extend it), and how many connections may be at that
    /// stage at once, from one address and in all.
    static let handshakeFrameLength = 8 * 1024
    static let handshakeDeadline: TimeAmount = .seconds(10)
    static let maxHandshakingPerAddress = 4
    static let maxHandshaking = 32

    let service: TransferService
    /// How `Upload` knows this connection.
    let id: Int
    var context: ChannelHandlerContext?
    var greeted = false
    var peer = "?"
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
        self.id = service.nextServeConnection
        service.nextServeConnection += 1
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

    /// Sends a chunk whose bytes lie in a slot of the chunk pool; when the socket has taken
    /// it, the next chunk may be read. With no stage on the connection the frame is built
    /// around the bytes straight from the slot (one copy, into the buffer the socket is
    /// written from); with encryption alone, sealed from the slot into that buffer (no copy);
    /// through other stages, as any message.
    func sendPiece(_ piece: PooledPiece) {
        guard let context else { return }
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenComplete { [self] _ in
            service.applyUpload(service.upload.written(id, now: service.now))
        }
        let chunk = piece.chunk
        guard codec.sealed else {
            var buffer = context.channel.allocator.buffer(capacity: Frame.headerSize + 8 + chunk.count)
            buffer.writeInteger(UInt32(2 + 8 + chunk.count))
            buffer.writeInteger(PeerMessage.Tag.piece.rawValue)
            buffer.writeInteger(piece.index)
            buffer.writeInteger(UInt32(chunk.count))
            buffer.writeBytes(chunk)
            flushPiece(.encoded(buffer), promise: promise, context: context)
            return
        }
        if codec.sealsInPlace {
            // Sealed from the pool (header in the slot's lead room, then the chunk) straight
            // into the buffer the socket is written from.
            let message = piece.message()
            let sealedBytes = message.count + codec.sealOverhead
            var buffer = context.channel.allocator.buffer(capacity: 4 + 2 + sealedBytes)
            buffer.writeInteger(UInt32(2 + sealedBytes))
            buffer.writeInteger(PeerMessage.sealedFrameType)
            let written = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: sealedBytes) {
                codec.seal(message: message, into: $0) ?? 0
            }
            guard written == sealedBytes else {
                promise.fail(WireCodec.Failure.stage("sodium", "cannot seal chunk \(piece.index)"))
                service.logger.warning("peer \(peer): cannot seal chunk \(piece.index); disconnecting")
                context.close(promise: nil)
                return
            }
            flushPiece(.encoded(buffer), promise: promise, context: context)
            return
        }
        do {
            let message = PeerMessage.piece(index: piece.index, data: Array(chunk))
            context.writeAndFlush(wrapOutboundOut(.frame(try codec.frame(message))), promise: promise)
        } catch {
            promise.fail(error)
            service.logger.warning("peer \(peer): \(error); disconnecting")
            service.reportPluginFailure(codec)
            context.close(promise: nil)
        }
    }

    /// A small piece is flushed after this turn of the loop with the turn's others (a burst
    /// of 10 KiB chunks is one TCP send, not one each); a large one at once, so that its
    /// buffer is in the socket, and free, before the next one is built (a burst of 512 KiB
    /// pieces held to the end of the turn took a downloader serving seven peers 12 MiB more).
    private func flushPiece(_ piece: OutgoingFrame, promise: EventLoopPromise<Void>, context: ChannelHandlerContext) {
        guard case .encoded(let buffer) = piece, buffer.readableBytes < 64 * 1024 else {
            return context.writeAndFlush(wrapOutboundOut(piece), promise: promise)
        }
        context.write(wrapOutboundOut(piece), promise: promise)
        service.flushAfterTurn(context.channel)
    }

    /// Sends now, or with `afterTurn` after this turn of the event loop with the turn's other
    /// writes to this peer (a `have` per chunk verified costs one TCP send per burst). Only
    /// what is not followed by a close may wait: a close drops writes not yet flushed.
    func send(_ message: PeerMessage, afterTurn: Bool = false) {
        guard let context else { return }
        do {
            context.write(wrapOutboundOut(.frame(try codec.frame(message))), promise: nil)
            if afterTurn { service.flushAfterTurn(context.channel) } else { context.flush() }
        } catch {
            service.logger.warning("peer \(peer): \(error); disconnecting")
            service.reportPluginFailure(codec)
            context.close(promise: nil)
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
        // The download side writes plain frames: the serving encoder (which also takes
        // pre-built pieces) gives way to the ordinary one, in the same place.
        do {
            let pipeline = context.pipeline.syncOperations
            let served = try pipeline.handler(type: FrameChannelWriter.self)
            try pipeline.addHandler(MessageToByteHandler(FrameChannelEncoder()), position: .before(self))
            pipeline.removeHandler(served, promise: nil)
        } catch {
            return fail(.protocolViolation, "cannot turn the connection around: \(error)")
        }
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
                // A download whose worker was restarted listens before it has fetched the
                // manifest again: "not yet", which peers retry, not "never".
                if service.servedShareID == nil, let fetching = service.fetch?.shareID,
                    service.pipeline.accepts(helloID: helloID, for: fetching)
                {
                    return fail(.busy, "not serving that share yet (its manifest is on its way); try again")
                }
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
                service.logger.info(
                    "peer \(peer): encrypted (\(codec.cipher.map { "\($0)" } ?? "?")); its peer id is \(codec.remotePeerID ?? "?")"
                )
                welcome()
            }
        case .getManifest where greeted:
            send(.manifest(bytes: service.servedManifest ?? []))
        case .request(let index) where greeted:
            guard Int(index) < service.servedChunkCount else {
                return fail(.protocolViolation, "request for chunk \(index) of \(service.servedChunkCount)")
            }
            service.applyUpload(
                service.upload.requested(id, index: index, servable: service.mayServe(Int(index)), now: service.now))
        case .cancel(let index) where greeted:
            service.applyUpload(service.upload.cancelled(id, index: index, now: service.now))
        default:
            fail(.protocolViolation, "unexpected \(message.tag) message")
        }
    }

    /// Past the hello (and the encryption handshake, if any): offer what we have.
    private func welcome() {
        leaveHandshakeQuota()
        established = true
        service.servingConnections += 1
        service.tally.peersServed += 1
        guard service.servingConnections <= service.maxPeers else { return fail(.busy, "too many peers") }
        service.opened(self)
        send(.bitfield(bits: service.servableBitfield().bytes))
    }
}

/// A chunk to send, where it lies in the pool: the slot, and before it the room for its
/// message header (`ChunkSlots.leadBytes`), which is the transfer worker's to write.
struct PooledPiece {
    let index: UInt32
    /// Header room, then the chunk.
    let header: UnsafeMutableRawBufferPointer
    let chunk: UnsafeRawBufferPointer

    private let full: UnsafeMutableRawBufferPointer

    init(index: UInt32, message: UnsafeMutableRawBufferPointer) {
        self.index = index
        self.full = message
        self.header = UnsafeMutableRawBufferPointer(rebasing: message[..<PieceHeader.bytes])
        self.chunk = UnsafeRawBufferPointer(rebasing: message[PieceHeader.bytes...])
    }

    /// The whole piece message (`PieceHeader`, then the chunk), its header written now.
    func message() -> UnsafeRawBufferPointer {
        PieceHeader.write(index: index, length: chunk.count, into: header)
        return UnsafeRawBufferPointer(full)
    }
}
