/// Who may use the local HTTP port (`/metrics`, and the web UI to come): the policy alone, no
/// IO, so every attack on it is a unit test. A request is let in only when
///
/// - its `Host` is this port on the loopback address by name or number (`127.0.0.1:PORT`,
///   `localhost:PORT`, `[::1]:PORT`) — a page on another site that rebinds its DNS name to
///   127.0.0.1 still sends its own name, and is refused;
/// - it has no `Origin`, or this port's own origin — another site's page cannot make the
///   browser send requests with side effects here;
/// - it carries the token, as `Authorization: Bearer TOKEN` or `?token=TOKEN` (what
///   `peershare` prints, as Jupyter does), compared in constant time.
public struct WebAccess: Sendable {
    public enum Verdict: Equatable, Sendable {
        case allowed
        /// 401: no token, or the wrong one.
        case unauthorized
        /// 403: the request comes from somewhere it must not (another host name or origin).
        case forbidden(String)
    }

    public let token: String
    public let port: Int

    public init(token: String, port: Int) {
        self.token = token
        self.port = port
    }

    public var allowedHosts: Set<String> { ["127.0.0.1:\(port)", "localhost:\(port)", "[::1]:\(port)"] }

    public func check(host: String?, origin: String?, authorization: String?, tokenParameter: String?) -> Verdict {
        guard let host, allowedHosts.contains(host.lowercased()) else {
            return .forbidden("this port answers requests for \(allowedHosts.sorted().joined(separator: ", ")) only")
        }
        if let origin, !allowedHosts.contains(where: { "http://\($0)" == origin.lowercased() }) {
            return .forbidden("requests from another origin are refused")
        }
        var offered: String?
        if let authorization, authorization.hasPrefix("Bearer ") {
            offered = String(authorization.dropFirst("Bearer ".count))
        } else {
            offered = tokenParameter
        }
        guard let offered, WebAccess.constantTimeEqual(offered, token) else { return .unauthorized }
        return .allowed
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for (p, q) in zip(x, y) { difference |= p ^ q }
        return difference == 0
    }
}

/// Turns the totals workers report (since each one started) into increments: a worker that
/// restarts starts again from zero, and a Prometheus counter must never go down.
public struct CounterAccumulator: Sendable {
    private var last: [String: UInt64] = [:]

    public init() {}

    /// How much `key` grew since the last call: the difference, or the whole value when it
    /// went down (the worker restarted).
    public mutating func increment(_ key: String, to value: UInt64) -> UInt64 {
        defer { last[key] = value }
        guard let previous = last[key], value >= previous else { return value }
        return value - previous
    }
}
