import ArgumentParser
import Benchmarks

/// `peershare dht swarm`: N real DHT nodes, each with its own UDP socket on 127.0.0.1, in this
/// process; they join through node 0, then run lookups, an announce and gets, then lose a
/// share of their members and run lookups again. Prints what it measured.
struct DHTSwarm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swarm", abstract: "Run N real DHT nodes on loopback UDP and measure lookups (with churn).")

    @Option(help: "Number of nodes.") var nodes: Int = 1000
    @Option(help: "Lookups per phase.") var lookups: Int = 200
    @Option(help: "Fraction of nodes killed before the last phase.") var churn: Double = 0.3
    @Option(help: "Query timeout in seconds (loopback answers in microseconds).") var timeout: Double = 0.5
    @Option(help: "Random seed for keys and choices.") var seed: UInt64 = 1
    @Flag(help: "Print one JSON object with every figure, for scripts.") var json = false

    func validate() throws {
        guard (2...20_000).contains(nodes) else { throw ValidationError("--nodes must be 2...20000") }
        guard (0.0..<1.0).contains(churn) else { throw ValidationError("--churn must be in [0, 1)") }
    }

    func run() throws {
        var benchmark = DHTSwarmBenchmark()
        (benchmark.nodes, benchmark.lookups, benchmark.churn) = (nodes, lookups, churn)
        (benchmark.timeout, benchmark.seed, benchmark.json) = (timeout, seed, json)
        try benchmark.run(print: Terminal.line)
    }
}

/// `peershare dht simulate`: the same pure DHT logic on a virtual network with a virtual clock
/// (5–50 ms one-way latency), for sizes real sockets cannot reach.
struct DHTSimulate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate", abstract: "Simulate N DHT nodes with a virtual clock and measure lookups (with churn)."
    )

    @Option(help: "Number of nodes.") var nodes: Int = 10_000
    @Option(help: "Lookups per phase.") var lookups: Int = 500
    @Option(help: "Fraction of nodes killed before the second phase.") var churn: Double = 0.3
    @Option(help: "Random seed.") var seed: UInt64 = 1

    func validate() throws {
        guard (2...100_000).contains(nodes) else { throw ValidationError("--nodes must be 2...100000") }
        guard (0.0..<1.0).contains(churn) else { throw ValidationError("--churn must be in [0, 1)") }
    }

    func run() throws {
        var benchmark = DHTSimulationBenchmark()
        (benchmark.nodes, benchmark.lookups, benchmark.churn, benchmark.seed) = (nodes, lookups, churn, seed)
        benchmark.run(print: Terminal.line)
    }
}
