import Dispatch
import Foundation
import NIOCore

/// A share's listening TCP socket, owned by the daemon for as long as it holds the share.
///
/// Each life of the share's transfer worker inherits it (`Supervisor.transferListener`) and
/// accepts on it; while the share sleeps (its workers stopped), peers that connect wait in the
/// socket's backlog and the daemon, watching it for readability, wakes the share — socket
/// activation, as systemd and inetd do it. The daemon never accepts or reads a byte here:
/// every peer's bytes are still parsed by the sandboxed transfer worker only.
final class HeldListener: @unchecked Sendable {
    let descriptor: Int32
    let port: UInt16
    private var watch: DispatchSourceRead?
    private var closed = false

    /// Peers waiting while the share wakes (a worker takes ~0.1 s to start).
    static let backlog: Int32 = 128

    private init(descriptor: Int32, port: UInt16) {
        self.descriptor = descriptor
        self.port = port
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Binds and listens on `host:port` (port 0: any free port). `host` is an IP address.
    static func open(host: String, port: UInt16) throws -> HeldListener {
        let address: SocketAddress
        do {
            address = try SocketAddress(ipAddress: host, port: Int(port))
        } catch {
            throw Failure(description: "cannot listen on \(host):\(port): not an IP address")
        }
        let family = address.protocol == .inet6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "cannot make a socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = address.withSockAddr { pointer, length in bind(fd, pointer, socklen_t(length)) }
        guard bound == 0, listen(fd, backlog) == 0 else {
            let reason = String(cString: strerror(errno))
            Foundation.close(fd)
            throw Failure(description: "cannot listen on \(host):\(port): \(reason)")
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        // sin_port and sin6_port sit at the same offset, in network byte order.
        let networkPort = withUnsafeBytes(of: &storage) { $0.load(fromByteOffset: 2, as: UInt16.self) }
        guard named == 0 else {
            Foundation.close(fd)
            throw Failure(description: "cannot tell the port bound on \(host)")
        }
        let actual = UInt16(bigEndian: networkPort)
        return HeldListener(descriptor: fd, port: actual)
    }

    /// Calls `connected` once, on `queue`'s thread, when a peer is waiting to be accepted.
    func watch(queue: DispatchQueue, connected: @escaping @Sendable () -> Void) {
        guard !closed, watch == nil else { return }
        let source = DispatchSource.makeReadSource(fileDescriptor: descriptor, queue: queue)
        source.setEventHandler { [weak self] in
            // Once: the worker started for this peer is the one to accept it.
            self?.unwatch()
            connected()
        }
        watch = source
        source.resume()
    }

    func unwatch() {
        watch?.cancel()
        watch = nil
    }

    func close() {
        guard !closed else { return }
        closed = true
        unwatch()
        Foundation.close(descriptor)
    }

    deinit { close() }
}
