import Foundation
import IPC
import Logging
import NIOCore
import NIOPosix
import Traversal
import WorkerRuntime

/// The relay's shell: accepts TCP connections, feeds what they say to the pure `RelayTable`
/// and does what it answers — sends control frames, closes connections, and splices the two
/// ends of a circuit. Spliced bytes are copied, never parsed (they are the peers' encrypted
/// protocol). Loop-confined.
final class RelayServer: @unchecked Sendable {
    let group: EventLoopGroup
    let loop: EventLoop
    let logger: Logger
    /// Bytes per second in each direction of each circuit (0: unlimited).
    let circuitRate: Double
    private var table: RelayTable
    private var channels: [Int: Channel] = [:]
    private var splices: [Int: SpliceHandler] = [:]
    private var preambles: [Int: FramedPreamble] = [:]
    /// Connections that have not sent their first control frame yet.
    private var silent: Set<Int> = []
    private var nextConnection = 1
    private var listener: Channel?
    private let startedAt = DispatchTime.now().uptimeNanoseconds
    private(set) var bridgedCircuits = 0
    /// Connections that have not sent their first control frame yet: they get 10 s.
    static let controlDeadline: TimeAmount = .seconds(10)
    static let maxConnections = 1024

    init(group: EventLoopGroup, limits: RelayTable.Limits, circuitRate: Double, logger: Logger) {
        self.group = group
        self.loop = group.next()
        self.table = RelayTable(limits: limits)
        self.circuitRate = circuitRate
        self.logger = logger
    }

    var now: Double { Double(DispatchTime.now().uptimeNanoseconds - startedAt) / 1e9 }

    /// For /metrics: registrations and open circuits (levels), circuits bridged (a total).
    var counters: [WorkerCounter] {
        [
            WorkerCounter("relay_registrations", UInt64(table.registrationCount)),
            WorkerCounter("relay_circuits", UInt64(table.circuitCount)),
            WorkerCounter("relay_bridged", UInt64(bridgedCircuits)),
        ]
    }

    var statusLine: String {
        "relay: \(table.registrationCount) registered, \(table.circuitCount) circuits, \(bridgedCircuits) bridged in all"
    }

    func start(host: String, port: Int) -> EventLoopFuture<Int> {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture { try accept(channel) }
            }
        return bootstrap.bind(host: host, port: port).map { [self] channel in
            listener = channel
            loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] _ in
                perform(table.tick(now: now))
            }
            let bound = channel.localAddress?.port ?? port
            logger.info("relay listening on \(host):\(bound)")
            return bound
        }
    }

    private func accept(_ channel: Channel) throws {
        guard channels.count < RelayServer.maxConnections else {
            channel.close(promise: nil)
            return
        }
        let id = nextConnection
        nextConnection += 1
        channels[id] = channel
        let remote = channel.remoteAddress
        table.opened(id, address: remote?.ipAddress ?? "?")
        let observed = remote?.wireAddress
        let preamble = FramedPreamble(maxFrameLength: RelayMessage.maxFrameLength) { [self] frame, _ in
            silent.remove(id)
            guard let observed, let message = try? RelayMessage(frame: frame) else {
                logger.info("relay: connection \(id) sent a malformed frame; closing")
                return .close
            }
            let directives = table.received(message, on: id, observed: observed, now: now) {
                (0..<RelayMessage.circuitBytes).map { _ in UInt8.random(in: 0...255) }
            }
            perform(directives)
            return directives.contains {
                if case .bridge(let a, let b) = $0 { return a == id || b == id } else { return false }
            }
                ? .pass : .more
        }
        let splice = SpliceHandler(server: self, id: id)
        splices[id] = splice
        preambles[id] = preamble
        try channel.pipeline.syncOperations.addHandlers([preamble, splice])
        channel.closeFuture.whenComplete { [self] _ in
            channels[id] = nil
            splices[id] = nil
            preambles[id] = nil
            silent.remove(id)
            perform(table.closed(id))
        }
        silent.insert(id)
        loop.scheduleTask(in: RelayServer.controlDeadline) { [self] in
            if silent.remove(id) != nil { channel.close(promise: nil) }
        }
    }

    private func perform(_ directives: [RelayTable.Directive]) {
        for directive in directives {
            switch directive {
            case .send(let message, let id):
                channels[id]?.writeAndFlush(ByteBuffer(bytes: message.frame().encoded()), promise: nil)
            case .close(let id, let reason):
                logger.debug("relay: closing connection \(id): \(reason)")
                channels[id]?.close(promise: nil)
            case .bridge(let a, let b):
                guard let channelA = channels[a], let channelB = channels[b], let spliceA = splices[a],
                    let spliceB = splices[b]
                else { continue }
                bridgedCircuits += 1
                spliceA.partner = channelB
                spliceB.partner = channelA
                spliceA.partnerSplice = spliceB
                spliceB.partnerSplice = spliceA
                let bridged = RelayMessage.bridged.frame().encoded()
                channelA.writeAndFlush(ByteBuffer(bytes: bridged), promise: nil)
                channelB.writeAndFlush(ByteBuffer(bytes: bridged), promise: nil)
                // Both ends stop framing now: one of them is mid-frame in its own preamble
                // (its `.pass`), the other is told here.
                preambles[a]?.pass()
                preambles[b]?.pass()
                logger.info("relay: circuit \(a)⇄\(b) bridged")
            }
        }
    }
}

/// One end of a circuit: copies what arrives to the other end, reads no faster than the
/// other end can write (autoRead off while it is not writable) or than the circuit's rate.
/// Loop-confined with its server (hence `@unchecked Sendable`).
final class SpliceHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    unowned let server: RelayServer
    let id: Int
    var partner: Channel?
    weak var partnerSplice: SpliceHandler?
    private var context: ChannelHandlerContext?
    /// When this direction may read again, at the circuit's rate.
    private var budgetTime = 0.0
    private var paused = false

    init(server: RelayServer, id: Int) {
        self.server = server
        self.id = id
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Bytes before the bridge are a protocol violation: the preamble passes none.
        guard let partner else { return context.close(promise: nil) }
        let buffer = unwrapInboundIn(data)
        let count = buffer.readableBytes
        partner.write(buffer, promise: nil)
        if server.circuitRate > 0 {
            let now = server.now
            budgetTime = max(budgetTime, now) + Double(count) / server.circuitRate
            if budgetTime > now + 0.05 { pause(for: budgetTime - now) }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        guard let partner else { return }
        partner.flush()
        if !partner.isWritable { pause(for: nil) }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partnerSplice?.resume() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        partner?.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    private func pause(for seconds: Double?) {
        guard let context, !paused else { return }
        paused = true
        context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        if let seconds {
            context.eventLoop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) { [self] in resume() }
        }
    }

    func resume() {
        guard let context, paused else { return }
        if let partner, !partner.isWritable { return }
        if server.circuitRate > 0 && budgetTime > server.now + 0.05 { return }
        paused = false
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
    }
}
