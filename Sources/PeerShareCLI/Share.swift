import ArgumentParser
import Foundation
import LocalWeb
import Logging
import NIOCore
import NIOPosix
import PeerShareCore
import Sessions
import Supervisor
import WorkerRuntime

struct Share: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Share a file or folder: print its link, then serve it until Ctrl-C.",
        discussion: """
            The first line on stdout is the link; give it to `peershare get` on another machine.

            The link carries the share id (a SHA-256 over the manifest of every file and chunk \
            hash) and the addresses this machine can be reached at.
            """)

    @Argument(help: "The file or folder to share.")
    var path: String

    @Option(name: .long, help: "Address to accept peers on, HOST:PORT (port 0 picks a free one).")
    var listen: String = "0.0.0.0:0"

    @Flag(
        name: .long,
        help:
            "Encrypt end to end: the link carries a secret key, and only its holders can fetch (same as a 'sodium' stage in pipeline.json)."
    )
    var encrypt = false

    @Flag(
        name: .long,
        help: "Run here, in the foreground, even when a `peershare daemon` runs (which otherwise takes the share).")
    var noDaemon = false

    @OptionGroup var common: CommonOptions
    @OptionGroup var dht: DHTOptions
    @OptionGroup var lan: LANOptions
    @OptionGroup var nat: NATOptions
    @OptionGroup var rates: RateOptions
    @OptionGroup var metrics: MetricsOptions

    func run() throws {
        let listenAddress: PeerAddress
        do {
            listenAddress = try PeerAddress.parse(listen)
        } catch {
            throw ValidationError("--listen: \(error)")
        }
        var info = stat()
        guard stat(path, &info) == 0 else {
            Terminal.error("cannot share '\(path)': \(String(cString: strerror(errno)))")
            throw ExitCode(ExitCodes.noInput)
        }
        guard access(path, R_OK) == 0 else {
            Terminal.error("cannot share '\(path)': permission denied")
            throw ExitCode(ExitCodes.noInput)
        }
        if !noDaemon, ControlClient.daemonRunning() {
            // The daemon serves it from now on (its flags, not these, say how); we print the link.
            let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
            Terminal.status("handing the share to the running daemon (--no-daemon to run it here) ...")
            return try DaemonItems.show(
                try ControlClient.exchange(
                    .addShare(path: absolute, encrypt: encrypt), path: ControlClient.daemonSocket(), timeoutSeconds: 0))
        }
        var config = common.loadConfig()
        rates.apply(to: &config)
        LineLogHandler.bootstrap(name: "supervisor", level: common.level)
        let dhtSettings = dht.settings(config: config)
        // Registering with a relay makes the share encrypted: a relayed connection always is.
        let relays = nat.relays(config: config)
        let findRelays = nat.findRelays(config: config) && dhtSettings != nil
        let volunteerRelay = nat.noNAT ? nil : config.nat.relay.flatMap { try? PeerAddress.parse($0) }
        let relayAddresses = NATOptions.resolve(relays)
        let usesRelays = !relays.isEmpty || findRelays
        if usesRelays && !encrypt && !config.stages.contains(where: \.isEncryption) {
            Terminal.warning("encrypting this share: connections through a relay are always encrypted end to end")
        }
        let pipeline = PipelineOptions.forShare(config: config, encrypt: encrypt || usesRelays)
        let mapPorts = !nat.noNAT && config.nat.enabled
        let identity = IdentityStore.load(environment: ProcessInfo.processInfo.environment)
        // The hash worker may read the shared path and nothing else.
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        let useLAN = lan.enabled(config: config)
        let code = SupervisorRunner.run(
            config: config, logLevel: common.logLevel, control: true, readable: [absolute], metrics: metrics.address
        ) {
            supervisor, logger in
            let context = SessionContext(
                supervisor: supervisor,
                dht: dhtSettings.map { DHTClient(supervisor: supervisor, settings: $0, logger: logger) },
                lan: useLAN ? LANClient(supervisor: supervisor) : nil,
                output: Terminal.sessionOutput(progressToStderr: true), logger: logger)
            let session = ShareSession(
                context: context, path: path, listen: listenAddress, pipeline: pipeline,
                identity: identity, relays: relays, relayAddresses: relayAddresses,
                mapPorts: mapPorts, findRelays: findRelays, volunteerRelay: volunteerRelay)
            return session
        }
        throw ExitCode(code)
    }
}

/// Starts a supervisor and its workers, runs a session on it, handles SIGINT/SIGTERM.
enum SupervisorRunner {
    /// `control`: open a control socket so `peershare limit` can change this run's limits.
    /// `readable`/`writable`: the paths the hash worker's sandbox lets it touch.
    /// `metrics`: serve /metrics on this loopback address while the session runs.
    static func run(
        config: PipelineConfig, logLevel: String, control: Bool = false, readable: [String] = [],
        writable: [String] = [], metrics: PeerAddress? = nil,
        makeSession: @escaping @Sendable (Supervisor, Logger) -> any Session
    ) -> Int32 {
        let logger = Logger(label: "supervisor")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let table = WorkerTable.standard(
            config: config, logLevel: logLevel, readable: readable, writable: writable)
        if !Sandbox.disabledByEnvironment && Sandbox.landlockABI == 0 {
            logger.warning("this kernel has no Landlock: workers are confined by seccomp only")
        }
        let plugins = PeerPipeline(stages: config.stages, secret: nil).plugins
        let supervisor = Supervisor(table: table, eventLoop: loop, logger: logger, plugins: plugins)
        let session = try? loop.submit { makeSession(supervisor, logger) }.wait()
        guard let session else { return ExitCodes.software }
        let controlServer =
            control
            ? ControlServer(
                eventLoop: loop,
                responder: LimitsResponder(supervisor: supervisor, limits: config.limits, logger: logger),
                logger: logger) : nil

        // Ctrl-C and SIGTERM stop the session cleanly: workers are told to exit, then reaped.
        let sources = onSignals(on: loop, [(SIGINT, ExitCodes.interrupted), (SIGTERM, ExitCodes.terminated)]) {
            number, code in
            logger.info("signal \(number): shutting down")
            session.stop(exitCode: code)
        }

        nonisolated(unsafe) var web: LocalHTTPServer?  // set and read on `loop` only
        loop.execute {
            supervisor.start().whenComplete { result in
                switch result {
                case .success:
                    controlServer?.start(environment: ProcessInfo.processInfo.environment)
                    session.begin()
                    if let metrics { web = startMetrics(on: metrics, supervisor: supervisor, logger: logger) }
                case .failure(let error):
                    Terminal.error("cannot start workers: \(error)")
                    session.stop(exitCode: ExitCodes.software)
                }
            }
        }
        let code = (try? session.result.wait()) ?? ExitCodes.software
        try? loop.submit { controlServer?.stop() }.wait()
        try? loop.submit { web?.stop() }.wait()
        for source in sources { source.cancel() }
        try? group.syncShutdownGracefully()
        return code
    }
}

/// Ignores SIGINT and SIGTERM as signals and handles them on `loop` instead, each with the
/// exit code it stands for; keep the returned sources alive, cancel them at the end.
func onSignals(
    on loop: EventLoop, _ codes: [(Int32, Int32)], _ handle: @escaping @Sendable (Int32, Int32) -> Void
) -> [DispatchSourceSignal] {
    codes.map { number, code in
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler { loop.execute { handle(number, code) } }
        source.resume()
        return source
    }
}

extension SupervisorRunner {
    /// The local HTTP port with /metrics: each scrape asks the workers for their counters.
    static func startMetrics(on address: PeerAddress, supervisor: Supervisor, logger: Logger) -> LocalHTTPServer {
        let metrics = PeerShareMetrics()
        let loop = supervisor.eventLoop
        let server = LocalHTTPServer(
            host: address.host, port: address.port, token: LocalHTTPServer.makeToken(), logger: logger
        ) {
            let workers = (try? await loop.flatSubmit { supervisor.collectCounters() }.get()) ?? [:]
            let restarts = (try? await loop.submit { supervisor.restartCounts }.get()) ?? [:]
            return metrics.render(workers: workers, restarts: restarts)
        }
        server.bound.whenComplete { result in
            switch result {
            case .success(let port):
                let host = address.host.contains(":") ? "[\(address.host)]" : address.host
                // The token goes to the terminal, as Jupyter prints its URL; never to the log.
                Terminal.status("metrics: http://\(host):\(port)/metrics?token=\(server.token)")
            case .failure(let error):
                Terminal.warning("cannot serve metrics on \(address): \(error)")
            }
        }
        return server
    }
}
