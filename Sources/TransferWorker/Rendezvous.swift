import IPC
import Logging
import NIOCore
import NIOPosix
import PeerShareCore
import PeerWire
import Traversal
import Wire
import WorkerRuntime

/// Dials for hole punching: from a given local port, with SO_REUSEADDR and SO_REUSEPORT so
/// the port can also hold the connection to the relay that observed it.
enum PunchDialer {
    static let reusePort = ChannelOptions.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT))

    static func bootstrap(group: EventLoopGroup, localPort: Int, timeout: TimeAmount) -> ClientBootstrap {
        ClientBootstrap(group: group)
            .channelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .channelOption(reusePort, value: 1)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelOption(ChannelOptions.recvAllocator, value: ChunkTrafficReads.allocator)
            .connectTimeout(timeout)
            .bind(to: anyAddress(port: localPort))
    }

    /// 0.0.0.0:port, built directly (no text to parse, nothing to fail).
    static func anyAddress(port: Int) -> SocketAddress {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(clamping: port).bigEndian
        return SocketAddress(address, host: "0.0.0.0")
    }

    /// Dials `target` at each of `PunchPlan.dialOffsets` until one connects or `stop()` says
    /// so; `connected` gets the first channel (its pipeline still empty).
    static func punch(
        group: EventLoopGroup, loop: EventLoop, from localPort: Int, to target: PeerAddress,
        initializer: (@Sendable (Channel) throws -> Void)? = nil, stop: @escaping @Sendable () -> Bool,
        connected: @escaping @Sendable (Channel) -> Void
    ) {
        for offset in PunchPlan.dialOffsets {
            loop.scheduleTask(in: .milliseconds(Int64(offset * 1000))) {
                guard !stop() else { return }
                bootstrap(
                    group: group, localPort: localPort, timeout: .milliseconds(Int64(PunchPlan.dialTimeout * 1000))
                )
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try initializer?(channel) }
                }
                .connect(host: target.host, port: target.port)
                .whenSuccess { channel in
                    if stop() { channel.close(promise: nil) } else { connected(channel) }
                }
            }
        }
    }
}

/// A downloader's way to a seeder through a relay: it connects to the relay from a port it
/// can reuse, asks for the seeder with `punch`, and once the relay has introduced the two,
/// dials the seeder from that same port while the seeder dials back (hole punching) — and
/// may reach our listener directly (a reverse connection). The first of those that works
/// carries the peer protocol; if none has within `PunchPlan.window`, the relay bridges.
/// Loop-confined.
final class Rendezvous: @unchecked Sendable {
    unowned let session: DownloadShell
    let connection: DownloadShell.PeerConnection
    let relay: PeerAddress
    let key: [UInt8]
    private var control: Channel?
    private var localPort = 0
    private(set) var circuit: [UInt8]?
    private var settled = false
    private var punching = false
    private var windowOver = false
    private var introducedAt = 0.0

    init(session: DownloadShell, connection: DownloadShell.PeerConnection, relay: PeerAddress, key: [UInt8]) {
        self.session = session
        self.connection = connection
        self.relay = relay
        self.key = key
    }

    var service: TransferService { session.service }

    func start() {
        PunchDialer.bootstrap(group: service.group, localPort: 0, timeout: .seconds(5))
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        FramedPreamble(maxFrameLength: RelayMessage.maxFrameLength) { [self] frame, context in
                            answered(frame, context: context)
                        })
                }
            }
            .connect(host: relay.host, port: relay.port)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    control = channel
                    localPort = channel.localAddress?.port ?? 0
                    // Where a seeder may dial back: the port the router forwards, else our own.
                    let listenPort =
                        service.listener == nil
                        ? 0 : service.publicListenPort ?? UInt16(clamping: service.listener?.localAddress?.port ?? 0)
                    channel.writeAndFlush(
                        ByteBuffer(
                            bytes: RelayMessage.connect(key: key, listenPort: listenPort, punch: service.relayPunch)
                                .frame().encoded()),
                        promise: nil)
                    channel.closeFuture.whenComplete { [self] _ in controlClosed() }
                case .failure(let error):
                    session.rendezvousFailed(connection, reason: "\(error)")
                }
            }
    }

    private func answered(_ frame: Frame, context: ChannelHandlerContext) -> FramedPreamble.Next {
        switch try? RelayMessage(frame: frame) {
        case .peer(let circuit, let observed, _):
            guard self.circuit == nil else { return .close }
            self.circuit = circuit
            introducedAt = service.now
            session.rendezvousIntroduced(self)
            guard DialPolicy.mayDial(observed.peerAddress, introducedBy: relay.host) else {
                // Not a peer's address (loopback, our LAN, multicast): wait for the bridge.
                service.logger.warning("relay \(relay) introduced a seeder at \(observed); not dialling that")
                punching = true
                scheduleFallback()
                return .more
            }
            punch(to: observed.peerAddress)
            return .more
        case .bridged:
            guard !settled else { return .close }
            settled = true
            connection.path = "relayed via \(relay)"
            do {
                try session.addDownloadHandlers(to: context.channel, for: connection)
            } catch {
                return .close
            }
            let channel = context.channel
            context.eventLoop.execute { [self] in session.attached(connection, channel: channel) }
            return .pass
        case .refused(_, let text):
            session.rendezvousFailed(connection, reason: "the relay refused: \(text)")
            return .close
        default:
            session.rendezvousFailed(connection, reason: "the relay sent something unexpected")
            return .close
        }
    }

    private func punch(to target: PeerAddress) {
        punching = true
        service.logger.info("relay \(relay) introduced the seeder at \(target); punching from port \(localPort)")
        PunchDialer.punch(
            group: service.group, loop: service.loop, from: localPort, to: target,
            stop: { [self] in settled || windowOver },
            connected: { [self] channel in
                // The seeder names the circuit first: only then is this our seeder, and not
                // whatever else answered on that address and port.
                let check = FramedPreamble(maxFrameLength: RelayMessage.maxFrameLength) { [self] frame, _ in
                    guard case .attach(let named) = try? RelayMessage(frame: frame), named == circuit else {
                        return .close
                    }
                    return adopt(channel, path: "punched") ? .pass : .close
                }
                do {
                    try channel.pipeline.syncOperations.addHandler(check)
                } catch {
                    channel.close(promise: nil)
                }
                // A connection that never names the circuit is not kept waiting.
                channel.eventLoop.scheduleTask(in: .seconds(5)) { [self] in
                    if connection.channel !== channel { channel.close(promise: nil) }
                }
            })
        scheduleFallback()
    }

    /// After the punch window: ask the relay to bridge, unless a direct path was found.
    private func scheduleFallback() {
        service.loop.scheduleTask(in: .milliseconds(Int64(PunchPlan.window * 1000))) { [self] in
            windowOver = true
            guard !settled else { return }
            if let control, control.isActive {
                service.logger.info(
                    "no direct path to the seeder after \(PunchPlan.window) s; asking the relay to bridge")
                control.writeAndFlush(ByteBuffer(bytes: RelayMessage.relay.frame().encoded()), promise: nil)
            } else {
                session.rendezvousFailed(connection, reason: "the relay left and no direct path worked")
            }
        }
    }

    /// A direct connection for this circuit: punched (our dial) or reversed (the seeder
    /// dialled our listener and named the circuit). The first is kept; the relay is left.
    /// `reversed`: the channel comes from our listener with its framing in place, and needs
    /// only the downloader's handler.
    @discardableResult
    func adopt(_ channel: Channel, path: String, reversed: Bool = false) -> Bool {
        guard PunchPlan.choose(alreadySettled: settled) == .keep else {
            channel.close(promise: nil)
            return false
        }
        settled = true
        let milliseconds = Int((service.now - introducedAt) * 1000)
        connection.path = "\(path) (\(milliseconds) ms after the introduction)"
        do {
            if reversed {
                try channel.pipeline.syncOperations.addHandlers([
                    FramesAsArriving(), DownloadHandler(session: session, peerID: connection.id),
                ])
            } else {
                try session.addDownloadHandlers(to: channel, for: connection)
            }
        } catch {
            channel.close(promise: nil)
            return false
        }
        control?.close(promise: nil)
        session.attached(connection, channel: channel)
        return true
    }

    private func controlClosed() {
        guard !settled else { return }
        // Mid-punch, a punch may still work; otherwise the attempt is over.
        if !punching || windowOver { session.rendezvousFailed(connection, reason: "the relay closed the connection") }
    }
}
