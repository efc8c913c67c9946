import ArgumentParser
import Daemon
import Foundation
import IPC
import LocalWeb
import Logging
import NIOCore
import NIOPosix
import PeerShareCore
import Sessions
import Supervisor
import WorkerRuntime

/// `peershare daemon`: run in the foreground (as systemd's `Type=simple` wants) until
/// SIGINT or SIGTERM, holding every share and download added to it.
struct DaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Run the PeerShare daemon: many shares and downloads in one service that survives restarts.",
        discussion: """
            While it runs, `peershare share` and `peershare get` hand their work to it (and \
            return), and `peershare ls`, `status`, `pause`, `resume`, `remove` and `limit` \
            manage it, through the control socket $XDG_RUNTIME_DIR/peershare/daemon.sock \
            (mode 0600 in a folder only you can enter; other users' connections are refused).

            What it holds is kept in $XDG_STATE_HOME/peershare/daemon.json (written \
            crash-safely): after a restart, or a kill -9, every share is served again on the \
            same port and every download continues from its verified chunks.

            contrib/peershare.service runs it as a systemd user service.
            """)

    @Option(name: .long, help: "Address shares and downloads take peer connections on (each on its own port).")
    var listenHost: String = "0.0.0.0"

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Serve the web UI (and /metrics) on this loopback HOST:PORT (port 0: any free one).",
            discussion: "Its address, with the token every request needs, is printed at startup and by `peershare ui`.")
    )
    var ui: String = "127.0.0.1:0"

    @Flag(name: .long, help: "Serve no web UI.")
    var noUI = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds a share (or a finished download) may go without a peer before it sleeps (0: never).",
            discussion: """
                A sleeping item runs no worker process: the daemon holds its port open, and the \
                first peer to connect wakes it (its workers start and accept that peer). The DHT and \
                the LAN go on announcing it.
                """))
    var sleepAfter: Double = 60

    @OptionGroup var common: CommonOptions
    @OptionGroup var dht: DHTOptions
    @OptionGroup var lan: LANOptions

    func validate() throws {
        guard sleepAfter >= 0, sleepAfter <= 86_400 * 365, sleepAfter.isFinite else {
            throw ValidationError("--sleep-after: give seconds from 0 (never sleep) to a year")
        }
        guard let address = try? PeerAddress.parse(ui) else { throw ValidationError("--ui: '\(ui)' is not HOST:PORT") }
        guard ["127.0.0.1", "::1", "localhost"].contains(address.host) else {
            throw ValidationError("--ui: serve on a loopback address (127.0.0.1:PORT), not \(address.host)")
        }
    }

    func run() throws {
        let environment = ProcessInfo.processInfo.environment
        guard let statePath = StateFile.defaultPath(environment: environment) else {
            Terminal.error("neither XDG_STATE_HOME nor HOME is set: nowhere to keep the daemon's state")
            throw ExitCode(ExitCodes.config)
        }
        guard (try? PeerAddress.parse("\(listenHost):0")) != nil else {
            throw ValidationError("--listen-host: '\(listenHost)' is not an address")
        }
        if ControlClient.daemonRunning() {
            Terminal.error("a peershare daemon is running already (\(ControlClient.daemonSocket()))")
            throw ExitCode(ExitCodes.unavailable)
        }
        let config = common.loadConfig()
        LineLogHandler.bootstrap(name: "daemon", level: common.level)
        let logger = Logger(label: "daemon")
        let stateFile = StateFile(path: statePath)
        let loaded = stateFile.load()
        for problem in loaded.problems { Terminal.warning("state: \(problem)") }
        if let aside = loaded.movedAside {
            Terminal.warning("state: the damaged file was kept as \(aside); the rest was kept")
        }
        // The daemon's one DHT node keeps its table in a file of its own, whatever its port.
        var dhtSettings = dht.settings(config: config)
        dhtSettings?.statePath = (statePath as NSString).deletingLastPathComponent + "/dht-daemon.dat"
        var settings = DaemonSettings(
            config: config, logLevel: common.logLevel, dht: dhtSettings, lan: lan.enabled(config: config),
            listenHost: listenHost, stateFile: stateFile, environment: environment,
            identity: IdentityStore.load(environment: environment),
            downloadDirectory: environment["XDG_DOWNLOAD_DIR"] ?? ((environment["HOME"] ?? "/tmp") + "/Downloads"))
        settings.sleepAfterSeconds = sleepAfter
        let uiAddress = noUI ? nil : try? PeerAddress.parse(ui)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let host = DaemonHost(
            settings: settings, state: loaded.state, eventLoop: loop, logger: logger,
            say: { Terminal.status($0) })
        let control = ControlServer(eventLoop: loop, responder: host, logger: logger)
        nonisolated(unsafe) var web: LocalHTTPServer?  // set and read on `loop` only
        let sources = onSignals(on: loop, [(SIGINT, ExitCodes.interrupted), (SIGTERM, ExitCodes.ok)]) {
            number, code in
            Terminal.status("signal \(number): stopping every share and download")
            control.stop()
            host.stop(exitCode: code)
        }
        loop.execute {
            control.start(environment: environment, name: ControlClient.daemonSocketName) { result in
                switch result {
                case .success(let path):
                    Terminal.status("daemon pid \(getpid()); control socket \(path); state \(statePath)")
                    host.start()
                    if let uiAddress { web = DaemonCommand.startWeb(on: uiAddress, host: host, logger: logger) }
                case .failure(let error):
                    Terminal.error("cannot open the control socket: \(error)")
                    host.stop(exitCode: ExitCodes.unavailable)
                }
            }
        }
        let code = (try? host.result.wait()) ?? ExitCodes.software
        try? loop.submit { control.stop() }.wait()
        try? loop.submit { web?.stop() }.wait()
        for source in sources { source.cancel() }
        try? group.syncShutdownGracefully()
        throw ExitCode(code)
    }
}

extension DaemonCommand {
    /// The web UI and /metrics on the loopback port; its address (with the token) is printed
    /// on the terminal, as Jupyter prints its URL, and given to `peershare ui` — never logged.
    static func startWeb(on address: PeerAddress, host: DaemonHost, logger: Logger) -> LocalHTTPServer {
        let metrics = PeerShareMetrics()
        let loop = host.eventLoop
        let server = LocalHTTPServer(
            host: address.host, port: address.port, token: LocalHTTPServer.makeToken(), logger: logger,
            ui: DaemonWebBackend(host: host)
        ) {
            let scopes = (try? await loop.flatSubmit { host.collectCounters() }.get()) ?? []
            return metrics.render(scopes: scopes)
        }
        server.bound.whenComplete { result in
            switch result {
            case .success(let port):
                let name = address.host.contains(":") ? "[\(address.host)]" : address.host
                let url = "http://\(name):\(port)/?token=\(server.token)"
                loop.execute { host.webAddress = url }
                Terminal.status("web UI: \(url)")
            case .failure(let error):
                Terminal.warning("cannot serve the web UI on \(address): \(error)")
            }
        }
        return server
    }
}

/// `peershare ui`: the running daemon's web UI address, with its token.
struct UICommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ui", abstract: "Print the running daemon's web UI address (with its token), to open in a browser."
    )

    func run() throws { try DaemonItems.show(try ControlClient.daemon(.webAddress)) }
}

/// `peershare ls`: the daemon's shares and downloads, a line each.
struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "List the running daemon's shares and downloads.")

    @Flag(name: .long, help: "Print each item as a JSON object on its own line.")
    var json = false

    func run() throws {
        let items = try DaemonItems.fetch()
        if json {
            for item in items { DaemonItems.printJSON(item) }
            return
        }
        if items.isEmpty {
            return Terminal.status("the daemon holds nothing yet: `peershare share PATH` or `get LINK`")
        }
        Terminal.line("ID    KIND      STATE        DONE    NAME")
        for item in items {
            let kind = item.kind == .share ? "share" : "download"
            let id = String(item.id).padding(toLength: 6, withPad: " ", startingAt: 0)
            Terminal.line(
                "\(id)\(kind.padding(toLength: 10, withPad: " ", startingAt: 0))\(item.phase.name.padding(toLength: 13, withPad: " ", startingAt: 0))\(DaemonItems.percent(item).padding(toLength: 8, withPad: " ", startingAt: 0))\(item.name)"
            )
        }
    }
}

/// `peershare status [ID]`: the daemon, or one item in full.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show the running daemon's state, or one share or download in full.")

    @Argument(help: "The item's id (from `peershare ls`).")
    var id: UInt32?

    func run() throws {
        guard let id else {
            let reply = try ControlClient.daemon(.status)
            return try DaemonItems.show(reply)
        }
        guard let item = try DaemonItems.fetch().first(where: { $0.id == id }) else {
            Terminal.error("no item \(id) (see `peershare ls`)")
            throw ExitCode(ExitCodes.usage)
        }
        Terminal.line("id:     \(item.id)")
        Terminal.line("kind:   \(item.kind == .share ? "share" : "download")")
        Terminal.line("state:  \(item.phase.name)\(item.exitCode != 0 ? " (exit code \(item.exitCode))" : "")")
        Terminal.line("name:   \(item.name)")
        Terminal.line("path:   \(item.path)")
        Terminal.line(
            "done:   \(formatBytes(item.bytesDone)) of \(formatBytes(item.bytesTotal)) (\(DaemonItems.percent(item)))")
        if item.kind == .download { Terminal.line("peers:  \(item.peers)") }
        if !item.note.isEmpty { Terminal.line("latest: \(item.note)") }
        if !item.link.isEmpty { Terminal.line("link:   \(item.link)") }
    }
}

/// `peershare pause|resume|remove ID`.
struct PauseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pause",
        abstract: "Stop serving or fetching a daemon item, keeping it (and its chunks) for resume.")
    @Argument(help: "The item's id (from `peershare ls`).") var id: UInt32
    func run() throws { try DaemonItems.show(try ControlClient.daemon(.pause(id: id))) }
}

struct ResumeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resume", abstract: "Serve or fetch a paused (or failed) daemon item again.")
    @Argument(help: "The item's id (from `peershare ls`).") var id: UInt32
    func run() throws { try DaemonItems.show(try ControlClient.daemon(.resume(id: id))) }
}

struct RemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove", abstract: "Remove a share or download from the daemon; its files stay where they are.")
    @Argument(help: "The item's id (from `peershare ls`).") var id: UInt32
    func run() throws { try DaemonItems.show(try ControlClient.daemon(.remove(id: id))) }
}

/// What the daemon commands share: fetching the list, printing replies.
enum DaemonItems {
    static func fetch() throws -> [DaemonItemSummary] {
        switch try ControlClient.daemon(.list) {
        case .items(let items): return items
        case let other:
            try show(other)
            return []
        }
    }

    /// Prints a status reply; a refusal exits with its code.
    static func show(_ reply: ControlReply) throws {
        switch reply {
        case .status(let text): Terminal.line(text)
        case .added(let id, let link): Terminal.line(link.isEmpty ? "added as item \(id)" : link)
        case .items(let items): for item in items { Terminal.line("\(item.id) \(item.phase.name) \(item.name)") }
        case .refused(let code, let message):
            Terminal.error(message)
            throw ExitCode(Int32(code))
        }
    }

    static func percent(_ item: DaemonItemSummary) -> String {
        guard item.bytesTotal > 0 else { return [.serving, .seeding, .sleeping].contains(item.phase) ? "100%" : "-" }
        return String(format: "%.0f%%", Double(item.bytesDone) * 100 / Double(item.bytesTotal))
    }

    static func printJSON(_ item: DaemonItemSummary) {
        let object: [String: Any] = [
            "id": item.id, "kind": item.kind == .share ? "share" : "download", "state": item.phase.name,
            "exit_code": item.exitCode, "name": InertText.make(item.name), "link": item.link,
            "path": InertText.make(item.path), "bytes_done": item.bytesDone, "bytes_total": item.bytesTotal,
            "peers": item.peers, "note": InertText.make(item.note),
        ]
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        StandardStream.write([UInt8](data) + [10], to: StandardStream.output)
    }

    /// `get --wait` through the daemon: follow the item with the usual progress bar until it
    /// is complete (exit 0) or has failed (its exit code).
    static func follow(id: UInt32) throws {
        let meter = ProgressMeter(descriptor: StandardStream.output)
        var lastNote = ""
        while true {
            guard let item = try fetch().first(where: { $0.id == id }) else {
                meter.finish()
                Terminal.error("item \(id) was removed from the daemon")
                throw ExitCode(ExitCodes.unavailable)
            }
            if item.note != lastNote, item.phase != .downloading {
                lastNote = item.note
                if !item.note.isEmpty { Terminal.status(item.note) }
            }
            switch item.phase {
            case .downloading where item.bytesTotal > 0:
                meter.update(done: item.bytesDone, total: item.bytesTotal, label: "downloading", peers: Int(item.peers))
            case .seeding, .sleeping:
                meter.finish()
                Terminal.line("verified and saved: \(item.path)")
                return
            case .failed:
                meter.finish()
                Terminal.error(item.note)
                throw ExitCode(Int32(item.exitCode == 0 ? UInt16(ExitCodes.software) : item.exitCode))
            case .paused:
                meter.finish()
                Terminal.error("item \(id) is paused")
                throw ExitCode(ExitCodes.unavailable)
            default:
                break
            }
            usleep(250_000)
        }
    }
}
