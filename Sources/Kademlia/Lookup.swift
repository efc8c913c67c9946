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

    public init(target: NodeID, kind: Kind, seeds: [NodeInfo], routers: [NodeAddress] = [], k: Int = RoutingTable.k) {
        self.target = target
        self.kind = kind
        self.k = k
        for seed in seeds { add(id: seed.id, address: seed.address, depth: 1) }
        for router in routers { add(id: nil, address: router, depth: 1) }
    }

    private func sortsBefore(_ a: Candidate, _ b: Candidate) -> Bool {
        switch (a.id, b.id) {
        case (let x?, let y?): return x.distance(to: target) < y.distance(to: target)
        case (.some, nil): return true
        default: return false
        }
    }

    private mutating func add(id: NodeID?, address: NodeAddress, depth: Int) {
        if let index = candidates.firstIndex(where: { $0.address == address || ($0.id != nil && $0.id == id) }) {
            candidates[index].depth = min(candidates[index].depth, depth)
            return
        }
        let candidate = Candidate(id: id, address: address, state: .fresh, depth: depth)
        let position = candidates.firstIndex { sortsBefore(candidate, $0) } ?? candidates.endIndex
        candidates.insert(candidate, at: position)
        if candidates.count > Lookup.maxCandidates, let far = candidates.lastIndex(where: { $0.state == .fresh }) {
            candidates.remove(at: far)
        }
    }

    /// The k closest candidates that have not failed, in order.
    private var frontier: ArraySlice<Candidate> {
        candidates.filter { $0.state != .failed }.prefix(k)
    }

    public var inFlightCount: Int { candidates.reduce(0) { $0 + ($1.state == .inFlight ? 1 : 0) } }

    public var isFinished: Bool {
        frontier.allSatisfy { $0.state == .responded } && inFlightCount == 0
            || frontier.allSatisfy { $0.state == .responded || $0.state == .failed }
                && !candidates.contains { $0.state == .fresh || $0.state == .inFlight }
    }

    /// Marks and returns the candidates to query now.
    public mutating func nextQueries() -> [Candidate] {
        var picked: [Candidate] = []
        var budget = Lookup.alpha - inFlightCount
        guard budget > 0 else { return [] }
        var seenNonFailed = 0
        for index in candidates.indices {
            if candidates[index].state == .failed { continue }
            seenNonFailed += 1
            if seenNonFailed > k { break }
            if candidates[index].state == .fresh {
                candidates[index].state = .inFlight
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
        var candidate = candidates.remove(at: index)
        candidate.state = .responded
        candidate.id = id
        candidate.token = token
        let position = candidates.firstIndex { sortsBefore(candidate, $0) } ?? candidates.endIndex
        candidates.insert(candidate, at: position)
        for node in nodes where node.id != id { add(id: node.id, address: node.address, depth: candidate.depth + 1) }
        for peer in values where !peers.contains(peer) { peers.append(peer) }
    }

    public mutating func failed(address: NodeAddress) {
        if let index = candidates.firstIndex(where: { $0.address == address && $0.state == .inFlight }) {
            candidates[index].state = .failed
        }
    }

    /// The closest nodes that answered, with their tokens.
    public var closestResponded: [Candidate] {
        Array(candidates.filter { $0.state == .responded && $0.id != nil }.prefix(k))
    }

    /// Hops to the closest node that answered.
    public var hops: Int { closestResponded.first?.depth ?? 0 }
}
