/// Kademlia's routing table as BEP 5 describes it: buckets of at most k = 8 nodes, each
/// covering a range of the id space; only the bucket whose range holds our own id splits,
/// so the table knows many nodes near us and a few far away.
///
/// Representation (as in libtorrent): bucket i holds nodes whose id shares exactly i
/// leading bits with ours; the last bucket holds everything sharing more. Splitting the last
/// bucket moves its nodes that share one more bit into a new last bucket.
///
/// Pure: no sockets, no clock. Events come in as verbs (`nodeResponded`, `nodeQueriedUs`,
/// `nodeFailed`) with the time; the result says what the caller must do (e.g. ping the
/// least-recently-seen node before anyone is evicted).
public struct RoutingTable: Sendable {
    public static let k = 8
    /// A node is "good" if it answered us within this many seconds (BEP 5: 15 minutes).
    public static let goodWindow: Double = 15 * 60
    /// A node that failed this many queries in a row is bad and may be replaced at once.
    public static let failuresBeforeBad = 2

    public struct Entry: Equatable, Sendable {
        public var info: NodeInfo
        /// Last time the node answered one of our queries (nil: never).
        public var lastResponse: Double?
        /// Last time we heard anything from it.
        public var lastSeen: Double
        public var failures: Int

        public var isBad: Bool { failures >= RoutingTable.failuresBeforeBad }
        public func isGood(now: Double) -> Bool {
            guard let lastResponse, !isBad else { return false }
            return now - lastResponse < RoutingTable.goodWindow
        }
    }

    public struct Bucket: Equatable, Sendable {
        /// Least recently seen first.
        public var entries: [Entry] = []
        /// A node waiting for a slot: it replaces a node that fails its ping.
        public var replacement: NodeInfo?
        public var lastChanged: Double
    }

    public enum InsertResult: Equatable, Sendable {
        case added
        case updated
        /// The bucket is full of nodes that may be alive: ping this one (the least recently
        /// seen); if it fails, the candidate takes its place.
        case pingNeeded(NodeInfo)
        case ignored
    }

    public let ownID: NodeID
    public private(set) var buckets: [Bucket]

    public init(ownID: NodeID, now: Double) {
        self.ownID = ownID
        self.buckets = [Bucket(lastChanged: now)]
    }

    public var nodeCount: Int { buckets.reduce(0) { $0 + $1.entries.count } }
    public var allNodes: [Entry] { buckets.flatMap(\.entries) }

    /// Whether the node is in the table already (under this address).
    public func contains(_ info: NodeInfo) -> Bool {
        buckets[bucketIndex(for: info.id)].entries.contains { $0.info.id == info.id && $0.info.address == info.address }
    }

    func bucketIndex(for id: NodeID) -> Int {
        min(ownID.commonPrefixLength(with: id), buckets.count - 1)
    }

    /// The node answered one of our queries: it is good.
    @discardableResult
    public mutating func nodeResponded(_ info: NodeInfo, now: Double) -> InsertResult {
        insert(info, now: now, responded: true)
    }

    /// The node sent us a query. BEP 5 only trusts nodes that answer; such a node is added
    /// as questionable and becomes good when it answers a query of ours.
    @discardableResult
    public mutating func nodeQueriedUs(_ info: NodeInfo, now: Double) -> InsertResult {
        insert(info, now: now, responded: false)
    }

    private mutating func insert(_ info: NodeInfo, now: Double, responded: Bool) -> InsertResult {
        guard info.id != ownID else { return .ignored }
        var index = bucketIndex(for: info.id)
        if let position = buckets[index].entries.firstIndex(where: { $0.info.id == info.id }) {
            var entry = buckets[index].entries.remove(at: position)
            // A node that changed address keeps its slot only if the old address stopped answering.
            if entry.info.address != info.address && !entry.isBad {
                buckets[index].entries.insert(entry, at: position)
                return .ignored
            }
            entry.info = info
            entry.lastSeen = now
            if responded {
                entry.lastResponse = now
                entry.failures = 0
            }
            buckets[index].entries.append(entry)
            buckets[index].lastChanged = now
            return .updated
        }
        let entry = Entry(info: info, lastResponse: responded ? now : nil, lastSeen: now, failures: 0)
        while true {
            if buckets[index].entries.count < RoutingTable.k {
                buckets[index].entries.append(entry)
                buckets[index].lastChanged = now
                return .added
            }
            // Full. Split if this is the bucket that holds our own id.
            if index == buckets.count - 1 && buckets.count < 160 {
                split(now: now)
                index = bucketIndex(for: info.id)
                continue
            }
            if let bad = buckets[index].entries.firstIndex(where: \.isBad) {
                buckets[index].entries.remove(at: bad)
                buckets[index].entries.append(entry)
                buckets[index].lastChanged = now
                return .added
            }
            // Only nodes that answered may queue for a slot.
            guard responded else { return .ignored }
            buckets[index].replacement = info
            let oldest =
                buckets[index].entries.first { !$0.isGood(now: now) } ?? buckets[index].entries[0]
            return .pingNeeded(oldest.info)
        }
    }

    private mutating func split(now: Double) {
        let depth = buckets.count - 1
        let last = buckets.removeLast()
        var near = Bucket(lastChanged: now)
        var far = Bucket(lastChanged: last.lastChanged)
        for entry in last.entries {
            if ownID.commonPrefixLength(with: entry.info.id) > depth {
                near.entries.append(entry)
            } else {
                far.entries.append(entry)
            }
        }
        buckets.append(far)
        buckets.append(near)
    }

    /// A query to the node timed out. A bad node is replaced by its bucket's waiting candidate.
    public mutating func nodeFailed(_ id: NodeID, now: Double) {
        let index = bucketIndex(for: id)
        guard let position = buckets[index].entries.firstIndex(where: { $0.info.id == id }) else { return }
        buckets[index].entries[position].failures += 1
        if buckets[index].entries[position].isBad, let candidate = buckets[index].replacement {
            buckets[index].entries.remove(at: position)
            buckets[index].entries.append(
                Entry(info: candidate, lastResponse: now, lastSeen: now, failures: 0))
            buckets[index].replacement = nil
            buckets[index].lastChanged = now
        }
    }

    /// The `count` known nodes closest to `target` by XOR distance, bad nodes last.
    public func closest(to target: NodeID, count: Int = RoutingTable.k) -> [NodeInfo] {
        allNodes
            .map { (entry: $0, distance: $0.info.id.distance(to: target)) }
            .sorted { a, b in
                if a.entry.isBad != b.entry.isBad { return !a.entry.isBad }
                return a.distance < b.distance
            }
            .prefix(count)
            .map(\.entry.info)
    }

    /// Buckets nobody touched for 15 minutes: look up a random id in each to refresh it.
    public func bucketsNeedingRefresh(now: Double) -> [Int] {
        buckets.indices.filter { now - buckets[$0].lastChanged >= RoutingTable.goodWindow }
    }

    public mutating func markRefreshed(bucket: Int, now: Double) {
        if buckets.indices.contains(bucket) { buckets[bucket].lastChanged = now }
    }
}
