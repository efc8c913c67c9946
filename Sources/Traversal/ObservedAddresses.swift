import PeerShareCore

/// What peers say they see us at (the `observed` field of their handshakes), as a vote: an
/// address counts once two different peers (by IP) report the same public IP, so one liar
/// cannot move it. Bounded: the latest report of at most `capacity` peers is kept.
public struct ObservedAddresses: Sendable {
    public static let capacity = 32
    private var reports: [(source: String, ip: String)] = []
    public private(set) var agreed: String?

    public init() {}

    /// Records a report; returns the agreed IP when this report changed it.
    public mutating func record(sourceIP: String, observed: PeerAddress) -> String? {
        reports.removeAll { $0.source == sourceIP }
        reports.append((sourceIP, observed.host))
        if reports.count > ObservedAddresses.capacity { reports.removeFirst() }
        var votes: [String: Int] = [:]
        for report in reports { votes[report.ip, default: 0] += 1 }
        guard let (best, count) = votes.max(by: { $0.value < $1.value }), count >= 2, best != agreed else {
            return nil
        }
        agreed = best
        return best
    }
}
