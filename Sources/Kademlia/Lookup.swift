/// One iterative Kademlia lookup (BEP 5 `find_node` or `get_peers`) as a state machine.
///
/// Keep a list of candidates sorted by XOR distance to the target. Query the closest ones
/// not yet asked, at most α = 3 at a time; every answer adds the nodes it names. The lookup
/// ends when the k = 8 closest candidates that have not failed have all answered. Pure:
/// the owner sends the queries this returns and reports answers and timeouts back.
public struct Lookup: Sendable {
    public enum Kind: Sendable, Equatable {
        case findNode
        case getPeers
    }

    public enum State: Sendable, Equatable {
        case fresh
        case inFlight
        case responded
        case failed
    }

    public struct Candidate: Sendable, Equatable {
        /// Unknown for bootstrap routers until they answer.
        public var id: NodeID?
        public var address: NodeAddress
        public var state: State
        /// Hops from the start: seeds are 1, a node named by a depth-d node is d + 1.
        public var depth: Int
        /// The `get_peers` token this node gave us, needed to announce to it.
        public var token: [UInt8]?
        /// XOR distance to the target, computed once (nil while the id is unknown).
        var distance: NodeID?
        /// In flight for longer than the soft timeout: it no longer holds an α slot.
        var slow = false
    }

    public static let alpha = 3
    public static let maxCandidates = 256

    public let target: NodeID
    public let kind: Kind
    public let k: Int
    public private(set) var candidates: [Candidate] = []
    public private(set) var peers: [NodeAddress] = []
    public private(set) var queriesSent = 0
    public private(set) var responses = 0

    /// Our own id: other nodes name us in their answers, and we never query ourselves.
    public let excluded: NodeID?

    public init(
        target: NodeID, kind: Kind, seeds: [NodeInfo], routers: [NodeAddress] = [], k: Int = RoutingTable.k,
        excluding: NodeID? = nil
    ) {
        self.target = target
        self.kind = kind
        self.k = k
        self.excluded = excluding
        for seed in seeds { add(id: seed.id, address: seed.address, depth: 1) }
        for router in routers { add(id: nil, address: router, depth: 1) }
    }

    private func sortsBefore(_ a: Candidate, _ b: Candidate) -> Bool {
        switch (a.distance, b.distance) {
        case (let x?, let y?): return x < y
        case (.some, nil): return true
        default: return false
        }
    }

    private mutating func add(id: NodeID?, address: NodeAddress, depth: Int) {
        if let id, id == excluded { return }
        if let index = candidates.firstIndex(where: { $0.address == address || ($0.id != nil && $0.id == id) }) {
            candidates[index].depth = min(candidates[index].depth, depth)
            return
        }
        let candidate = Candidate(
            id: id, address: address, state: .fresh, depth: depth, distance: id?.distance(to: target))
        let position = candidates.firstIndex { sortsBefore(candidate, $0) } ?? candidates.endIndex
        candidates.insert(candidate, at: position)
        if candidates.count > Lookup.maxCandidates, let far = candidates.lastIndex(where: { $0.state == .fresh }) {
            candidates.remove(at: far)
        }
    }

    public private(set) var inFlightCount = 0
    /// In-flight queries that still hold one of the α slots (not slow).
    private var blockingCount = 0

    /// Finished when the k closest candidates that did not fail have all answered. Queries
    /// still out to nodes farther away than those cannot change the answer.
    /// A slow query (past the soft timeout) does not hold the lookup back once k closer or
    /// farther nodes have answered: waiting the full timeout for a node that is probably gone
    /// costs more than the small chance it was the closest. With fewer than k answers, the
    /// lookup waits for every query to resolve.
    public var isFinished: Bool {
        var seen = 0
        for candidate in candidates where candidate.state != .failed {
            switch candidate.state {
            case .responded:
                seen += 1
                if seen == k { return true }
            case .inFlight where candidate.slow:
                continue
            default:
                return false
            }
        }
        return inFlightCount == 0
    }

    /// Marks and returns the candidates to query now.
    public mutating func nextQueries() -> [Candidate] {
        var picked: [Candidate] = []
        var budget = Lookup.alpha - blockingCount
        guard budget > 0 else { return [] }
        var seenNonFailed = 0
        for index in candidates.indices {
            // Slow queries are out of the window, like failed ones (see isFinished).
            if candidates[index].state == .failed || candidates[index].slow { continue }
            seenNonFailed += 1
            if seenNonFailed > k { break }
            if candidates[index].state == .fresh {
                candidates[index].state = .inFlight
                inFlightCount += 1
                blockingCount += 1
                picked.append(candidates[index])
                queriesSent += 1
                budget -= 1
                if budget == 0 { break }
            }
        }
        return picked
    }

    /// An answer from `address`: learn its id and token, add the nodes it named.
    public mutating func responded(
        from address: NodeAddress, id: NodeID, nodes: [NodeInfo], values: [NodeAddress], token: [UInt8]?
    ) {
        guard let index = candidates.firstIndex(where: { $0.address == address }),
            candidates[index].state == .inFlight
        else { return }
        responses += 1
        inFlightCount -= 1
        if !candidates[index].slow { blockingCount -= 1 }
        var candidate = candidates.remove(at: index)
        candidate.state = .responded
        candidate.id = id
        candidate.distance = id.distance(to: target)
        candidate.token = token
        let position = candidates.firstIndex { sortsBefore(candidate, $0) } ?? candidates.endIndex
        candidates.insert(candidate, at: position)
        for node in nodes where node.id != id { add(id: node.id, address: node.address, depth: candidate.depth + 1) }
        for peer in values where !peers.contains(peer) { peers.append(peer) }
    }

    public mutating func failed(address: NodeAddress) {
        if let index = candidates.firstIndex(where: { $0.address == address && $0.state == .inFlight }) {
            candidates[index].state = .failed
            inFlightCount -= 1
            if !candidates[index].slow { blockingCount -= 1 }
        }
    }

    /// A query has been out longer than a healthy round trip: stop letting it hold an α slot,
    /// so one dead node does not stall the lookup (libtorrent's "short timeout"). It may still
    /// answer, and counts as failed only at the full timeout.
    public mutating func slow(address: NodeAddress) {
        if let index = candidates.firstIndex(where: { $0.address == address && $0.state == .inFlight && !$0.slow }) {
            candidates[index].slow = true
            blockingCount -= 1
        }
    }

    /// The closest nodes that answered, with their tokens.
    public var closestResponded: [Candidate] {
        Array(candidates.filter { $0.state == .responded && $0.id != nil }.prefix(k))
    }

    /// Hops to the closest node that answered.
    public var hops: Int { closestResponded.first?.depth ?? 0 }
}
