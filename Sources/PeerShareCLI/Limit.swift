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
            Talks to the running process through its control socket in \
            $XDG_RUNTIME_DIR/peershare/ (or /tmp/peershare-UID/), a folder only you can enter. \
            A running `peershare daemon` is the one changed (its limits apply to each of its \
            shares and downloads); otherwise, with one process running, it is found by \
            itself; with several, give --pid.

            Without any limit option, prints the current limits. The change lasts until the \
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
        try DaemonItems.show(try exchange(request, path: socket))
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
        // A running daemon is the one to change, unless --pid names another process.
        if ControlClient.daemonRunning() { return ControlClient.daemonSocket() }
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

    private func exchange(_ request: ControlRequest, path: String) throws -> ControlReply {
        try ControlClient.exchange(request, path: path, timeoutSeconds: 5)
    }
}
