import ArgumentParser
import Foundation
import Kademlia
import Logging
import PeerShareCore
import Sessions
import Supervisor
import WorkerRuntime

/// `peershare dht`: watch Kademlia work. Each subcommand runs a real supervisor and discovery
/// worker, except `swarm` and `simulate`, which run many nodes in this one process.
struct DHTCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dht",
        abstract: "Explore the Mainline DHT (BEP 5): routing table, lookups with every hop, announce and get.",
        subcommands: [
            DHTNodeCommand.self, DHTRoutes.self, DHTLookup.self, DHTGet.self, DHTAnnounce.self, DHTSwarm.self,
            DHTSimulate.self,
        ])
}

/// A 40-hex-digit key (a BitTorrent info-hash, say) or a peershare:// link (its share's key).
func parseDHTKey(_ text: String) throws -> [UInt8] {
    if text.hasPrefix(ShareLink.scheme) {
        do {
            return DHTKey.forShare(try ShareLink.parse(text).shareID)
        } catch {
            throw ValidationError("malformed link: \(error)")
        }
    }
    guard let id = NodeID(hex: text) else {
        throw ValidationError("a key is 40 hex digits (20 bytes) or a peershare:// link")
    }
    return id.bytes
}

/// Runs one DHT action through the supervisor and its discovery worker.
/// `metrics`: serve /metrics while it runs (`dht node`).
func runDHTAction(
    _ action: DHTSession.Action, common: CommonOptions, dht: DHTOptions, metrics: PeerAddress? = nil
) throws -> Never {
    let config = common.loadConfig()
    LineLogHandler.bootstrap(name: "supervisor", level: common.level)
    var options = dht
    options.noDHT = false
    guard let settings = options.settings(config: config) else { throw ValidationError("the DHT is disabled") }
    let code = SupervisorRunner.run(config: config, logLevel: common.logLevel, metrics: metrics) { supervisor, logger in
        let node = DHTClient(supervisor: supervisor, settings: settings, logger: logger)
        let context = SessionContext(
            supervisor: supervisor, dht: node, output: Terminal.sessionOutput(progressToStderr: true), logger: logger)
        let session = DHTSession(context: context, node: node, action: action)
        return session
    }
    throw ExitCode(code)
}

struct DHTNodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run a DHT node until Ctrl-C; prints its UDP address (others can bootstrap from it).")
    @OptionGroup var dht: DHTOptions
    @OptionGroup var common: CommonOptions
    @OptionGroup var metrics: MetricsOptions

    func run() throws { try runDHTAction(.node, common: common, dht: dht, metrics: metrics.address) }
}

struct DHTRoutes: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "routes", abstract: "Join the DHT, then print the routing table bucket by bucket and the counters."
    )
    @OptionGroup var dht: DHTOptions
    @OptionGroup var common: CommonOptions
    func run() throws { try runDHTAction(.routes, common: common, dht: dht) }
}

struct DHTLookup: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lookup", abstract: "Find the nodes closest to KEY (find_node); --trace prints every hop.")
    @Argument(help: "40 hex digits or a peershare:// link") var key: String
    @Flag(help: "Print each query's answer: who, their distance to KEY, what they returned.") var trace = false
    @OptionGroup var dht: DHTOptions
    @OptionGroup var common: CommonOptions
    func run() throws { try runDHTAction(.lookup(key: try parseDHTKey(key), trace: trace), common: common, dht: dht) }
}

struct DHTGet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get", abstract: "Find the peers announced under KEY (get_peers).")
    @Argument(help: "40 hex digits or a peershare:// link") var key: String
    @Flag(help: "Print every hop.") var trace = false
    @OptionGroup var dht: DHTOptions
    @OptionGroup var common: CommonOptions
    func run() throws { try runDHTAction(.getPeers(key: try parseDHTKey(key), trace: trace), common: common, dht: dht) }
}

struct DHTAnnounce: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "announce", abstract: "Announce PORT under KEY to the closest nodes (announce_peer).")
    @Argument(help: "40 hex digits or a peershare:// link") var key: String
    @Option(help: "The TCP port to announce.") var port: UInt16
    @Flag(help: "Print every hop.") var trace = false
    @OptionGroup var dht: DHTOptions
    @OptionGroup var common: CommonOptions
    func run() throws {
        try runDHTAction(.announce(key: try parseDHTKey(key), port: port, trace: trace), common: common, dht: dht)
    }
}
