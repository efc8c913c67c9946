import ArgumentParser
import Foundation
import PeerShareCore
import Sessions
import Supervisor
import WorkerRuntime

struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Download a share from its link; exit 0 only when every chunk is verified and in place.",
        discussion: """
            Chunks are verified against their BLAKE3 hashes in the manifest (whose SHA-256 is \
            the link's share id) before they are written, into a hidden .peershare-<id>.partial \
            folder in the target directory; the finished file or folder is renamed into place \
            at the end.

            Running the same command again after an interruption keeps what was verified.
            """)

    @Argument(
        help: ArgumentHelp(
            "A peershare:// link printed by `peershare share`, or - to read it from standard input.",
            discussion:
                "A link with key= holds a secret: pass it as - (on stdin) or with --link-file, so that it does not show in `ps` or /proc/PID/cmdline."
        ))
    var link: String?

    @Option(name: .long, help: "Read the link from this file (its first line), instead of the command line.")
    var linkFile: String?

    @Option(name: .shortAndLong, help: "Directory to save the share in.")
    var output: String = "."

    @Option(name: .long, help: "A peer to download from, HOST:PORT (repeatable; adds to the link's hints).")
    var peer: [String] = []

    @Flag(name: .long, help: "Print progress and results as JSON lines on stdout, for scripts.")
    var json = false

    @Flag(name: .long, help: "Show peer events: bans, rejected chunks, and why peers were disconnected.")
    var verbose = false

    @Option(
        name: .long,
        help: "Address to serve verified chunks to other downloaders on, HOST:PORT (port 0 picks a free one).")
    var listen: String = "0.0.0.0:0"

    @Flag(name: .long, help: "Do not serve chunks to other peers while downloading.")
    var noUpload = false

    @Flag(name: .long, help: "Keep serving the share after the download completes, until Ctrl-C.")
    var seed = false

    @Flag(
        name: .long,
        help: "Run here, in the foreground, even when a `peershare daemon` runs (which otherwise takes the download).")
    var noDaemon = false

    @Flag(
        name: .long,
        help:
            "With a daemon: follow the download to its end with a progress bar, and exit as a standalone get would.")
    var wait = false

    @OptionGroup var common: CommonOptions
    @OptionGroup var dht: DHTOptions
    @OptionGroup var lan: LANOptions

    @Flag(name: .long, help: "No NAT traversal: ignore the link's relays.")
    var noNAT = false
    @OptionGroup var rates: RateOptions
    @OptionGroup var metrics: MetricsOptions

    /// The link's text: from the argument, from stdin (`-`), or from --link-file.
    private func linkText() throws -> String {
        switch (link, linkFile) {
        case (nil, nil):
            Terminal.error("give the link: as an argument, - to read it from stdin, or --link-file FILE")
            throw ExitCode(ExitCodes.usage)
        case (.some, .some):
            Terminal.error("give the link once: as an argument or with --link-file, not both")
            throw ExitCode(ExitCodes.usage)
        case (let argument?, nil) where argument != "-":
            return argument
        case (_, let file?):
            guard let data = FileManager.default.contents(atPath: file) else {
                Terminal.error("--link-file: cannot read '\(file)'")
                throw ExitCode(ExitCodes.noInput)
            }
            return String(decoding: data.prefix(4096), as: UTF8.self).split(whereSeparator: \.isNewline).first
                .map(String.init) ?? ""
        default:
            guard let line = readLine(strippingNewline: true) else {
                Terminal.error("no link on standard input")
                throw ExitCode(ExitCodes.usage)
            }
            return line
        }
    }

    func run() throws {
        let parsed: ShareLink
        let text: String
        do {
            text = try linkText().trimmingCharacters(in: .whitespaces)
            parsed = try ShareLink.parse(text)
        } catch let exit as ExitCode {
            throw exit
        } catch {
            Terminal.error("malformed link: \(error)")
            throw ExitCode(ExitCodes.usage)
        }
        var peers = parsed.peers
        for text in peer {
            do {
                peers.append(try PeerAddress.parse(text))
            } catch {
                Terminal.error("--peer: \(error)")
                throw ExitCode(ExitCodes.usage)
            }
        }
        // A missing output folder is created (as `wget -P` and `aria2c -d` do); whatever is
        // there by that name must then be a folder, said plainly if it is not (Foundation's
        // words for a file in the way were "A file with the same name already exists").
        var info = stat()
        if stat(output, &info) != 0 {
            do {
                try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
            } catch {
                Terminal.error("cannot create the output directory '\(output)': \(error.localizedDescription)")
                throw ExitCode(ExitCodes.cannotCreate)
            }
        }
        guard stat(output, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            Terminal.error("'\(output)' is not a directory")
            throw ExitCode(ExitCodes.cannotCreate)
        }
        if !noDaemon, ControlClient.daemonRunning() {
            // The daemon fetches it (and seeds it when done); --wait follows it here.
            let target = URL(fileURLWithPath: output).standardizedFileURL.path
            let reply = try ControlClient.daemon(.addDownload(link: text, targetDirectory: target))
            guard case .added(let id, _) = reply else { return try DaemonItems.show(reply) }
            Terminal.status("the running daemon fetches this as item \(id) (--no-daemon to run it here)")
            if wait { try DaemonItems.follow(id: id) } else { Terminal.line("added as item \(id)") }
            return
        }
        var listenAddress: PeerAddress?
        if !noUpload {
            do {
                listenAddress = try PeerAddress.parse(listen)
            } catch {
                Terminal.error("--listen: \(error)")
                throw ExitCode(ExitCodes.usage)
            }
        }
        if seed && noUpload {
            Terminal.error("--seed and --no-upload contradict each other")
            throw ExitCode(ExitCodes.usage)
        }
        var config = common.loadConfig()
        rates.apply(to: &config)
        LineLogHandler.bootstrap(name: "supervisor", level: common.level)
        let target = URL(fileURLWithPath: output).standardizedFileURL.path
        let allPeers = peers
        let useJSON = json
        // The DHT finds peers when neither the link nor --peer names one, finds more while
        // downloading, and carries our announcement once we hold verified chunks.
        let dhtSettings = dht.settings(config: config)
        let (seedAfter, showEvents, serveAt) = (seed, verbose, listenAddress)
        // The link's relays: only for an encrypted share (a relayed connection is always
        // encrypted end to end) and not with --no-nat.
        var relayAddresses: [String] = []
        if !parsed.relays.isEmpty && !noNAT && config.nat.enabled {
            if parsed.secret == nil {
                Terminal.warning("the link names relays but carries no key: relays are used only for encrypted shares")
            } else {
                relayAddresses = NATOptions.resolve(parsed.relays)
            }
        }
        let relays = relayAddresses
        let mapPorts = !noNAT && config.nat.enabled
        let punch = config.nat.punch
        let pipeline = try PipelineOptions.forGet(config: config, link: parsed)
        let identity = IdentityStore.load(environment: ProcessInfo.processInfo.environment)
        // The hash worker may touch the target folder and nothing else.
        let useLAN = lan.enabled(config: config)
        let code = SupervisorRunner.run(
            config: config, logLevel: common.logLevel, control: true, writable: [target], metrics: metrics.address
        ) {
            supervisor, logger in
            let context = SessionContext(
                supervisor: supervisor,
                dht: dhtSettings.map { DHTClient(supervisor: supervisor, settings: $0, logger: logger) },
                lan: useLAN ? LANClient(supervisor: supervisor) : nil,
                output: useJSON ? Terminal.jsonOutput() : Terminal.sessionOutput(), logger: logger)
            let session = DownloadSession(
                context: context, link: parsed, peers: allPeers, targetDirectory: target, listen: serveAt,
                seedAfter: seedAfter, verbose: showEvents, pipeline: pipeline, identity: identity,
                relayAddresses: relays, mapPorts: mapPorts, punch: punch)
            return session
        }
        throw ExitCode(code)
    }
}
