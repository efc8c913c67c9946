import Foundation
import IPC
import Logging
import NIOCore
import NIOPosix
import PeerShareCore
import Traversal
import WorkerRuntime

/// The NAT traversal worker: finds out what this machine looks like from outside (STUN,
/// `STUNProbe`) and, on `peershare relay`, runs the relay (`RelayServer`) that joins peers
/// which cannot reach each other. It never opens a file and never carries this machine's own
/// peer bytes: a relay copies other peers' encrypted circuits without reading them.
public final class NATService: WorkerService, @unchecked Sendable {
    let logger: Logger
    let pipe: WorkerPipe
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    var loop: EventLoop { group.next() }
    private var relay: RelayServer?
    /// The router's mapping of our ports, renewed at half its lifetime. Guarded by `lock`:
    /// the mapping thread writes it, `shutdown` (the reader thread) reads it.
    private var mapping: (PortMapper.Mapping, tcp: Int, udp: Int)?
    private var mappingGeneration = 0
    private let lock = NSLock()

    public init(logger: Logger, pipe: WorkerPipe) {
        self.logger = logger
        self.pipe = pipe
    }

    func tell(_ message: WorkerReport) { pipe.sendOrExit(message, logger: logger) }

    public func handle(_ message: WorkerCommand, pipe: WorkerPipe) {
        switch message {
        case .natProbe(let id, let servers):
            // Blocking UDP with a short timeout, on a thread of its own: the probe takes at
            // most a couple of seconds and nothing else waits for it.
            Thread.detachNewThread { [self] in
                let result = STUNProbe.run(servers: servers, logger: logger)
                tell(
                    .natReport(
                        requestID: id, observed: result.lines, mapping: result.mapping.rawValue,
                        localPort: UInt16(clamping: result.localPort)))
            }
        case .relayStart(let host, let port, let circuits, let rate, let seconds):
            loop.execute { [self] in
                guard relay == nil else { return }
                var limits = RelayTable.Limits()
                if circuits > 0 { limits.maxCircuits = Int(circuits) }
                limits.circuitSeconds = Double(seconds)
                let server = RelayServer(group: group, limits: limits, circuitRate: Double(rate), logger: logger)
                relay = server
                server.start(host: host, port: Int(port)).whenComplete { [self] result in
                    switch result {
                    case .success(let bound): tell(.relayListening(port: UInt16(bound)))
                    case .failure(let error):
                        tell(.failure(requestID: 0, code: 69, message: "cannot listen on \(host):\(port): \(error)"))
                    }
                }
            }
        case .mapPorts(let id, let gateway, let tcp, let udp):
            lock.lock()
            mappingGeneration += 1
            let generation = mappingGeneration
            lock.unlock()
            Thread.detachNewThread { [self] in
                map(id: id, gateway: gateway, tcp: Int(tcp), udp: Int(udp), generation: generation)
            }
        default:
            logger.warning("ignoring unexpected \(message.tag)")
        }
    }

    /// Maps, reports, and sleeps until it is time to renew (half the lifetime; a router
    /// that forgot us early is asked again then too). A newer `mapPorts` ends this loop.
    private func map(id: UInt32, gateway: String, tcp: Int, udp: Int, generation: Int) {
        while true {
            let (granted, notes) = PortMapper.map(tcp: tcp, udp: udp, gateway: gateway, logger: logger)
            lock.lock()
            guard generation == mappingGeneration else {
                lock.unlock()
                return
            }
            mapping = granted.map { ($0, tcp, udp) }
            lock.unlock()
            if let granted {
                logger.info(
                    "\(granted.method): \(granted.externalIP) TCP \(granted.tcpPort) UDP \(granted.udpPort) for \(granted.lifetime) s"
                )
                tell(
                    .portMapped(
                        requestID: id, method: granted.method, externalIP: granted.externalIP,
                        tcpPort: UInt16(granted.tcpPort), udpPort: UInt16(granted.udpPort),
                        lifetime: UInt32(granted.lifetime), note: notes.joined(separator: "; ")))
            } else {
                tell(
                    .portMapped(
                        requestID: id, method: "", externalIP: "", tcpPort: 0, udpPort: 0, lifetime: 0,
                        note: notes.joined(separator: "; ")))
            }
            // Permanent leases need no renewal; no router: try again in ten minutes.
            let lifetime = granted?.lifetime ?? 1200
            guard lifetime > 0 else { return }
            Thread.sleep(forTimeInterval: Double(max(lifetime / 2, PortMapper.minimumRenewal)))
        }
    }

    public func shutdown() {
        lock.lock()
        let current = mapping
        mappingGeneration += 1
        lock.unlock()
        if let current {
            logger.info("removing the \(current.0.method) port mappings")
            PortMapper.unmap(current.0, tcp: current.tcp, udp: current.udp)
        }
    }

    public func statusLine() -> String {
        (try? loop.submit { [self] in relay?.statusLine ?? "idle" }.wait()) ?? "busy"
    }

    public func counters() -> [WorkerCounter] {
        (try? loop.submit { [self] in relay?.counters ?? [] }.wait()) ?? []
    }
}

/// Asks STUN servers, from one UDP socket, which address they see it at.
enum STUNProbe {
    struct Result {
        var lines: [String] = []
        var mapping: MappingKind = .unknown
        var localPort = 0
    }

    static let attempts = 3
    static let timeoutMs = 500

    static func run(servers: [String], logger: Logger) -> Result {
        var result = Result()
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return result }
        defer { close(fd) }
        var any = sockaddr_in()
        any.sin_family = sa_family_t(AF_INET)
        _ = withUnsafePointer(to: &any) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        var bound = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        result.localPort = Int(UInt16(bigEndian: bound.sin_port))
        var timeout = timeval(tv_sec: 0, tv_usec: suseconds_t(timeoutMs * 1000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var observed: [PeerAddress] = []
        var local: [String] = []
        for server in servers {
            guard let address = try? PeerAddress.parse(server), let ip = IPText.parseIPv4(address.host) else {
                result.lines.append("\(server) (not a numeric IPv4 address)")
                continue
            }
            if let source = LocalIPv4.source(toward: ip, port: address.port) { local.append(source) }
            if let mapped = ask(fd: fd, ip: ip, port: address.port, logger: logger) {
                observed.append(mapped)
                result.lines.append("\(server) \(mapped)")
            } else {
                result.lines.append("\(server) -")
            }
        }
        result.mapping = MappingKind.classify(
            observed: observed, local: local, localPort: result.localPort)
        return result
    }

    /// One server: up to three requests; only an answer from the server's own address and
    /// port, to our transaction, counts.
    static func ask(fd: Int32, ip: [UInt8], port: Int, logger: Logger) -> PeerAddress? {
        var destination = LocalIPv4.socketAddress(ip: ip, port: port)
        for _ in 0..<attempts {
            var transaction = [UInt8](repeating: 0, count: 12)
            for i in transaction.indices { transaction[i] = UInt8.random(in: 0...255) }
            let request = STUN.request(transactionID: transaction)
            let sent = withUnsafePointer(to: &destination) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, request, request.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard sent == request.count else { return nil }
            let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutMs) * 1_000_000
            while DispatchTime.now().uptimeNanoseconds < deadline {
                var buffer = [UInt8](repeating: 0, count: STUN.maxMessage + 1)
                var source = sockaddr_in()
                var sourceLength = socklen_t(MemoryLayout<sockaddr_in>.size)
                let count = withUnsafeMutablePointer(to: &source) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        recvfrom(fd, &buffer, buffer.count, 0, $0, &sourceLength)
                    }
                }
                guard count > 0 else { break }
                guard source.sin_addr.s_addr == destination.sin_addr.s_addr, source.sin_port == destination.sin_port
                else {
                    logger.info("ignoring a STUN answer from another address than the server's")
                    continue
                }
                do {
                    return try STUN.mappedAddress(in: Array(buffer[0..<count]), transactionID: transaction)
                } catch {
                    logger.info("ignoring a STUN answer: \(error)")
                }
            }
        }
        return nil
    }
}

/// The local address the kernel would send from toward a destination (a connected UDP
/// socket sends nothing; `getifaddrs` would need a netlink socket the sandbox forbids).
enum LocalIPv4 {
    /// An IPv4 socket address from 4 address bytes and a port.
    static func socketAddress(ip: [UInt8], port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(clamping: port).bigEndian
        address.sin_addr.s_addr = ip.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        return address
    }

    static func source(toward ip: [UInt8], port: Int) -> String? {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var destination = LocalIPv4.socketAddress(ip: ip, port: port)
        let connected = withUnsafePointer(to: &destination) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { return nil }
        var local = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { return nil }
        return IPText.format(withUnsafeBytes(of: local.sin_addr.s_addr) { Array($0) })
    }
}
