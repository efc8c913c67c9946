import Foundation
import Kademlia
import NIOCore
import NIOPosix

/// The IO around one `DHTNode`: a UDP socket, a monotonic clock, a 100 ms tick and a timer
/// for the node's next query deadline. It moves packets and turns the node's directives into
/// sends and completed futures; all Kademlia decisions are the node's. Loop-confined.
public final class DHTShell: @unchecked Sendable {
    public let loop: EventLoop
    public private(set) var node: DHTNode
    private var channel: Channel?
    private let startedAt = DispatchTime.now().uptimeNanoseconds
    private var waiting: [DHTNode.LookupID: EventLoopPromise<DHTNode.LookupResult>] = [:]
    private var tracers: [DHTNode.LookupID: (String) -> Void] = [:]
    private var ticker: RepeatedTask?
    /// The timer set for `node.nextDeadline`, and when it fires.
    private var deadline: (task: Scheduled<Void>, at: Double)?
    public private(set) var port: Int = 0
    public private(set) var oversized = 0

    init(loop: EventLoop, node: DHTNode) {
        self.loop = loop
        self.node = node
    }

    /// Seconds since the shell started, from the monotonic clock: the node's only notion of time.
    public var now: Double { Double(DispatchTime.now().uptimeNanoseconds - startedAt) / 1e9 }

    /// Binds a UDP socket and starts a node on it.
    public static func start(
        host: String, port: Int, id: NodeID? = nil, config: DHTNode.Config = .init(), on loop: EventLoop
    ) -> EventLoopFuture<DHTShell> {
        var system = SystemRandomNumberGenerator()
        let node = DHTNode(
            id: id ?? NodeID.random(using: &system), now: 0, seed: system.next(), config: config)
        let shell = DHTShell(loop: loop, node: node)
        // No SO_REUSEADDR: on UDP it lets the kernel hand the same ephemeral port to two
        // sockets, and one of them then never receives anything.
        return DatagramBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(DHTPacketHandler(shell: shell))
                }
            }
            .bind(host: host, port: port)
            .map { channel in
                shell.channel = channel
                shell.port = channel.localAddress?.port ?? port
                shell.ticker = loop.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(100)) {
                    _ in shell.perform(shell.node.tick(now: shell.now))
                }
                return shell
            }
    }

    public func close() -> EventLoopFuture<Void> {
        ticker?.cancel()
        deadline?.task.cancel()
        deadline = nil
        for promise in waiting.values { promise.fail(ChannelError.ioOnClosedChannel) }
        waiting.removeAll()
        return channel?.close() ?? loop.makeSucceededVoidFuture()
    }

    func received(_ bytes: [UInt8], from address: NodeAddress) {
        perform(node.receive(bytes, from: address, now: now))
    }

    func countOversized() { oversized += 1 }

    private func perform(_ directives: [DHTNode.Directive]) {
        defer { armDeadline() }
        for directive in directives {
            switch directive {
            case .send(let bytes, let address):
                guard let channel, let remote = try? SocketAddress(ipAddress: address.host, port: Int(address.port))
                else { continue }
                let envelope = AddressedEnvelope(remoteAddress: remote, data: channel.allocator.buffer(bytes: bytes))
                channel.writeAndFlush(envelope, promise: nil)
            case .lookupFinished(let id, let result):
                tracers[id] = nil
                waiting.removeValue(forKey: id)?.succeed(result)
            case .trace(let id, let line):
                tracers[id]?(line)
            }
        }
    }

    /// A soft timeout of tens of milliseconds cannot wait for the 100 ms tick: the timer is set
    /// for the node's earliest deadline whenever that moves earlier.
    private func armDeadline() {
        guard channel != nil, let next = node.nextDeadline else { return }
        if let deadline, deadline.at <= next { return }
        deadline?.task.cancel()
        let delay = TimeAmount.nanoseconds(Int64(max(0, next - now) * 1e9) + 1_000_000)
        let task = loop.scheduleTask(in: delay) { [self] in
            deadline = nil
            perform(node.expire(now: now))
        }
        deadline = (task, next)
    }

    private func track(_ started: (DHTNode.LookupID, [DHTNode.Directive]), trace: ((String) -> Void)?)
        -> EventLoopFuture<DHTNode.LookupResult>
    {
        let promise = loop.makePromise(of: DHTNode.LookupResult.self)
        waiting[started.0] = promise
        if let trace { tracers[started.0] = trace }
        perform(started.1)
        return promise.futureResult
    }

    public func bootstrap(routers: [NodeAddress]) -> EventLoopFuture<DHTNode.LookupResult> {
        track(node.bootstrap(routers: routers, now: now), trace: nil)
    }

    public func restore(_ nodes: [NodeInfo]) { perform(node.restore(nodes, now: now)) }

    public func ping(_ address: NodeAddress) { perform(node.ping(address, now: now)) }

    public func lookup(_ target: NodeID, kind: Lookup.Kind, trace: ((String) -> Void)? = nil)
        -> EventLoopFuture<DHTNode.LookupResult>
    {
        track(node.lookup(target, kind: kind, trace: trace != nil, now: now), trace: trace)
    }

    public func announce(_ key: NodeID, port: UInt16, trace: ((String) -> Void)? = nil)
        -> EventLoopFuture<DHTNode.LookupResult>
    {
        track(node.announce(key, port: port, trace: trace != nil, now: now), trace: trace)
    }

    public func exportState() -> [UInt8] { node.exportState(now: now) }

    /// Stops re-announcing a key (the share is paused or gone; its entries at other nodes
    /// expire on their own).
    public func stopAnnouncing(_ key: NodeID) { node.stopAnnouncing(key) }

    /// BEP 43 read-only mode (loop-confined, like every use of `node`).
    public func setReadOnly(_ readOnly: Bool) { node.readOnly = readOnly }
}

/// Datagrams in: IPv4 only (BEP 5's compact formats carry IPv4), at most one KRPC packet.
final class DHTPacketHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let shell: DHTShell

    init(shell: DHTShell) {
        self.shell = shell
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard case .v4(let v4) = envelope.remoteAddress, let port = envelope.remoteAddress.port else { return }
        guard envelope.data.readableBytes <= KRPC.maxPacketSize else {
            shell.countOversized()
            return
        }
        let ip = UInt32(bigEndian: v4.address.sin_addr.s_addr)
        shell.received(Array(envelope.data.readableBytesView), from: NodeAddress(ip: ip, port: UInt16(port)))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // ICMP port unreachable and the like surface here; the node sees them as timeouts.
    }
}
