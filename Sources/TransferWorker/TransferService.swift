import Foundation
import IPC
import Logging
import NIOCore
import NIOPosix
import PeerShareCore
import PeerWire
import WorkerRuntime

/// The transfer worker: every peer connection lives here, and nothing else. It never opens a
/// file: chunks to serve come from the hash worker through the supervisor (`readChunk`), and
/// chunks downloaded go back the same way (`chunkReceived`) to be verified and written.
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
    /// Pieces waiting for upload tokens, oldest first: with equal request depths every peer
    /// gets an equal share of a limited upload.
    private var uploadQueue: [(ServeHandler, PeerMessage)] = []
    private var uploadPumpScheduled = false
    private let startedAt = DispatchTime.now().uptimeNanoseconds

    // Serving.
    var servedShareID: [UInt8]?
    var servedManifest: [UInt8]?
    var servedChunkCount = 0
    var listener: Channel?
    var servingConnections = 0
    private var nextLocalRequest: UInt32 = 1
    /// readChunk requests sent to the supervisor, by our request id.
    var pendingReads: [UInt32: (ServeHandler, UInt32)] = [:]

    // Fetching.
    var fetch: FetchSession?

    /// Seconds since start on the monotonic clock: the time the buckets are given.
    var now: Double { Double(DispatchTime.now().uptimeNanoseconds - startedAt) / 1e9 }

    public init(
        logger: Logger, pipe: WorkerPipe, requestsInFlight: Int, maxPeers: Int, maxUploadRate: Double = 0,
        maxDownloadRate: Double = 0
    ) {
        self.uploadBucket = TokenBucket(rate: maxUploadRate, now: 0)
        self.downloadBucket = TokenBucket(rate: maxDownloadRate, now: 0)
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.loop = group.next()
        self.logger = logger
        self.pipe = pipe
        self.requestsInFlight = requestsInFlight
        self.maxPeers = maxPeers
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
        loop.execute { [self] in onSupervisor(message) }
    }

    /// Sends to the supervisor; a broken pipe means the supervisor is gone, so we go too.
    func tell(_ message: IPCMessage) { pipe.sendOrExit(message, logger: logger) }

    private func onSupervisor(_ message: IPCMessage) {
        switch message {
        case .serve(let shareID, let manifest, let host, let port):
            startServing(shareID: shareID, manifest: manifest, host: host, port: Int(port))
        case .chunkData(let id, let index, let data):
            if let (handler, _) = pendingReads.removeValue(forKey: id) { handler.deliver(index: index, data: data) }
        case .failure(let id, _, let text):
            if let (handler, index) = pendingReads.removeValue(forKey: id) {
                handler.refuse(index: index, reason: text)
            }
        case .fetch(let shareID, let peers):
            if fetch == nil {
                let session = FetchSession(service: self, shareID: shareID, peers: peers)
                fetch = session
                session.start()
            }
        case .startChunks(let verified):
            fetch?.start(verified: verified)
        case .chunkResult(let index, let accepted):
            fetch?.verdict(index: Int(index), accepted: accepted)
        default:
            logger.warning("ignoring unexpected \(message.tag) from the supervisor")
        }
    }

    // MARK: Serving

    private func startServing(shareID: [UInt8], manifest: [UInt8], host: String, port: Int) {
        guard listener == nil else { return }
        do {
            servedChunkCount = try Manifest.decode(manifest).chunkCount
        } catch {
            tell(.failure(requestID: 0, code: 65, message: "cannot serve: \(error)"))
            return
        }
        servedShareID = shareID
        servedManifest = manifest
        ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(ChannelOptions.recvAllocator, value: ChunkTrafficReads.allocator)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        IdleStateHandler(readTimeout: .seconds(120)),
                        FrameChannelDecoder.handler(maxFrameLength: PeerMessage.maxFrameLength),
                        MessageToByteHandler(FrameChannelEncoder()),
                        ServeHandler(service: self),
                    ])
                }
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
                    logger.error("cannot listen on \(host):\(port): \(error)")
                    tell(.failure(requestID: 0, code: 69, message: "cannot listen on \(host):\(port): \(error)"))
                }
            }
    }

    /// Asks the hash worker (through the supervisor) for a chunk on behalf of a connection.
    func requestChunk(_ index: UInt32, for handler: ServeHandler) {
        let id = nextLocalRequest
        nextLocalRequest &+= 1
        pendingReads[id] = (handler, index)
        tell(.readChunk(requestID: id, index: index))
    }

    func forget(_ handler: ServeHandler) {
        pendingReads = pendingReads.filter { $0.value.0 !== handler }
        uploadQueue.removeAll { $0.0 === handler }
    }

    /// Sends a piece now, or queues it until the upload limit allows.
    func upload(_ message: PeerMessage, via handler: ServeHandler) {
        uploadQueue.append((handler, message))
        pumpUploads()
    }

    private func pumpUploads() {
        while let (handler, message) = uploadQueue.first {
            let bytes = if case .piece(_, let data) = message { data.count } else { 0 }
            let wait = uploadBucket.take(bytes, now: now)
            if wait > 0 {
                guard !uploadPumpScheduled else { return }
                uploadPumpScheduled = true
                loop.scheduleTask(in: .microseconds(Int64(wait * 1e6))) { [self] in
                    uploadPumpScheduled = false
                    pumpUploads()
                }
                return
            }
            uploadQueue.removeFirst()
            handler.send(message)
        }
    }
}

/// One inbound peer connection: handshake, manifest, then chunk requests answered in order.
final class ServeHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    /// A well-behaved downloader keeps a handful of requests outstanding; hundreds is a flood.
    static let maxOutstanding = 64

    let service: TransferService
    var context: ChannelHandlerContext?
    var greeted = false
    var outstanding = 0
    var peer = "?"

    init(service: TransferService) {
        self.service = service
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        peer = context.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?"
    }

    func channelActive(context: ChannelHandlerContext) {
        service.servingConnections += 1
        if service.servingConnections > service.maxPeers {
            fail(.busy, "too many peers")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        service.servingConnections -= 1
        service.forget(self)
        self.context = nil
        service.logger.debug("peer \(peer) disconnected")
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        service.logger.warning("peer \(peer): \(error); disconnecting")
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            service.logger.info("peer \(peer) idle for too long; disconnecting")
            context.close(promise: nil)
        }
    }

    func send(_ message: PeerMessage) {
        context?.writeAndFlush(wrapOutboundOut(message.frame()), promise: nil)
    }

    private func fail(_ code: PeerMessage.ErrorCode, _ text: String) {
        service.logger.warning("peer \(peer): \(text); disconnecting")
        send(.error(code: code.rawValue, message: text))
        context?.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message: PeerMessage
        do {
            message = try PeerMessage(frame: unwrapInboundIn(data))
        } catch {
            fail(.protocolViolation, "bad message: \(error)")
            return
        }
        switch message {
        case .hello(let version, let shareID):
            guard !greeted else { return fail(.protocolViolation, "hello sent twice") }
            guard version == PeerMessage.version else {
                return fail(.versionMismatch, "version \(version) not supported (we speak \(PeerMessage.version))")
            }
            guard shareID == service.servedShareID else { return fail(.unknownShare, "we do not have that share") }
            greeted = true
            service.logger.info("peer \(peer) connected")
            send(.helloAccepted(version: PeerMessage.version, chunkCount: UInt32(service.servedChunkCount)))
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
            service.requestChunk(index, for: self)
        default:
            fail(.protocolViolation, "unexpected \(message.tag) message")
        }
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
