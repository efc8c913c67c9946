import ArgumentParser
import Foundation
import IPC
import PeerShareCore
import Sessions
import Supervisor
import WorkerRuntime

/// The client end of a control socket: `limit`, and every command that talks to the daemon.
enum ControlClient {
    static var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// `$XDG_RUNTIME_DIR/peershare/daemon.sock`.
    static func daemonSocket() -> String {
        ControlServer.directory(environment: environment) + "/" + ControlClient.daemonSocketName
    }

    static let daemonSocketName = "daemon.sock"

    /// A daemon answers on its socket (a socket file left by a killed daemon does not count).
    static func daemonRunning() -> Bool {
        guard let fd = try? connect(path: daemonSocket()) else { return false }
        close(fd)
        return true
    }

    /// Sends a request to the daemon; exits 69 with a clear message when none runs.
    static func daemon(_ request: ControlRequest, timeoutSeconds: Int = 30) throws -> ControlReply {
        let path = daemonSocket()
        guard access(path, F_OK) == 0 else {
            Terminal.error("no peershare daemon is running (no \(path)); start one with `peershare daemon`")
            throw ExitCode(ExitCodes.unavailable)
        }
        return try exchange(request, path: path, timeoutSeconds: timeoutSeconds)
    }

    struct ConnectFailure: Error {
        var reason: String
    }

    static func connect(path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ConnectFailure(reason: String(cString: strerror(errno))) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw ConnectFailure(reason: "socket path too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw ConnectFailure(reason: reason)
        }
        return fd
    }

    /// Sends one frame and reads one back, with a timeout so a stuck process cannot hang us
    /// (0: wait as long as it takes — a share's link waits for its hashing).
    static func exchange(_ request: ControlRequest, path: String, timeoutSeconds: Int) throws -> ControlReply {
        let fd: Int32
        do {
            fd = try connect(path: path)
        } catch let failure as ConnectFailure {
            Terminal.error("cannot reach \(path): \(failure.reason)")
            throw ExitCode(ExitCodes.unavailable)
        }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // The socket is handed to a pipe that closes nothing: `defer` above closes it.
        let pipe = MessagePipe<ControlRequest, ControlReply>(descriptor: fd)
        do {
            try pipe.send(request)
            guard let reply = try pipe.receive() else { throw WorkerError.pipe("closed without an answer") }
            return reply
        } catch {
            Terminal.error("no answer from \(path): \(error)")
            throw ExitCode(ExitCodes.unavailable)
        }
    }
}
