import ArgumentParser
import Foundation
import Logging
import PeerShareCore
import Sessions
import Supervisor

public struct PeerShareCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "peershare",
        abstract: "Share files and folders directly between computers, verified chunk by chunk.",
        discussion: """
            A supervisor process (this command) runs four workers, each confined by the kernel (Landlock and seccomp; see 'peershare sandbox'): discovery, nat, transfer (the only one that talks to peers) and hash (the only one that touches files). See docs/ARCHITECTURE.md.

            Exit codes: 0 ok, 64 bad arguments or link, 65 bad data from a peer, 66 input missing or unreadable, 69 no peer reachable, 70 internal error, 73 cannot create the output, 74 I/O error, 78 bad configuration, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
            """,
        subcommands: [
            Share.self, Get.self, DaemonCommand.self, ListCommand.self, StatusCommand.self, PauseCommand.self,
            ResumeCommand.self, RemoveCommand.self, UICommand.self, Limit.self, PipelineCommand.self, DHTCommand.self,
            SwarmCommand.self, Demo.self,
            Bench.self,
            NATCommand.self, RelayCommand.self, SandboxCommand.self, WorkerCommand.self,
        ]
    )

    public init() {}
}

/// Bandwidth flags; they override pipeline.json's limits for this run.
struct RateOptions: ParsableArguments {
    @Option(name: .long, help: "Upload limit for all peers together, e.g. 5MB/s or 512KiB/s (0: unlimited).")
    var maxUpload: String?

    @Option(name: .long, help: "Download limit for all peers together, e.g. 5MB/s or 512KiB/s (0: unlimited).")
    var maxDownload: String?

    @Option(name: .long, help: "Upload limit for each peer on its own, e.g. 1MB/s (0: unlimited).")
    var maxPeerUpload: String?

    func validate() throws {
        for text in [maxUpload, maxDownload, maxPeerUpload].compactMap({ $0 }) {
            do {
                _ = try ByteRate.parse(text)
            } catch {
                throw ValidationError("\(error)")
            }
        }
    }

    func apply(to config: inout PipelineConfig) {
        if let text = maxUpload, let rate = try? ByteRate.parse(text) { config.limits.maxUploadRate = rate }
        if let text = maxDownload, let rate = try? ByteRate.parse(text) { config.limits.maxDownloadRate = rate }
        if let text = maxPeerUpload, let rate = try? ByteRate.parse(text) { config.limits.maxPeerUploadRate = rate }
    }
}

/// Options every user-facing command takes.
struct CommonOptions: ParsableArguments {
    @Option(name: .long, help: "A pipeline.json to use instead of the user's or the built-in one.")
    var config: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "warning"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown log level '\(logLevel)'")
        }
    }

    var level: Logger.Level { Logger.Level(rawValue: logLevel) ?? .warning }

    /// Loads pipeline.json or exits 78 with a message naming the file and key.
    func loadConfig() -> PipelineConfig {
        do {
            return try PipelineConfig.load(explicitPath: config, environment: ProcessInfo.processInfo.environment).0
        } catch {
            Terminal.error("\(error)")
            Foundation.exit(ExitCodes.config)
        }
    }
}
