import ArgumentParser
import Foundation
import PeerShareCore
import Sessions
import Stages
import Supervisor

/// How `share` and `get` turn pipeline.json, `--encrypt` and the link into a pipeline.
enum PipelineOptions {
    static func forShare(config: PipelineConfig, encrypt: Bool) -> PeerPipeline {
        do {
            return try PeerPipeline.forShare(stages: config.stages, encrypt: encrypt)
        } catch {
            Terminal.error("libsodium failed to initialise; cannot encrypt")
            Foundation.exit(ExitCodes.software)
        }
    }

    static func forGet(config: PipelineConfig, link: ShareLink) throws -> PeerPipeline {
        do {
            return try PeerPipeline.forDownload(stages: config.stages, link: link)
        } catch {
            Terminal.error("\(error)")
            throw ExitCode(ExitCodes.usage)
        }
    }
}

/// `peershare pipeline`: show the pipeline in force, or check a manifest.
struct PipelineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline",
        abstract: "Print the transfer pipeline in force, or check a pipeline.json.",
        discussion:
            "Every frame sent to a peer passes through each stage's encode in order; frames received pass through decode in reverse. Built-in stages: zlib (compression) and sodium (end-to-end encryption); custom stages are plugins (docs/PLUGINS.md).",
        subcommands: [Show.self, Check.self],
        defaultSubcommand: Show.self)

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show", abstract: "Print the pipeline that share and get would use.")

        @Option(name: .long, help: "A pipeline.json to use instead of the user's or the built-in one.")
        var config: String?

        func run() throws {
            do {
                let (loaded, source) = try PipelineConfig.load(
                    explicitPath: config, environment: ProcessInfo.processInfo.environment)
                PipelineCommand.print(loaded, source: source)
            } catch {
                Terminal.error("\(error)")
                throw ExitCode(ExitCodes.config)
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check",
            abstract: "Validate a pipeline.json; exit 0 if it is valid, 78 with the reason if not.")

        @Argument(help: "The pipeline.json to check.")
        var file: String

        func run() throws {
            do {
                let loaded = try PipelineConfig.load(file: file)
                PipelineCommand.print(loaded, source: file)
                Terminal.line("ok")
            } catch {
                Terminal.error("\(error)")
                throw ExitCode(ExitCodes.config)
            }
        }
    }

    static func print(_ config: PipelineConfig, source: String) {
        Terminal.line("pipeline from \(source):")
        if config.stages.isEmpty {
            Terminal.line("  (no stages: chunks travel as they are, unencrypted)")
        }
        for (index, stage) in config.stages.enumerated() {
            let required = stage.required ? "required" : "optional"
            switch stage.kind {
            case .zlib(let level):
                Terminal.line("  \(index + 1). zlib    deflate level \(level), \(required)")
            case .sodium:
                Terminal.line(
                    "  \(index + 1). sodium  X25519 + link secret, XChaCha20-Poly1305 secretstream, \(required)")
            case .plugin(let path, let options):
                // Option values may be secrets (a plugin's key, a token): names only.
                let shown =
                    options.isEmpty
                    ? ""
                    : " options " + options.keys.sorted().map { "\($0)=…" }.joined(separator: " ") + " (values hidden)"
                Terminal.line("  \(index + 1). \(stage.name)  plugin \(path)\(shown), \(required)")
            }
        }
        Terminal.line(
            "limits: upload \(ByteRate.describe(config.limits.maxUploadRate)), download \(ByteRate.describe(config.limits.maxDownloadRate)), per-peer upload \(ByteRate.describe(config.limits.maxPeerUploadRate))"
        )
    }
}
