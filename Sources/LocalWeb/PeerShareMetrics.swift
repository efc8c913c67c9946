import CoreMetrics
import IPC
import Prometheus
import Synchronization

/// PeerShare's metrics, through swift-metrics with swift-prometheus behind it: what the workers
/// count (`WorkerReport.counters`) and the supervisor's own (worker restarts), rendered in the
/// Prometheus text format. Names are documented in docs/PROTOCOL.md §7.
public final class PeerShareMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let accumulator = Mutex(CounterAccumulator())

    /// Worker counters that are levels, not totals.
    static let gauges: Set<String> = [
        "serving_connections", "download_peers", "dht_nodes", "relay_registrations", "relay_circuits",
    ]

    public init() {
        registry = PrometheusCollectorRegistry()
        factory = PrometheusMetricsFactory(registry: registry)
    }

    /// Folds in one scrape's worker counters and restart counts, then renders everything.
    public func render(workers: [WorkerRole: [WorkerCounter]], restarts: [WorkerRole: Int]) -> String {
        render(scopes: [Scope(name: "", workers: workers, restarts: restarts)])
    }

    /// One supervisor's workers: the daemon has one per share or download, besides its own.
    public struct Scope: Sendable {
        public var name: String
        public var workers: [WorkerRole: [WorkerCounter]]
        public var restarts: [WorkerRole: Int]

        public init(name: String, workers: [WorkerRole: [WorkerCounter]], restarts: [WorkerRole: Int]) {
            self.name = name
            self.workers = workers
            self.restarts = restarts
        }
    }

    /// Totals over every scope: a counter grows by what each scope's worker added since the
    /// last scrape (a scope's restarted worker starts from zero again); a gauge is the sum of
    /// the scopes' current levels.
    public func render(scopes: [Scope]) -> String {
        accumulator.withLock { accumulator in
            var levels: [String: Int64] = [:]
            for scope in scopes {
                for (role, counters) in scope.workers.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                    for counter in counters where WorkerCounter.isValidName(counter.name) {
                        if PeerShareMetrics.gauges.contains(counter.name) {
                            levels[counter.name, default: 0] &+= Int64(clamping: counter.value)
                            continue
                        }
                        var name = counter.name
                        var dimensions: [(String, String)] = []
                        if name.hasPrefix("connections_") {
                            dimensions = [("path", String(name.dropFirst("connections_".count)))]
                            name = "connections"
                        }
                        let key = "\(scope.name) \(role.rawValue) \(counter.name)"
                        let grown = accumulator.increment(key, to: counter.value)
                        factory.makeCounter(label: "peershare_\(name)_total", dimensions: dimensions)
                            .increment(by: Int64(clamping: grown))
                    }
                }
                for (role, count) in scope.restarts {
                    let grown = accumulator.increment(
                        "\(scope.name) supervisor restarts \(role.rawValue)", to: UInt64(max(0, count)))
                    factory.makeCounter(
                        label: "peershare_worker_restarts_total", dimensions: [("worker", role.rawValue)]
                    )
                    .increment(by: Int64(clamping: grown))
                }
            }
            for (name, level) in levels {
                factory.makeMeter(label: "peershare_\(name)", dimensions: []).set(level)
            }
        }
        return registry.emitToString()
    }
}
