/// When a share the daemon holds may sleep: its workers stopped, its port held by the daemon,
/// woken by the next peer that connects (`HeldListener`).
///
/// Pure and deterministic: the daemon feeds it what the item's transfer worker counted, with
/// the time, and it answers whether the item has been idle long enough. Idle means no peer
/// connected and no activity — no peer greeted, no byte sent — since the previous look.
public struct SleepPolicy: Sendable, Equatable {
    /// Seconds without a peer before an item sleeps (0: never).
    public let idleSeconds: Double
    /// What the transfer worker had counted at the last look, and since when it has not moved.
    private var lastActivity: UInt64?
    private var quietSince: Double?

    public init(idleSeconds: Double) { self.idleSeconds = idleSeconds }

    /// One look at the item's transfer worker. `connections`: peers connected now (serving or
    /// fetching); `activity`: any counter that grows with traffic (peers greeted + bytes
    /// sent). True: stop its workers now.
    public mutating func observe(now: Double, connections: UInt64, activity: UInt64) -> Bool {
        guard idleSeconds > 0 else { return false }
        defer { lastActivity = activity }
        guard connections == 0, lastActivity == activity else {
            quietSince = nil
            return false
        }
        guard let since = quietSince else {
            quietSince = now
            return false
        }
        return now - since >= idleSeconds
    }

    /// The item restarted (woken, resumed): it starts its idle time again.
    public mutating func reset() {
        lastActivity = nil
        quietSince = nil
    }
}
