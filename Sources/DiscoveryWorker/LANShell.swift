import CSystemShims
import Foundation
import LocalDiscovery
import NIOCore
import NIOPosix

/// The IO around one `LocalDiscovery`: a socket per family bound to BEP 14's port and joined to
/// its group on every LAN interface the supervisor named, and a sending socket per interface
/// (TTL 1, so announces never leave the link). All decisions are the Instance's. Loop-confined.
final class LANShell: @unchecked Sendable {
    /// One interface as the supervisor enumerated it (this process cannot: its sandbox has no
    /// netlink socket): its index and its addresses with prefix lengths.
    struct Interface: Equatable {
        var index: UInt32
        var networks: [LocalDiscovery.LocalNetwork]

        /// "INDEX ADDRESS/PREFIX ..." as `lanStart` carries it.
        init?(_ line: String) {
            let parts = line.split(separator: " ")
            guard let first = parts.first, let index = UInt32(first), index > 0 else { return nil }
            self.index = index
            networks = parts.dropFirst().compactMap { part in
                let pieces = part.split(separator: "/")
                guard pieces.count == 2, let prefix = Int(pieces[1]), let bytes = LANShell.bytes(of: String(pieces[0]))
                else { return nil }
                return LocalDiscovery.LocalNetwork(address: bytes, prefixLength: prefix)
            }
        }

        var hasIPv4: Bool { networks.contains { $0.address.count == 4 } }
        var hasIPv6: Bool { networks.contains { $0.address.count == 16 } }
    }

    let loop: EventLoop
    private(set) var discovery: LocalDiscovery
    private let interfaces: [Interface]
    private var receivers: [Channel] = []
    private var senders: [(LocalDiscovery.Group, Channel)] = []
    private let startedAt = DispatchTime.now().uptimeNanoseconds
    private var wake: Scheduled<Void>?
    /// Called with each peer found (key, "IP:PORT").
    var onFound: (([UInt8], String) -> Void)?
    private(set) var problems: [String] = []

    var now: Double { Double(DispatchTime.now().uptimeNanoseconds - startedAt) / 1e9 }

    init(loop: EventLoop, interfaces: [Interface]) {
        self.loop = loop
        self.interfaces = interfaces
        var groups: [LocalDiscovery.Group] = []
        if interfaces.contains(where: \.hasIPv4) { groups.append(.ipv4) }
        if interfaces.contains(where: \.hasIPv6) { groups.append(.ipv6) }
        var random = SystemRandomNumberGenerator()
        discovery = LocalDiscovery(
            cookie: String(random.next() as UInt64, radix: 16), networks: interfaces.flatMap(\.networks),
            groups: groups)
    }

    /// Binds and joins what it can; a family or an interface that fails is reported in
    /// `problems` and left out, the rest works.
    func start() -> EventLoopFuture<Void> {
        var steps: [EventLoopFuture<Void>] = []
        if interfaces.contains(where: \.hasIPv4) {
            steps.append(
                receiver(host: "0.0.0.0").flatMap { [self] channel in
                    receivers.append(channel)
                    let joins = interfaces.filter(\.hasIPv4).map { join(channel, ipv4Group: $0) }
                    return EventLoopFuture.andAllSucceed(joins, on: loop)
                })
        }
        if interfaces.contains(where: \.hasIPv6) {
            steps.append(
                receiver(host: "::").flatMap { [self] channel in
                    receivers.append(channel)
                    let joins = interfaces.filter(\.hasIPv6).map { join(channel, ipv6Group: $0) }
                    return EventLoopFuture.andAllSucceed(joins, on: loop)
                })
        }
        for interface in interfaces {
            if interface.hasIPv4 { steps.append(sender(.ipv4, interface)) }
            if interface.hasIPv6 { steps.append(sender(.ipv6, interface)) }
        }
        let recorded = steps.map { step in
            step.recover { [self] error in problems.append("\(error)") }
        }
        return EventLoopFuture.andAllSucceed(recorded, on: loop)
    }

    private func receiver(host: String) -> EventLoopFuture<Channel> {
        var bootstrap = DatagramBootstrap(group: loop)
            // Every PeerShare process on this host binds the same port and hears every announce.
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
        if host == "::" {
            // The IPv6 socket hears IPv6 only; IPv4 has its own (and the option is IPv6's).
            bootstrap = bootstrap.channelOption(
                ChannelOptions.Types.SocketOption(
                    level: NIOBSDSocket.OptionLevel(rawValue: Int32(IPPROTO_IPV6)),
                    name: NIOBSDSocket.Option(rawValue: IPV6_V6ONLY)),
                value: 1)
        }
        return
            bootstrap
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(LANDatagramHandler(shell: self))
                }
            }
            .bind(host: host, port: LocalDiscovery.Group.port)
    }

    private func sender(_ group: LocalDiscovery.Group, _ interface: Interface) -> EventLoopFuture<Void> {
        DatagramBootstrap(group: loop)
            .bind(host: group == .ipv4 ? "0.0.0.0" : "::", port: 0)
            .flatMapThrowing { [self] channel in
                guard let provider = channel as? SocketOptionProvider else { throw LANError("no socket options") }
                if group == .ipv4 {
                    var request = ip_mreqn()
                    request.imr_ifindex = Int32(interface.index)
                    _ = provider.unsafeSetSocketOption(
                        level: SocketOptionLevel(IPPROTO_IP), name: SocketOptionName(IP_MULTICAST_IF), value: request)
                    _ = provider.unsafeSetSocketOption(
                        level: SocketOptionLevel(IPPROTO_IP), name: SocketOptionName(IP_MULTICAST_TTL), value: CInt(1))
                    _ = provider.unsafeSetSocketOption(
                        level: SocketOptionLevel(IPPROTO_IP), name: SocketOptionName(IP_MULTICAST_LOOP), value: CInt(1))
                } else {
                    _ = provider.unsafeSetSocketOption(
                        level: SocketOptionLevel(IPPROTO_IPV6), name: SocketOptionName(IPV6_MULTICAST_IF),
                        value: CUnsignedInt(interface.index))
                    _ = provider.unsafeSetSocketOption(
                        level: SocketOptionLevel(IPPROTO_IPV6), name: SocketOptionName(IPV6_MULTICAST_HOPS),
                        value: CInt(1))
                }
                senders.append((group, channel))
            }
    }

    private func join(_ channel: Channel, ipv4Group interface: Interface) -> EventLoopFuture<Void> {
        guard let provider = channel as? SocketOptionProvider else {
            return loop.makeFailedFuture(LANError("no socket options"))
        }
        var request = ip_mreqn()
        request.imr_multiaddr.s_addr = inet_addr(LocalDiscovery.Group.ipv4.address)
        request.imr_ifindex = Int32(interface.index)
        return provider.unsafeSetSocketOption(
            level: SocketOptionLevel(IPPROTO_IP), name: SocketOptionName(IP_ADD_MEMBERSHIP), value: request)
    }

    private func join(_ channel: Channel, ipv6Group interface: Interface) -> EventLoopFuture<Void> {
        guard let provider = channel as? SocketOptionProvider else {
            return loop.makeFailedFuture(LANError("no socket options"))
        }
        var request = ipv6_mreq()
        _ = inet_pton(AF_INET6, LocalDiscovery.Group.ipv6.address, &request.ipv6mr_multiaddr)
        request.ipv6mr_interface = interface.index
        return provider.unsafeSetSocketOption(
            level: SocketOptionLevel(IPPROTO_IPV6), name: SocketOptionName(IPV6_ADD_MEMBERSHIP), value: request)
    }

    func announce(key: [UInt8], port: UInt16, families: Set<LocalDiscovery.Group>, serving: Bool) {
        perform(
            serving
                ? discovery.announce(key: key, port: port, families: families, now: now)
                : discovery.search(key: key, port: port, families: families, now: now))
    }

    /// Neither announces nor looks for the key any more.
    func withdraw(key: [UInt8]) { discovery.stop(key: key) }

    func received(_ bytes: [UInt8], from ip: [UInt8]) {
        perform(discovery.received(bytes, from: ip, now: now))
    }

    private func perform(_ directives: [LocalDiscovery.Directive]) {
        for directive in directives {
            switch directive {
            case .send(let bytes, let group):
                guard let remote = try? SocketAddress(ipAddress: group.address, port: LocalDiscovery.Group.port)
                else { continue }
                for (family, channel) in senders where family == group {
                    let data = channel.allocator.buffer(bytes: bytes)
                    channel.writeAndFlush(AddressedEnvelope(remoteAddress: remote, data: data), promise: nil)
                }
            case .found(let key, let address):
                onFound?(key, address)
            case .wake(let at):
                wake?.cancel()
                let delay = max(0, at - now)
                wake = loop.scheduleTask(in: .milliseconds(Int64(delay * 1000) + 1)) { [self] in
                    perform(discovery.tick(now: now))
                }
            }
        }
    }

    static func bytes(of address: String) -> [UInt8]? {
        if address.contains(":") {
            var raw = in6_addr()
            guard inet_pton(AF_INET6, address, &raw) == 1 else { return nil }
            return withUnsafeBytes(of: raw) { Array($0) }
        }
        var raw = in_addr()
        guard inet_pton(AF_INET, address, &raw) == 1 else { return nil }
        return withUnsafeBytes(of: raw) { Array($0) }
    }

    struct LANError: Error, CustomStringConvertible {
        var description: String
        init(_ text: String) { description = text }
    }
}

/// Datagrams in, with the address they came from; anything over BEP 14's size is dropped here.
final class LANDatagramHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let shell: LANShell

    init(shell: LANShell) { self.shell = shell }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard envelope.data.readableBytes <= LSDMessage.maxDatagram else { return }
        let ip: [UInt8]
        switch envelope.remoteAddress {
        case .v4(let v4): ip = withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
        case .v6(let v6): ip = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
        default: return
        }
        shell.received(Array(envelope.data.readableBytesView), from: ip)
    }
}
