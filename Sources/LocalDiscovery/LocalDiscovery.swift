/// Local Service Discovery (BEP 14) as a pure Instance: announces in, datagrams in, ticks in;
/// datagrams to multicast and peers found out. No socket, no clock: the discovery worker's
/// `LANShell` owns the multicast sockets and feeds this the time.
///
/// - A share (`announce`) is announced at once, then every `announceInterval` (BEP 14's five
///   minutes), and again — at most once per `answerGap` per key — whenever someone new on the
///   LAN (a source, port and cookie not heard before) announces the same key, so a newcomer
///   hears of it in one round trip instead of minutes, and two peers never answer each other
///   back and forth.
/// - A download (`search`) announces its interest the same way (port 0 when it takes no
///   connections) and reports every peer that announces the key.
/// - What arrives is bounded: datagrams from off-link addresses are dropped, each source has
///   a token bucket, the table of sources is capped, and a peer is reported once per key.
public struct LocalDiscovery: Sendable {
    /// The two groups BEP 14 names, and the Host header that goes with each.
    public enum Group: Sendable, Hashable, CaseIterable {
        case ipv4, ipv6
        public var address: String { self == .ipv4 ? "239.192.152.143" : "ff15::efc0:988f" }
        public var host: String { self == .ipv4 ? "239.192.152.143:6771" : "[ff15::efc0:988f]:6771" }
        public static let port = 6771
    }

    /// A network this machine is on: an interface's address and prefix length. Announces are
    /// taken only from addresses inside one of these (or IPv6 link-local): "off-link" means
    /// from anywhere else, which a LAN-only protocol has no business hearing.
    public struct LocalNetwork: Sendable, Equatable {
        public var address: [UInt8]
        public var prefixLength: Int
        public init(address: [UInt8], prefixLength: Int) {
            self.address = address
            self.prefixLength = prefixLength
        }

        func contains(_ ip: [UInt8]) -> Bool {
            guard ip.count == address.count, prefixLength >= 0, prefixLength <= ip.count * 8 else { return false }
            var bits = prefixLength
            for (a, b) in zip(ip, address) {
                if bits <= 0 { return true }
                let mask: UInt8 = bits >= 8 ? 0xFF : ~(0xFF >> UInt8(bits))
                if a & mask != b & mask { return false }
                bits -= 8
            }
            return true
        }
    }

    public enum Directive: Sendable, Equatable {
        /// Multicast this datagram to the group on every interface.
        case send([UInt8], to: Group)
        /// A peer on the LAN takes part in `key`'s swarm at `address` ("IP:PORT", "[IPv6]:PORT").
        case found(key: [UInt8], address: String)
        /// Call `tick` at this time.
        case wake(at: Double)
    }

    public struct Counters: Sendable, Equatable {
        public var sent = 0
        public var received = 0
        public var offLink = 0
        public var malformed = 0
        public var rateLimited = 0
        public var own = 0
        public var found = 0
    }

    /// BEP 14: every five minutes.
    public var announceInterval: Double = 300
    /// The least time between two announces of one key (answers included).
    public var answerGap: Double = 1
    /// Datagrams a source may send per second, and in a burst.
    public var sourceRate: Double = 5
    public var sourceBurst: Double = 20
    public static let maxSources = 256
    public static let maxKeys = 256
    public static let maxFoundPerKey = 256

    public let cookie: String
    public private(set) var networks: [LocalNetwork]
    public private(set) var counters = Counters()
    private var groups: [Group]

    private struct Interest {
        var port: UInt16
        /// The families our port takes connections in: announced on those groups only (a
        /// peer that hears us on IPv6 dials our IPv6 address).
        var families: Set<Group>
        var serving: Bool
        var lastSent = -Double.infinity
        var nextAnnounce: Double
        var found: Set<String> = []
        /// Who announced this key (source, port, cookie): each is answered once.
        var heard: Set<String> = []
    }
    private var interests: [[UInt8]: Interest] = [:]
    private var sources: [[UInt8]: (tokens: Double, at: Double)] = [:]

    /// `cookie`: random, per process (ours come back to us through the loop). `groups`: the
    /// families this host has networks in.
    public init(cookie: String, networks: [LocalNetwork], groups: [Group] = Group.allCases) {
        self.cookie = cookie
        self.networks = networks
        self.groups = groups
    }

    public var keys: Int { interests.count }

    /// Start announcing a share we serve on `port`, which takes connections in `families`.
    public mutating func announce(key: [UInt8], port: UInt16, families: Set<Group>, now: Double) -> [Directive] {
        start(key: key, port: port, families: families, serving: true, now: now)
    }

    /// Start looking for `key`'s peers; `port`: where we take connections (0: nowhere), in
    /// `families`. Looking with port 0 asks on every group.
    public mutating func search(key: [UInt8], port: UInt16, families: Set<Group>, now: Double) -> [Directive] {
        start(key: key, port: port, families: port == 0 ? Set(Group.allCases) : families, serving: false, now: now)
    }

    public mutating func stop(key: [UInt8]) { interests[key] = nil }

    private mutating func start(key: [UInt8], port: UInt16, families: Set<Group>, serving: Bool, now: Double)
        -> [Directive]
    {
        guard key.count == 20, interests[key] != nil || interests.count < LocalDiscovery.maxKeys else { return [] }
        var interest =
            interests[key] ?? Interest(port: port, families: families, serving: serving, nextAnnounce: now)
        interest.port = port
        interest.families = families
        interest.serving = interest.serving || serving
        interest.nextAnnounce = now
        interests[key] = interest
        return tick(now: now)
    }

    /// Sends what is due and says when to come back.
    public mutating func tick(now: Double) -> [Directive] {
        // One datagram per port and set of groups, holding up to 16 keys.
        var due: [Batch: [[UInt8]]] = [:]
        for (key, interest) in interests where interest.nextAnnounce <= now {
            due[Batch(port: interest.port, families: interest.families), default: []].append(key)
        }
        var out: [Directive] = []
        for batchKey in due.keys.sorted(by: { ($0.port, $0.families.count) < ($1.port, $1.families.count) }) {
            let keys = (due[batchKey] ?? []).sorted { $0.lexicographicallyPrecedes($1) }
            for batch in stride(from: 0, to: keys.count, by: LSDMessage.maxKeys) {
                let slice = Array(keys[batch..<min(batch + LSDMessage.maxKeys, keys.count)])
                out += send(LSDMessage(port: batchKey.port, keys: slice, cookie: cookie), on: batchKey.families)
                for key in slice {
                    interests[key]?.lastSent = now
                    interests[key]?.nextAnnounce = now + announceInterval
                }
            }
        }
        if let next = interests.values.map(\.nextAnnounce).min() { out.append(.wake(at: next)) }
        return out
    }

    private struct Batch: Hashable {
        var port: UInt16
        var families: Set<Group>
    }

    private mutating func send(_ message: LSDMessage, on families: Set<Group>) -> [Directive] {
        counters.sent += 1
        return groups.filter(families.contains).map { .send(message.encoded(host: $0.host), to: $0) }
    }

    /// A datagram from `ip` (4 or 16 bytes) on the LSD port.
    public mutating func received(_ datagram: [UInt8], from ip: [UInt8], now: Double) -> [Directive] {
        counters.received += 1
        guard isOnLink(ip) else {
            counters.offLink += 1
            return []
        }
        guard admit(ip, now: now) else {
            counters.rateLimited += 1
            return []
        }
        let message: LSDMessage
        do {
            message = try LSDMessage(datagram: datagram)
        } catch {
            counters.malformed += 1
            return []
        }
        if message.cookie == cookie {
            counters.own += 1
            return []
        }
        var out: [Directive] = []
        var answer = false
        for key in message.keys {
            guard var interest = interests[key] else { continue }
            if message.port != 0, interest.found.count < LocalDiscovery.maxFoundPerKey {
                let address = LocalDiscovery.address(ip: ip, port: message.port)
                if interest.found.insert(address).inserted {
                    counters.found += 1
                    out.append(.found(key: key, address: address))
                }
            }
            // Someone new to the swarm: say we are here too, soon, once per gap.
            let who = "\(ip) \(message.port) \(message.cookie ?? "")"
            guard interest.heard.count < LocalDiscovery.maxFoundPerKey, interest.heard.insert(who).inserted else {
                interests[key] = interest
                continue
            }
            if interest.serving || interest.port != 0 {
                let soonest = max(now, interest.lastSent + answerGap)
                if interest.nextAnnounce > soonest {
                    interest.nextAnnounce = soonest
                    answer = true
                }
            }
            interests[key] = interest
        }
        if answer { out += tick(now: now) }
        return out
    }

    private func isOnLink(_ ip: [UInt8]) -> Bool {
        if ip.count == 16, ip[0] == 0xFE, ip[1] & 0xC0 == 0x80 { return true }  // fe80::/10
        return networks.contains { $0.contains(ip) }
    }

    /// A token bucket per source; the table is capped by dropping the fullest (quietest) one.
    private mutating func admit(_ ip: [UInt8], now: Double) -> Bool {
        var bucket = sources[ip] ?? (sourceBurst, now)
        bucket.tokens = min(sourceBurst, bucket.tokens + (now - bucket.at) * sourceRate)
        bucket.at = now
        guard bucket.tokens >= 1 else {
            sources[ip] = bucket
            return false
        }
        bucket.tokens -= 1
        if sources[ip] == nil, sources.count >= LocalDiscovery.maxSources,
            let quietest = sources.max(by: { $0.value.tokens < $1.value.tokens })?.key
        {
            sources[quietest] = nil
        }
        sources[ip] = bucket
        return true
    }

    static func address(ip: [UInt8], port: UInt16) -> String {
        if ip.count == 4 { return ip.map(String.init).joined(separator: ".") + ":\(port)" }
        var groups: [String] = []
        for i in stride(from: 0, to: 16, by: 2) {
            groups.append(String(UInt16(ip[i]) << 8 | UInt16(ip[i + 1]), radix: 16))
        }
        return "[\(groups.joined(separator: ":"))]:\(port)"
    }
}
