import IPC
import Logging
import NIOCore
import NIOPosix
import PeerShareCore
import PeerWire
import WorkerRuntime

/// Downloads one share from the peers it was given: connects to each, fetches the manifest
/// from the first that answers, then spreads chunk requests over every connected peer using
/// `ChunkScheduler`. Loop-confined, like everything in the transfer worker.
final class FetchSession {
    /// Connection attempts per peer address before it is given up on.
    static let maxAttempts = 4

    final class PeerConnection {
        let id: Int
        let address: String
        var channel: Channel?
        var accepted = false
        var refusals = 0
        init(id: Int, address: String) {
            self.id = id
            self.address = address
        }
    }

    let service: TransferService
    let shareID: [UInt8]
    let addresses: [String]
    var logger: Logger { service.logger }

    private var attempts: [String: Int] = [:]
    private var lastError: [String: String] = [:]
    /// Addresses whose chunks failed verification too often: never contacted again.
    private var bannedAddresses = Set<String>()
    private var connections: [Int: PeerConnection] = [:]
    private var nextPeerID = 1
    private var manifest: Manifest?
    private var manifestRequestedFrom: Int?
    private var scheduler: ChunkScheduler?
    private var finished = false
    private var reportedPeers = -1

    /// Tells the supervisor how many peers are connected, when that changes.
    private func reportPeerCount() {
        let count = connections.values.filter(\.accepted).count
        guard count != reportedPeers else { return }
        reportedPeers = count
        service.tell(.peerCount(count: UInt16(clamping: count)))
    }

    init(service: TransferService, shareID: [UInt8], peers: [String]) {
        self.service = service
        self.shareID = shareID
        self.addresses = peers
    }

    var statusLine: String {
        let verified = scheduler?.verifiedCount ?? 0
        return "fetching: \(connections.count) peers, \(verified)/\(manifest?.chunkCount ?? 0) chunks verified"
    }

    func start() {
        guard !addresses.isEmpty else {
            return failAll(code: 69, "no peers to download from (give --peer HOST:PORT or a link with peer hints)")
        }
        for address in addresses { connect(address) }
    }

    private func connect(_ address: String) {
        guard !finished, !bannedAddresses.contains(address) else { return }
        attempts[address, default: 0] += 1
        let connection = PeerConnection(id: nextPeerID, address: address)
        nextPeerID += 1
        connections[connection.id] = connection
        let parsed: PeerAddress
        do {
            parsed = try PeerAddress.parse(address)
        } catch {
            lastError[address] = "\(error)"
            connections[connection.id] = nil
            return checkAlive()
        }
        ClientBootstrap(group: service.group)
            .channelOption(ChannelOptions.recvAllocator, value: ChunkTrafficReads.allocator)
            .connectTimeout(.seconds(5))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        IdleStateHandler(readTimeout: .seconds(30)),
                        FrameChannelDecoder.handler(maxFrameLength: PeerMessage.maxFrameLength),
                        MessageToByteHandler(FrameChannelEncoder()),
                        FetchHandler(session: self, peerID: connection.id),
                    ])
                }
            }
            .connect(host: parsed.host, port: parsed.port)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    connection.channel = channel
                    send(.hello(version: PeerMessage.version, shareID: shareID), to: connection)
                case .failure(let error):
                    lastError[address] = "\(error)"
                    logger.info("cannot reach \(address): \(error)")
                    connectionClosed(peerID: connection.id)
                }
            }
    }

    private func send(_ message: PeerMessage, to connection: PeerConnection) {
        connection.channel?.writeAndFlush(message.frame(), promise: nil)
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
            message = try PeerMessage(frame: frame)
        } catch {
            return drop(connection, reason: "bad message: \(error)")
        }
        switch message {
        case .helloAccepted(let version, _):
            guard version == PeerMessage.version, !connection.accepted else {
                return drop(connection, reason: "unexpected handshake reply")
            }
            connection.accepted = true
            attempts[connection.address] = 0
            reportPeerCount()
            logger.info("connected to \(connection.address)")
            if manifest == nil && manifestRequestedFrom == nil {
                manifestRequestedFrom = peerID
                send(.getManifest, to: connection)
            } else {
                requestMore(from: connection)
            }
        case .manifest(let bytes):
            guard manifestRequestedFrom == peerID, manifest == nil else {
                return drop(connection, reason: "sent a manifest nobody asked for")
            }
            guard ShareID(manifestBytes: bytes).bytes == shareID else {
                manifestRequestedFrom = nil
                return drop(connection, reason: "sent a manifest that does not match the share id")
            }
            do {
                manifest = try Manifest.decode(bytes)
            } catch {
                return failAll(code: 65, "the share's manifest is unsafe or malformed: \(error)")
            }
            service.tell(.manifestReceived(manifest: bytes))
        case .piece(let index, let data):
            guard var scheduler else { return drop(connection, reason: "sent a piece before any request") }
            let verdict = scheduler.pieceArrived(index: Int(index), from: peerID)
            self.scheduler = scheduler
            switch verdict {
            case .unexpected: return drop(connection, reason: "sent chunk \(index) it was not asked for")
            case .duplicate: break  // an endgame copy that lost the race
            case .verify: service.tell(.chunkReceived(index: index, data: data, peer: connection.address))
            }
            requestMore(from: connection)
        case .reject(let index, let reason):
            scheduler?.pieceRefused(index: Int(index), by: peerID)
            connection.refusals += 1
            logger.warning("peer \(connection.address) refused chunk \(index): \(reason)")
            if connection.refusals >= 3 {
                drop(connection, reason: "refused \(connection.refusals) chunks")
            } else {
                requestMoreFromAll()
            }
        case .error(let code, let text):
            drop(connection, reason: "error \(code): \(text)")
        default:
            drop(connection, reason: "unexpected \(message.tag) message")
        }
    }

    func connectionClosed(peerID: Int) {
        guard let connection = connections.removeValue(forKey: peerID) else { return }
        scheduler?.peerLeft(peerID)
        if !finished { reportPeerCount() }
        if manifestRequestedFrom == peerID && manifest == nil { manifestRequestedFrom = nil }
        guard !finished else { return }
        requestMoreFromAll()
        if manifest == nil, manifestRequestedFrom == nil,
            let other = connections.values.first(where: { $0.accepted })
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
        if pending.isEmpty {
            let reasons = addresses.map { "\($0) (\(lastError[$0] ?? "unknown error"))" }.joined(separator: ", ")
            var missing = ""
            if let indices = scheduler?.missingIndices, !indices.isEmpty {
                let shown = indices.prefix(10).map(String.init).joined(separator: ", ")
                missing = " \(indices.count) chunks missing: \(shown)\(indices.count > 10 ? ", ..." : "")."
            }
            failAll(code: 69, "could not reach any peer that has the share: \(reasons).\(missing)")
        }
    }

    private func failAll(code: UInt16, _ reason: String) {
        guard !finished else { return }
        finished = true
        service.tell(.fetchFailed(code: code, reason: reason))
        for connection in connections.values { connection.channel?.close(promise: nil) }
    }

    // MARK: Events from the supervisor

    func start(verified: [UInt8]) {
        guard let manifest, scheduler == nil else { return }
        let bitfield = ChunkBitfield(bytes: verified, count: manifest.chunkCount)
        scheduler = ChunkScheduler(
            chunkCount: manifest.chunkCount, verified: bitfield, maxInFlightPerPeer: service.requestsInFlight)
        if scheduler?.isComplete == true { return finish() }
        requestMoreFromAll()
    }

    func verdict(index: Int, accepted: Bool) {
        guard var scheduler else { return }
        let outcome = scheduler.verificationResult(index: index, accepted: accepted)
        self.scheduler = scheduler
        switch outcome {
        case .accepted:
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
        logger.info("all chunks verified; closing peer connections")
        for connection in connections.values { connection.channel?.close(promise: nil) }
    }

    private func requestMoreFromAll() {
        for connection in connections.values.sorted(by: { $0.id < $1.id }) { requestMore(from: connection) }
    }

    private func requestMore(from connection: PeerConnection) {
        guard connection.accepted, scheduler != nil, !finished, let manifest else { return }
        scheduler?.peerJoined(connection.id)
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
            guard let index = scheduler?.nextRequests(for: connection.id, max: 1).first else {
                // Tokens taken for nothing go back by being owed no more: refund the chunk.
                if !service.downloadBucket.isUnlimited { service.downloadBucket.refund(manifest.chunkSize) }
                break
            }
            connection.channel?.write(PeerMessage.request(index: UInt32(index)).frame(), promise: nil)
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
        session.logger.warning("peer connection error: \(error)")
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            session.logger.warning("peer sent nothing for 30 s; disconnecting")
            context.close(promise: nil)
        }
    }
}
