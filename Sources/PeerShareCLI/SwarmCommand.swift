import ArgumentParser
import Foundation
import PeerShareCore
import Swarm

/// `peershare swarm`: the swarm's logic without the network.
struct SwarmCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swarm", abstract: "Study the swarm's logic on a virtual clock.",
        subcommands: [SwarmSimulate.self])
}

/// `peershare swarm simulate`: many `Download`/`Upload` Instances (the transfer worker's own
/// logic) on modelled links, one run per picking strategy, compared in one table.
struct SwarmSimulate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Simulate a swarm of downloaders on a virtual clock and compare chunk-picking strategies.",
        discussion: """
            Every downloader runs the same Download Instance as `peershare get`, every node serves \
            with the same Upload Instance; links and disks are modelled (docs/SWARM.md). All \
            downloaders arrive at once. Printed per strategy: completion times (median, p95, \
            last) beside the fluid lower bound, how many copies of the share the seeders sent, \
            where verified chunks came from, and bytes wasted on endgame duplicates.
            """)

    @Option(help: "Downloaders.") var peers: Int = 200
    @Option(help: "Seeders (they have the whole share at the start).") var seeders: Int = 1
    @Option(help: "Chunks in the share.") var chunks: Int = 500
    @Option(help: "Chunk size (e.g. 256KiB).") var chunkSize: String = "256KiB"
    @Option(help: "Every downloader's upload rate (e.g. 1MiB/s).") var uploadRate: String = "1MiB/s"
    @Option(help: "The seeders' upload rate (default: the downloaders').") var seederRate: String?
    @Option(help: "One-way latency of every link, in milliseconds.") var latency: Double = 50
    @Option(help: "Addresses per lookup and connections per downloader.") var neighbours: Int = 20
    @Option(help: "Fraction of downloaders that leave the moment they finish (0...1).") var churn: Double = 0
    @Option(help: "Downloaders that upload only corrupt pieces.") var liars: Int = 0
    @Option(help: "rarest-first, random, sequential, or all (compared).") var strategy: String = "all"
    @Option(help: "Random seed (the same seed replays the same run).") var seed: UInt64 = 1

    func strategies() throws -> [PickStrategy] {
        if strategy == "all" { return PickStrategy.allCases }
        guard let one = PickStrategy(rawValue: strategy) else {
            throw ValidationError("--strategy must be rarest-first, random, sequential or all")
        }
        return [one]
    }

    func validate() throws {
        guard (1...10_000).contains(peers) else { throw ValidationError("--peers must be 1...10000") }
        guard (1...100).contains(seeders) else { throw ValidationError("--seeders must be 1...100") }
        guard (1...100_000).contains(chunks) else { throw ValidationError("--chunks must be 1...100000") }
        guard (0...1).contains(churn) else { throw ValidationError("--churn must be in [0, 1]") }
        guard (0...peers).contains(liars) else { throw ValidationError("--liars must be 0...--peers") }
        guard (1...200).contains(neighbours) else { throw ValidationError("--neighbours must be 1...200") }
        guard latency >= 0 && latency <= 10_000 else { throw ValidationError("--latency must be 0...10000 ms") }
        _ = try strategies()
        _ = try settings(.rarestFirst)
    }

    func settings(_ pick: PickStrategy) throws -> SwarmSimulator.Config {
        var config = SwarmSimulator.Config()
        config.downloaders = peers
        config.seeders = seeders
        config.chunks = chunks
        // A size is written like a rate without the "/s".
        guard let size = try? ByteRate.parse(chunkSize), (1024...Double(16 << 20)).contains(size) else {
            throw ValidationError("--chunk-size must be 1KiB...16MiB")
        }
        config.chunkSize = Int(size)
        func rate(_ text: String, _ name: String) throws -> Double {
            guard let value = try? ByteRate.parse(text), value > 0 else {
                throw ValidationError("\(name) must be a rate above zero, e.g. 1MiB/s")
            }
            return value
        }
        config.uploadRate = try rate(uploadRate, "--upload-rate")
        config.seederUploadRate = try seederRate.map { try rate($0, "--seeder-rate") }
        config.latency = latency / 1000
        config.neighbours = neighbours
        config.churn = churn
        config.liars = liars
        config.strategy = pick
        config.seed = seed
        return config
    }

    func run() throws {
        let first = try settings(.rarestFirst)
        let megabytes = Double(first.chunks * first.chunkSize) / 1_048_576
        Terminal.line(
            String(
                format:
                    "%d downloaders, %d seeder(s), a %.0f MiB share in %d chunks; uploads %@ (seeders %@), %.0f ms latency, %d neighbours, churn %.2f, %d liars, seed %llu",
                peers, seeders, megabytes, chunks, ByteRate.describe(first.uploadRate),
                ByteRate.describe(first.seederUploadRate ?? first.uploadRate), latency, neighbours, churn, liars, seed))
        Terminal.line(
            "strategy         finished   median     p95    last  bound  seeder sent  from seeders  busiest peer  endgame waste  corrupt  bans  wall"
        )
        for pick in try strategies() {
            let started = ProcessInfo.processInfo.systemUptime
            var simulator = SwarmSimulator(config: try settings(pick))
            let report = simulator.run()
            let wall = ProcessInfo.processInfo.systemUptime - started
            func seconds(_ value: Double?) -> String { value.map { String(format: "%6.0f s", $0) } ?? "     -  " }
            Terminal.line(
                String(
                    format:
                        "%@ %4d/%-4d %@ %@ %@ %4.0f s %8.2f copies %10.1f %% %11.1f %% %12.2f %% %6.1f MiB %5d %4.1f s",
                    pick.rawValue.padding(toLength: 15, withPad: " ", startingAt: 0), report.completionTimes.count,
                    report.honestDownloaders,
                    seconds(report.percentile(0.5)), seconds(report.percentile(0.95)),
                    seconds(report.completionTimes.last), report.lowerBound, report.seederCopies,
                    report.fromSeeders * 100, report.busiestDownloaderShare * 100, report.endgameWaste * 100,
                    Double(report.corruptBytes) / 1_048_576, report.bans, wall))
            if report.failed > 0 {
                Terminal.line("  \(report.failed) downloads failed (no peer left with the chunks they lacked)")
            }
        }
    }
}
