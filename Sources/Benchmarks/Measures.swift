import Foundation

/// Statistics helpers for the DHT benchmarks.
public struct Distribution {
    public init() {}
    public var values: [Double] = []
    public mutating func add(_ value: Double) { values.append(value) }
    public func percentile(_ p: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p))]
    }
    public var mean: Double { values.isEmpty ? 0 : values.reduce(0, +) / Double(values.count) }
    public var histogram: String {
        var counts: [Int: Int] = [:]
        for value in values { counts[Int(value), default: 0] += 1 }
        return counts.keys.sorted().map { "\($0):\(counts[$0] ?? 0)" }.joined(separator: " ")
    }
}

/// This process's resident memory, from /proc/self/status.
public func residentKiB() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? 0
    }
    return 0
}
