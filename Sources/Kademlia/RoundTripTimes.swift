/// How long DHT nodes take to answer, measured: how long to wait for one before a lookup
/// moves on without it.
///
/// Each answer to one of our queries is a sample of its node's round trip. As TCP does
/// (RFC 6298), a smoothed mean and mean deviation are kept — for every node that has answered
/// (at most `maxTracked` of them) and for all answers together — and a node's patience is
/// `mean + 4 × deviation`: long enough for nearly every answer that is coming, short enough
/// that a dead node costs a lookup little. A node never heard from gets the patience of all
/// nodes together, whose spread covers near and far ones. Pure: samples and questions only.
public struct RoundTripTimes: Sendable {
    struct Estimate: Sendable, Equatable {
        var mean: Double
        var deviation: Double

        init(first sample: Double) {
            mean = sample
            deviation = sample / 2
        }

        mutating func add(_ sample: Double) {
            deviation = 0.75 * deviation + 0.25 * abs(mean - sample)
            mean = 0.875 * mean + 0.125 * sample
        }

        var patience: Double { mean + 4 * deviation }
    }

    /// Nodes whose own round trip is kept; beyond that, one is forgotten for each new one.
    public static let maxTracked = 2048

    private var overall: Estimate?
    private var byNode: [NodeAddress: Estimate] = [:]

    public init() {}

    public var tracked: Int { byNode.count }

    /// An answer from `node`, `seconds` after the query went out.
    public mutating func record(_ seconds: Double, from node: NodeAddress) {
        guard seconds.isFinite, seconds >= 0 else { return }
        if overall == nil { overall = Estimate(first: seconds) } else { overall?.add(seconds) }
        if byNode[node] != nil {
            byNode[node]?.add(seconds)
            return
        }
        if byNode.count >= RoundTripTimes.maxTracked, let any = byNode.keys.first {
            byNode[any] = nil
        }
        byNode[node] = Estimate(first: seconds)
    }

    /// How long to wait for `node` before moving on, within [floor, ceiling]; the ceiling
    /// while nothing has been measured.
    public func patience(for node: NodeAddress, floor: Double, ceiling: Double) -> Double {
        guard let estimate = byNode[node] ?? overall else { return ceiling }
        return min(ceiling, max(floor, estimate.patience))
    }
}
