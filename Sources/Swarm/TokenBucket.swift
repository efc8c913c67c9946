/// A token bucket for bandwidth limits. Pure: the caller passes the time in.
///
/// Chunks are larger than any sensible burst, so the bucket may go into debt: a send is
/// allowed whenever the balance is positive, and the balance may then fall below zero; the
/// next send waits until the debt is paid. Over any window longer than a chunk's worth of
/// time the rate holds, and a chunk never has to be split.
public struct TokenBucket: Sendable, Equatable {
    /// Bytes per second; 0 means unlimited.
    public private(set) var rate: Double
    /// Most tokens saved up while idle: a tenth of a second's worth.
    public var burst: Double { rate / 10 }
    private var balance: Double
    private var updatedAt: Double

    public init(rate: Double, now: Double) {
        self.rate = max(0, rate)
        self.balance = max(0, rate) / 10
        self.updatedAt = now
    }

    public var isUnlimited: Bool { rate == 0 }

    /// Changes the rate (a running `peershare limit`); saved tokens are capped to the new burst.
    public mutating func setRate(_ newRate: Double, now: Double) {
        refill(now: now)
        rate = max(0, newRate)
        balance = min(balance, burst)
    }

    private mutating func refill(now: Double) {
        guard now > updatedAt else { return }
        balance = min(burst, balance + (now - updatedAt) * rate)
        updatedAt = now
    }

    /// Spends `bytes` whatever the balance (work done for a peer that brought nothing, such
    /// as a chunk read and then cancelled): the debt delays what comes next.
    public mutating func charge(_ bytes: Int, now: Double) {
        guard rate > 0 else { return }
        refill(now: now)
        balance -= Double(bytes)
    }

    /// Gives back tokens taken for a send that did not happen.
    public mutating func refund(_ bytes: Int) {
        guard rate > 0 else { return }
        balance = min(burst, balance + Double(bytes))
    }

    /// Seconds until a send would be allowed (0: now); spends nothing.
    public mutating func waitTime(now: Double) -> Double {
        guard rate > 0 else { return 0 }
        refill(now: now)
        return balance > 0 ? 0 : -balance / rate + 0.001
    }

    /// Spends `bytes` and returns 0 if sending now is allowed; otherwise spends nothing and
    /// returns how many seconds to wait before asking again.
    public mutating func take(_ bytes: Int, now: Double) -> Double {
        guard rate > 0 else { return 0 }
        refill(now: now)
        guard balance > 0 else { return -balance / rate + 0.001 }
        balance -= Double(bytes)
        return 0
    }
}
