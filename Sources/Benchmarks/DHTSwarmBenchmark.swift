import DiscoveryWorker
import Foundation
import Kademlia
import NIOCore
import NIOPosix
import PeerShareCore

/// `peershare dht swarm`: N real DHT nodes, each with its own UDP socket on 127.0.0.1, in one
/// process; they join through node 0, then run lookups, an announce and gets, then lose a
/// share of their members and run lookups again. `print` gets each line of the report.
public struct DHTSwarmBenchmark {
    public var nodes = 1000
    public var lookups = 200
    public var churn = 0.3
    public var timeout = 0.5
    public var seed: UInt64 = 1
    public var json = false

    public init() {}

    public func run(print: (String) -> Void) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        var config = DHTNode.Config()
        config.queryTimeout = timeout
        config.softTimeout = timeout / 2
        // Every node here shares 127.0.0.1, so the per-IP flood limit would throttle the
        // whole swarm; it is tested on its own in the unit tests.
        config.queriesPerSecondPerIP = 1e9
        let rssBefore = residentKiB()
        let started = Date()
        var shells: [DHTShell] = []
        for _ in 0..<nodes {
            shells.append(try DHTShell.start(host: "127.0.0.1", port: 0, config: config, on: loop).wait())
        }
        let router = NodeAddress(ip: 0x7F00_0001, port: UInt16(shells[0].port))
        // Join in batches: a node's join lookups run concurrently with its batch's.
        var index = 1
        while index < nodes {
            let batch = shells[index..<min(index + 10, nodes)]
            let futures = try loop.submit { batch.map { $0.bootstrap(routers: [router]) } }.wait()
            for future in futures { _ = try? future.wait() }
            index += 10
        }
        // Let the join refreshes settle; a node whose join was lost in the rush joins again.
        Thread.sleep(forTimeInterval: 2 * timeout + 0.5)
        var rejoined = 0
        let allShells = shells
        for round in 0..<3 {
            let lonely = try loop.submit {
                allShells.indices.dropFirst().filter { allShells[$0].node.table.nodeCount < 2 }
            }
            .wait()
            if lonely.isEmpty { break }
            if round == 0 { rejoined = lonely.count }
            let futures = try loop.submit { lonely.map { allShells[$0].bootstrap(routers: [router]) } }.wait()
            for future in futures { _ = try? future.wait() }
        }
        let joinSeconds = Date().timeIntervalSince(started)
        let rssPerNode = Double(residentKiB() - rssBefore) / Double(nodes)

        var random = SplitMix64(seed: seed)
        var alive = Array(0..<nodes)
        func trueClosest(_ key: NodeID, excluding origin: Int) -> NodeID? {
            alive.filter { $0 != origin }.map { shells[$0].node.id }.min { $0.distance(to: key) < $1.distance(to: key) }
        }

        struct Phase {
            var name: String
            var attempts = 0
            var successes = 0
            var hops = Distribution()
            var milliseconds = Distribution()
            var queries = Distribution()
        }

        func lookupPhase(_ name: String, kind: Lookup.Kind, key fixedKey: NodeID?, expectPeer: NodeAddress?) throws
            -> Phase
        {
            var phase = Phase(name: name)
            var pending: [(EventLoopFuture<(DHTNode.LookupResult, Double)>, NodeID, Int)] = []
            func drain() throws {
                for (future, key, origin) in pending {
                    let (result, seconds) = try future.wait()
                    if result.hops == 0, ProcessInfo.processInfo.environment["PEERSHARE_DEBUG_SWARM"] != nil {
                        let info = try loop.submit { () -> String in
                            let n = allShells[origin].node
                            return
                                "origin \(origin) table \(n.table.nodeCount) stats \(n.stats) queries \(result.queries) responses \(result.responses) ms \(seconds * 1000)"
                        }.wait()
                        StandardStream.write("ZERO-HOP \(info)\n", to: StandardStream.error)
                    }
                    phase.attempts += 1
                    phase.hops.add(Double(result.hops))
                    phase.queries.add(Double(result.queries))
                    phase.milliseconds.add(seconds * 1000)
                    let ok: Bool
                    if let expectPeer {
                        ok = result.peers.contains(expectPeer)
                    } else {
                        ok = result.closest.first?.id == trueClosest(key, excluding: origin)
                    }
                    if ok { phase.successes += 1 }
                }
                pending.removeAll()
            }
            for _ in 0..<lookups {
                let key = fixedKey ?? NodeID.random(using: &random)
                let origin = alive[Int.random(in: 0..<alive.count, using: &random)]
                let shell = shells[origin]
                // Timed on the loop, from start to completion, whatever order they are collected in.
                let future = try loop.submit {
                    let start = shell.now
                    return shell.lookup(key, kind: kind).map { ($0, shell.now - start) }
                }.wait()
                pending.append((future, key, origin))
                if pending.count == 10 { try drain() }
            }
            try drain()
            return phase
        }

        var phases: [Phase] = []
        phases.append(try lookupPhase("find_node, no churn", kind: .findNode, key: nil, expectPeer: nil))
        let shareKey = NodeID.shareKey(shareID: (0..<32).map { _ in UInt8.random(in: 0...255, using: &random) })
        let announcer = shells[nodes / 2]
        let announced = try loop.submit { announcer.announce(shareKey, port: 4242) }.wait().wait()
        phases.append(
            try lookupPhase(
                "get_peers of an announced key", kind: .getPeers, key: shareKey,
                expectPeer: NodeAddress(ip: 0x7F00_0001, port: 4242)))
        var killed = Set<Int>()
        let toKill = Int(Double(nodes) * churn)
        while killed.count < toKill { killed.insert(Int.random(in: 1..<nodes, using: &random)) }
        for number in killed { _ = try? loop.submit { allShells[number].close() }.wait().wait() }
        alive = alive.filter { !killed.contains($0) }
        phases.append(
            try lookupPhase(
                "find_node, \(Int(churn * 100)) % of nodes killed", kind: .findNode, key: nil, expectPeer: nil))

        if json {
            var object: [String: Any] = [
                "nodes": nodes, "join_seconds": joinSeconds, "rss_kib_per_node": rssPerNode,
                "announced_to": announced.announcedTo, "rejoined": rejoined,
            ]
            for (number, phase) in phases.enumerated() {
                object["phase\(number)"] = [
                    "name": phase.name, "attempts": phase.attempts, "successes": phase.successes,
                    "hops_median": phase.hops.percentile(0.5), "hops_p95": phase.hops.percentile(0.95),
                    "ms_median": phase.milliseconds.percentile(0.5), "ms_p95": phase.milliseconds.percentile(0.95),
                    "queries_mean": phase.queries.mean, "hops_histogram": phase.hops.histogram,
                ]
            }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(
                String(
                    format: "%d real DHT nodes on 127.0.0.1 joined in %.1f s (%d joined twice); %.1f KiB RSS per node",
                    nodes, joinSeconds, rejoined, rssPerNode))
            print("announce of one key reached \(announced.announcedTo) nodes")
            for phase in phases {
                print(
                    String(
                        format:
                            "%@: %d/%d succeeded (%.1f %%); hops median %.0f, p95 %.0f; %.1f ms median, %.1f ms p95; %.1f queries per lookup",
                        phase.name, phase.successes, phase.attempts,
                        Double(phase.successes) * 100 / Double(max(1, phase.attempts)),
                        phase.hops.percentile(0.5), phase.hops.percentile(0.95), phase.milliseconds.percentile(0.5),
                        phase.milliseconds.percentile(0.95), phase.queries.mean))
                print("  hop count distribution (hops:lookups): \(phase.hops.histogram)")
            }
        }
        for (number, shell) in shells.enumerated() where !killed.contains(number) {
            _ = try? loop.submit { shell.close() }.wait().wait()
        }
    }
}
