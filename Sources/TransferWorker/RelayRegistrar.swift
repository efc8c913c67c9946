import IPC
import Logging
import NIOCore
import NIOPosix
import PeerShareCore
import PeerWire
import Traversal
import Wire
import WorkerRuntime

/// A seeder's registrations with relays: one control connection to each, kept open (and
/// made again after a pause when it drops), on which the relay says a downloader is
/// waiting (`incoming`). For each, a second connection `attach`es to that circuit and, once
/// `bridged`, serves the downloader exactly as an accepted connection would. Loop-confined
/// (hence `@unchecked Sendable`: NIO callbacks run on the same loop).
final class RelayRegistrar: @unchecked Sendable {
    unowned let service: TransferService
    let key: [UInt8]
    let relays: [String]
    private var controls: [String: Channel] = [:]
    private var failures: [String: Int] = [:]
    private var stopped = false
    /// Attach connections not yet bridged: a relay cannot make us hold more.
    private var attaching = 0
    static let maxAttaching = 16

    init(service: TransferService, key: [UInt8], relays: [String]) {
        self.service = service
        self.key = key
        self.relays = relays
    }

    var logger: Logger { service.logger }

    func start() {
        for relay in relays { register(with: relay) }
    }

    func stop() {
        stopped = true
        for channel in controls.values { channel.close(promise: nil) }
    }

    private func register(with relay: String) {
        guard !stopped, let address = try? PeerAddress.parse(relay) else { return }
        ClientBootstrap(group: service.group)
            .connectTimeout(.seconds(5))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        FramedPreamble(maxFrameLength: RelayMessage.maxFrameLength) { [self] frame, _ in
                            control(frame, from: relay)
                        })
                }
            }
            .connect(host: address.host, port: address.port)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    controls[relay] = channel
                    channel.writeAndFlush(
                        ByteBuffer(bytes: RelayMessage.register(key: key).frame().encoded()), promise: nil)
                    channel.closeFuture.whenComplete { [self] _ in
                        controls[relay] = nil
                        again(relay, "the relay closed the connection")
                    }
                case .failure(let error):
                    again(relay, "\(error)")
                }
            }
    }

    /// Registers again after 1, 2, 4 ... 30 s: a relay that restarts gets us back.
    private func again(_ relay: String, _ reason: String) {
        guard !stopped else { return }
        let tries = failures[relay, default: 0]
        failures[relay] = tries + 1
        let seconds = min(30, 1 << min(tries, 5))
        logger.info("relay \(relay): \(reason); registering again in \(seconds) s")
        service.loop.scheduleTask(in: .seconds(Int64(seconds))) { [self] in register(with: relay) }
    }

    private func control(_ frame: Frame, from relay: String) -> FramedPreamble.Next {
        switch try? RelayMessage(frame: frame) {
        case .registered(let observed):
            failures[relay] = 0
            logger.info("registered with relay \(relay), which sees us at \(observed)")
            service.tell(.relayRegistered(relay: relay, observed: observed.description))
            return .more
        case .incoming(let circuit, let from):
            logger.info("relay \(relay): a downloader at \(from) is waiting")
            attach(circuit, at: relay)
            return .more
        case .refused(_, let text):
            logger.warning("relay \(relay) refused our registration: \(text)")
            return .close
        default:
            logger.info("relay \(relay) sent an unexpected frame; closing")
            return .close
        }
    }

    private func attach(_ circuit: [UInt8], at relay: String) {
        guard attaching < RelayRegistrar.maxAttaching, let address = try? PeerAddress.parse(relay) else { return }
        attaching += 1
        let state = AttachState()
        state.relayHost = address.host
        // From a reusable port: if the relay introduces us, we punch from the port it saw.
        PunchDialer.bootstrap(group: service.group, localPort: 0, timeout: .seconds(5))
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        FramedPreamble(maxFrameLength: RelayMessage.maxFrameLength) { [self] frame, context in
                            switch try? RelayMessage(frame: frame) {
                            case .peer(let id, let observed, let listenPort) where id == circuit && !state.introduced:
                                state.introduced = true
                                let port = context.channel.localAddress?.port ?? 0
                                reachOut(
                                    circuit, to: observed.peerAddress, listenPort: Int(listenPort), from: port,
                                    state: state)
                                return .more
                            case .bridged:
                                state.done = true
                                state.bridged = true
                                attaching -= 1
                                return .pass
                            default:
                                return .close
                            }
                        })
                    try service.addServeHandlers(to: channel, relayed: true)
                }
            }
            .connect(host: address.host, port: address.port)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    channel.writeAndFlush(
                        OutgoingFrame.frame(RelayMessage.attach(circuit: circuit).frame()), promise: nil)
                    channel.closeFuture.whenComplete { [self] _ in
                        state.done = true
                        if !state.bridged { attaching -= 1 }
                    }
                case .failure(let error):
                    attaching -= 1
                    logger.info("relay \(relay): cannot attach: \(error)")
                }
            }
    }

    /// The relay introduced a downloader: dial it from the port the relay saw us at (the
    /// downloader dials us at the same time: a punch), and dial its listening port as well
    /// (a reverse connection, which works whenever the downloader accepts connections).
    /// Each connection serves exactly as an accepted one; the downloader keeps one.
    private func reachOut(
        _ circuit: [UInt8], to target: PeerAddress, listenPort: Int, from port: Int, state: AttachState
    ) {
        guard let relayHost = state.relayHost, DialPolicy.mayDial(target, introducedBy: relayHost) else {
            logger.warning("a relay asked us to dial \(target); not an address a peer can have: refused")
            return
        }
        logger.info("relay introduced a downloader at \(target); punching from port \(port)")
        PunchDialer.punch(
            group: service.group, loop: service.loop, from: port, to: target,
            initializer: { [self] channel in try service.addServeHandlers(to: channel) },
            stop: { state.done || state.direct },
            connected: { channel in
                state.direct = true
                channel.closeFuture.whenComplete { _ in state.direct = false }
                // Names the circuit first, as on every connection made for one.
                channel.writeAndFlush(OutgoingFrame.frame(RelayMessage.attach(circuit: circuit).frame()), promise: nil)
            })
        guard listenPort > 0 else { return }
        let listening = PeerAddress(host: target.host, port: listenPort)
        ClientBootstrap(group: service.group)
            .connectTimeout(.seconds(2))
            .channelOption(ChannelOptions.recvAllocator, value: ChunkTrafficReads.allocator)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture { try service.addServeHandlers(to: channel) }
            }
            .connect(host: listening.host, port: listening.port)
            .whenSuccess { [self] channel in
                logger.info("reverse connection to \(listening) for a relay circuit")
                // Names the circuit first: the downloader's listener turns the connection around.
                channel.writeAndFlush(OutgoingFrame.frame(RelayMessage.attach(circuit: circuit).frame()), promise: nil)
            }
    }
}

/// Whether an attach connection has been bridged (then it no longer counts as attaching).
/// Loop-confined, like the registrar that makes it.
private final class AttachState: @unchecked Sendable {
    var bridged = false
    var introduced = false
    /// Bridged, or the attach connection closed: no more dialling for this circuit.
    var done = false
    /// A punched connection is up.
    var direct = false
    var relayHost: String?
}
