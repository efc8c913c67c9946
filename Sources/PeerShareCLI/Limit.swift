import ArgumentParser
import Foundation
import IPC
import PeerShareCore
import Sessions
import Supervisor
import Wire
import WorkerRuntime

/// `peershare limit`: change the bandwidth limits of a running `share` or `get`.
struct Limit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change the bandwidth limits of a running share or get (or show them).",
        discussion: """
            Talks to the running process through its control socket in
            $XDG_RUNTIME_DIR/peershare/ (or /tmp/peershare-UID/), a folder only you can enter.
            With one process running, it is found by itself; with several, give --pid.
            Without any limit option, prints the current limits. The change lasts until the
            process ends; it does not edit pipeline.json.
            """)

    @OptionGroup var rates: RateOptions

    @Option(name: .long, help: "The process to change (the pid of its `peershare share` or `get`).")
    var pid: Int32?

    func run() throws {
        let directory = ControlServer.directory(environment: ProcessInfo.processInfo.environment)
        let socket = try findSocket(in: directory)
        func value(_ text: String?) throws -> UInt64 {
            guard let text else { return LimitChange.unchanged }
            do {
                return UInt64(try ByteRate.parse(text))
            } catch {
                Terminal.error("\(error)")
                throw ExitCode(ExitCodes.usage)
            }
        }
        let request: ControlRequest =
            rates.maxUpload == nil && rates.maxDownload == nil && rates.maxPeerUpload == nil
            ? .status
            : .setLimits(
                upload: try value(rates.maxUpload), download: try value(rates.maxDownload),
                perPeerUpload: try value(rates.maxPeerUpload))
        switch try exchange(request, path: socket) {
        case .status(let text):
            Terminal.line(InertText.make(text))
        case .refused(let code, let text):
            Terminal.error(InertText.make(text))
            throw ExitCode(Int32(code))
        }
    }

    private func findSocket(in directory: String) throws -> String {
        if let pid {
            let path = "\(directory)/\(pid).sock"
            guard access(path, F_OK) == 0 else {
                Terminal.error("no running peershare with pid \(pid) (no \(path))")
                throw ExitCode(ExitCodes.unavailable)
            }
            return path
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let live = names.filter { name in
            guard name.hasSuffix(".sock"), let number = Int32(name.dropLast(5)) else { return false }
            return kill(number, 0) == 0 || errno == EPERM
        }.sorted()
        switch live.count {
        case 0:
            Terminal.error("no running peershare share or get found (looked in \(directory))")
            throw ExitCode(ExitCodes.unavailable)
        case 1:
            return "\(directory)/\(live[0])"
        default:
            let pids = live.map { String($0.dropLast(5)) }.joined(separator: ", ")
            Terminal.error("several peershare processes are running (pids \(pids)); choose one with --pid")
            throw ExitCode(ExitCodes.usage)
        }
    }

    /// Sends one frame and reads one back, with a timeout so a stuck process cannot hang us.
    private func exchange(_ request: ControlRequest, path: String) throws -> ControlReply {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ExitCode(ExitCodes.software) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            Terminal.error("control socket path too long: \(path)")
            throw ExitCode(ExitCodes.software)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            Terminal.error("cannot reach \(path): \(String(cString: strerror(errno)))")
            throw ExitCode(ExitCodes.unavailable)
        }
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
