import Foundation
import Kademlia
import PeerShareCore

/// `peershare dht simulate`: the pure DHT logic on a virtual network with a virtual clock
/// (5–50 ms one-way latency), for sizes real sockets cannot reach.
public struct DHTSimulationBenchmark {
    public var nodes = 10_000
    public var lookups = 500
    public var churn = 0.3
    public var seed: UInt64 = 1

    public init() {}

    public func run(print: (String) -> Void) {
        let rssBefore = residentKiB()
        let wallStart = Date()
        var sim = DHTSimulator(seed: seed)
        sim.addNode(bootstrap: nil)
        for number in 1..<nodes {
            sim.addNode(bootstrap: 0)
            if number % 1000 == 0 {
                StandardStream.write("joined \(number) nodes\n", to: StandardStream.error)
            }
        }
        let rssPerNode = Double(residentKiB() - rssBefore) / Double(nodes)
        print(
            String(
                format:
                    "%d simulated nodes joined (%.0f s of wall time, %.1f KiB RSS per node, %.0f virtual packets per join)",
                nodes,
                Date().timeIntervalSince(wallStart), rssPerNode, Double(sim.packetsDelivered) / Double(nodes)))
        var random = SplitMix64(seed: seed &+ 1)
        func phase(_ name: String, alive: [Int]) {
            var hops = Distribution()
            var milliseconds = Distribution()
            var queries = Distribution()
            var successes = 0
            for _ in 0..<lookups {
                let key = NodeID.random(using: &random)
                let origin = alive[Int.random(in: 0..<alive.count, using: &random)]
                guard let (result, seconds) = sim.timedLookup(from: origin, target: key) else { continue }
                hops.add(Double(result.hops))
                queries.add(Double(result.queries))
                milliseconds.add(seconds * 1000)
                if result.closest.first?.id == sim.trueClosest(to: key, excluding: origin) { successes += 1 }
            }
            print(
                String(
                    format:
                        "%@: %d/%d succeeded (%.1f %%); hops median %.0f, p95 %.0f; %.0f ms median, %.0f ms p95 (virtual); %.1f queries per lookup",
                    name, successes, lookups, Double(successes) * 100 / Double(lookups), hops.percentile(0.5),
                    hops.percentile(0.95), milliseconds.percentile(0.5), milliseconds.percentile(0.95), queries.mean))
            print("  hop count distribution (hops:lookups): \(hops.histogram)")
        }
        phase("find_node, no churn", alive: Array(0..<nodes))
        var killed = Set<Int>()
        while killed.count < Int(Double(nodes) * churn) { killed.insert(Int.random(in: 1..<nodes, using: &random)) }
        for number in killed { sim.kill(number) }
        phase("find_node, \(Int(churn * 100)) % of nodes killed", alive: (0..<nodes).filter { !killed.contains($0) })
    }
}
