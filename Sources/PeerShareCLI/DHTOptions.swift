import ArgumentParser
import Foundation
import PeerShareCore
import Sessions
import Supervisor

/// DHT flags shared by `share`, `get` and `dht`.
struct DHTOptions: ParsableArguments {
    @Option(
        name: .long,
        help: "A DHT node to join through, HOST:PORT (repeatable; replaces the routers in pipeline.json).")
    var bootstrap: [String] = []

    @Option(name: .long, help: "UDP address of this DHT node, HOST:PORT (a fixed port keeps the routing table).")
    var dhtListen: String?

    @Flag(name: .long, help: "Do not use the DHT (peers only from the link and --peer).")
    var noDHT = false

    func validate() throws {
        for text in bootstrap + (dhtListen.map { [$0] } ?? []) {
            do {
                _ = try PeerAddress.parse(text)
            } catch {
                throw ValidationError("\(error)")
            }
        }
    }

    /// nil when the DHT is off by flag or by pipeline.json.
    func settings(config: PipelineConfig) -> DHTSettings? {
        guard !noDHT, config.dht.enabled || !bootstrap.isEmpty || dhtListen != nil else { return nil }
        let listen = (try? PeerAddress.parse(dhtListen ?? config.dht.listen)) ?? PeerAddress(host: "0.0.0.0", port: 0)
        let names = (bootstrap.isEmpty ? config.dht.bootstrap : bootstrap).compactMap { try? PeerAddress.parse($0) }
        let routers = DHTSettings.resolve(names) { Terminal.warning($0) }
        return DHTSettings(
            host: listen.host, port: listen.port, routers: routers,
            statePath: DHTSettings.defaultStatePath(port: listen.port, environment: ProcessInfo.processInfo.environment)
        )
    }
}

/// LAN discovery flags shared by `share` and `get`.
struct LANOptions: ParsableArguments {
    @Flag(
        name: .customLong("no-lan"),
        help: "Do not announce or look for peers on the local network (BEP 14 multicast; lan.enabled in pipeline.json)."
    )
    var noLAN = false

    /// False when LAN discovery is off by flag or by pipeline.json.
    func enabled(config: PipelineConfig) -> Bool { !noLAN && config.lan.enabled }
}

/// The local HTTP port, shared by `share` and `get`.
struct MetricsOptions: ParsableArguments {
    @Option(
        name: .customLong("metrics"),
        help: ArgumentHelp(
            "Serve Prometheus metrics at http://HOST:PORT/metrics, loopback only (port 0: any free one).",
            discussion: "The URL, with the token every request needs, is printed on stderr."))
    var metrics: String?

    func validate() throws {
        guard let metrics else { return }
        guard let address = try? PeerAddress.parse(metrics) else {
            throw ValidationError("--metrics: '\(metrics)' is not HOST:PORT")
        }
        guard ["127.0.0.1", "::1", "localhost"].contains(address.host) else {
            throw ValidationError("--metrics: serve on a loopback address (127.0.0.1:PORT), not \(address.host)")
        }
    }

    var address: PeerAddress? { metrics.flatMap { try? PeerAddress.parse($0) } }
}
