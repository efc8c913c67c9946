import ArgumentParser
import Foundation
import PeerShareCore
import Sessions
import Supervisor
import WorkerRuntime

/// NAT flags shared by `share`, `get` and `nat`.
struct NATOptions: ParsableArguments {
    @Option(
        name: .long,
        help:
            "A PeerShare relay, HOST:PORT, or 'dht' for relays found in the DHT (repeatable; adds to nat.relays in pipeline.json). A share registers with it and names it in its link; its connections through a relay are always encrypted."
    )
    var relay: [String] = []

    @Flag(name: .long, help: "No NAT traversal: no STUN, no relays (nat.enabled false in pipeline.json).")
    var noNAT = false

    func validate() throws {
        for text in relay where text != "dht" {
            do {
                _ = try PeerAddress.parse(text)
            } catch {
                throw ValidationError("--relay: \(error)")
            }
        }
    }

    /// The relays to use, as named (for links) — none with --no-nat or nat.enabled false.
    func relays(config: PipelineConfig) -> [PeerAddress] {
        guard !noNAT, config.nat.enabled || !relay.isEmpty else { return [] }
        var all: [PeerAddress] = []
        for text in config.nat.relays + relay {
            if let address = try? PeerAddress.parse(text), !all.contains(address) { all.append(address) }
        }
        return all
    }

    /// `dht` among the relays: look for relays in the DHT too.
    func findRelays(config: PipelineConfig) -> Bool {
        !noNAT && (config.nat.enabled || !relay.isEmpty) && (config.nat.relays + relay).contains("dht")
    }

    /// Names resolved to IP:PORT for the transfer worker (which has no DNS).
    static func resolve(_ relays: [PeerAddress]) -> [String] {
        DHTSettings.resolve(relays, what: "relay") { Terminal.warning($0) }
    }
}

struct NATCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nat",
        abstract: "Show what this machine looks like from outside: public address, NAT kind, relays.",
        discussion: """
            Asks the STUN servers in pipeline.json (nat.stun), or those given with --stun, from one \
            UDP socket which address and port they see. Two servers at different addresses tell \
            whether the NAT keeps one public port for every destination (hole punching can work) \
            or picks a new one for each (only a reverse connection or a relay will do).

            Exit status 69 when no server answered.
            """)

    @Option(name: .long, help: "A STUN server, HOST:PORT (repeatable; replaces nat.stun in pipeline.json).")
    var stun: [String] = []

    @OptionGroup var common: CommonOptions
    @OptionGroup var nat: NATOptions

    func validate() throws {
        for text in stun {
            do {
                _ = try PeerAddress.parse(text)
            } catch {
                throw ValidationError("--stun: \(error)")
            }
        }
    }

    func run() throws {
        let config = common.loadConfig()
        LineLogHandler.bootstrap(name: "supervisor", level: common.level)
        guard !nat.noNAT else { throw ValidationError("--no-nat: nothing to show") }
        let names = (stun.isEmpty ? config.nat.stun : stun).compactMap { try? PeerAddress.parse($0) }
        let servers = DHTSettings.resolve(names, what: "STUN server") { Terminal.warning($0) }
        guard !servers.isEmpty else {
            Terminal.error("no STUN server to ask (nat.stun in pipeline.json, or --stun HOST:PORT)")
            throw ExitCode(ExitCodes.unavailable)
        }
        let relays = nat.relays(config: config).map(\.description)
        let gateway = PortMapping.defaultGateway()
        let code = SupervisorRunner.run(config: config, logLevel: common.logLevel) { supervisor, logger in
            let context = SessionContext(
                supervisor: supervisor, dht: nil, output: Terminal.sessionOutput(progressToStderr: true), logger: logger
            )
            let session = NATSession(
                context: context, action: .probe(servers: servers, relays: relays, gateway: gateway))
            return session
        }
        throw ExitCode(code)
    }
}

struct RelayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Volunteer as a relay for peers that cannot reach each other; runs until Ctrl-C.",
        discussion: """
            Peers behind NAT register with a relay; a downloader that cannot reach such a peer \
            asks the relay, which joins the two connections and copies bytes between them. \
            Everything relayed is encrypted end to end between the peers: the relay sees \
            which addresses talk and how much, never a file's name or bytes. Run it on a \
            machine others can reach. The first line on stdout is the address it listens on.
            """)

    @Option(name: .long, help: "Address to accept peers on, HOST:PORT.")
    var listen: String = "0.0.0.0:7000"

    @Option(name: .long, help: "Most circuits at once.")
    var maxCircuits: UInt32 = 64

    @Option(name: .long, help: "Bytes per second in each direction of each circuit, e.g. 10MiB (0: unlimited).")
    var circuitRate: String = "0"

    @Option(name: .long, help: "Seconds a circuit may last (0: no limit).")
    var circuitSeconds: UInt32 = 3600

    @OptionGroup var common: CommonOptions
    @OptionGroup var dht: DHTOptions
    @OptionGroup var metrics: MetricsOptions

    func validate() throws {
        do {
            _ = try PeerAddress.parse(listen)
            _ = try ByteRate.parse(circuitRate)
        } catch {
            throw ValidationError("\(error)")
        }
        guard maxCircuits >= 1 && maxCircuits <= 100_000 else {
            throw ValidationError("--max-circuits: 1 to 100000")
        }
    }

    func run() throws {
        let config = common.loadConfig()
        LineLogHandler.bootstrap(name: "supervisor", level: common.level)
        let address = try PeerAddress.parse(listen)
        let rate = UInt64(try ByteRate.parse(circuitRate))
        // Relays announce themselves in the DHT (`DHTKey.relays`), for `--relay dht`.
        let dhtSettings = dht.settings(config: config)
        let code = SupervisorRunner.run(config: config, logLevel: common.logLevel, metrics: metrics.address) {
            supervisor, logger in
            let context = SessionContext(
                supervisor: supervisor,
                dht: dhtSettings.map { DHTClient(supervisor: supervisor, settings: $0, logger: logger) },
                output: Terminal.sessionOutput(progressToStderr: true), logger: logger)
            let session = NATSession(
                context: context,
                action: .relay(
                    host: address.host, port: UInt16(address.port), maxCircuits: maxCircuits, circuitRate: rate,
                    circuitSeconds: circuitSeconds))
            return session
        }
        throw ExitCode(code)
    }
}
