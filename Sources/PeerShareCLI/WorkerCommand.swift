import ArgumentParser
import DiscoveryWorker
import Foundation
import HashWorker
import IPC
import Logging
import NATWorker
import TransferWorker
import WorkerRuntime

/// `peershare worker ROLE`: the entry point the supervisor re-executes this binary with.
/// Hidden: it expects the supervisor's socketpair on descriptor 3.
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker", abstract: "Run one worker process (started by the supervisor).",
        shouldDisplay: false)

    @Argument(help: "discovery, nat, transfer or hash")
    var role: String

    @Option(name: .long) var logLevel: String = "warning"
    @Option(name: .long) var sandbox: String = SandboxProfile.Kind.none.rawValue
    @Option(name: .customLong("sandbox-read")) var sandboxReadable: [String] = []
    @Option(name: .customLong("sandbox-write")) var sandboxWritable: [String] = []
    /// The transfer worker: a listening socket the supervisor hands down (the daemon's held port).
    @Option(name: .customLong("listener-fd")) var listenerDescriptor: Int32?

    func run() throws {
        guard let role = WorkerRole(rawValue: role) else {
            throw ValidationError("unknown worker role '\(role)'")
        }
        var info = stat()
        guard fstat(WorkerDescriptor.supervisorPipe, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK else {
            Terminal.error("'peershare worker' is started by the supervisor, not by hand")
            throw ExitCode(64)
        }
        LineLogHandler.bootstrap(name: role.rawValue, level: Logger.Level(rawValue: logLevel) ?? .warning)
        let logger = Logger(label: role.rawValue)
        guard let kind = SandboxProfile.Kind(rawValue: sandbox) else {
            throw ValidationError("unknown sandbox profile '\(sandbox)'")
        }
        // First thing, before any thread exists: Landlock confines the calling thread and
        // whatever it starts later.
        let report = Sandbox.apply(
            SandboxProfile(kind: kind, readable: sandboxReadable, writable: sandboxWritable))
        if kind != .none && report.seccompError != nil {
            logger.error("sandbox: \(report)")
        } else {
            logger.debug("sandbox \(kind.rawValue): \(report)")
        }
        WorkerMain.run(role: role, logger: logger) { pipe in
            switch role {
            case .hash: return HashService(logger: logger)
            case .transfer:
                return TransferService(logger: logger, pipe: pipe, inheritedListener: listenerDescriptor)
            case .discovery:
                return DiscoveryService(logger: logger, pipe: pipe)
            case .nat: return NATService(logger: logger, pipe: pipe)
            }
        }
    }
}
