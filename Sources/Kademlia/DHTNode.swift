import Crypto
import PeerShareCore

/// A Mainline DHT node (BEP 5) as a pure, deterministic instance: packets, ticks and user
/// requests go in with the current time; what to send and what finished comes out as
/// directives. The discovery worker and the simulator are thin shells around it.
public struct DHTNode: Sendable {
    public struct Config: Sendable {
        public var queryTimeout: Double = 2.0
        /// The longest a query holds one of its lookup's α slots. Sooner when round trips
        /// have been measured (`RoundTripTimes`): the node's own, or all nodes' together.
        public var softTimeout: Double = 0.5
        /// The shortest: a measured round trip of microseconds (loopback, a LAN) is no
        /// reason to give up on a node before a scheduler hiccup has passed.
        public var minimumSoftTimeout: Double = 0.02
        public var maxInfoHashes = 5000
        public var maxPeersPerInfoHash = 200
        public var peerLifetime: Double = 30 * 60
        public var tokenRotation: Double = 5 * 60
        public var announceRefresh: Double = 15 * 60
        /// Queries accepted per source IP: a token bucket of this rate and twice the burst.
        public var queriesPerSecondPerIP: Double = 50
        public var maxTrackedIPs = 10_000
        public var maxPeersInResponse = 50
        public var maxOpenTransactions = 4096

        public init() {}
    }

    public typealias LookupID = Int

    public enum Directive: Sendable, Equatable {
        case send([UInt8], to: NodeAddress)
        case lookupFinished(LookupID, LookupResult)
        /// One line per hop for `peershare dht lookup --trace`.
        case trace(LookupID, String)
    }

    public struct LookupResult: Sendable, Equatable {
        public var target: NodeID
        public var closest: [NodeInfo]
        public var peers: [NodeAddress]
        public var hops: Int
        public var queries: Int
        public var responses: Int
        /// For announces: how many of the closest nodes were sent `announce_peer`.
        public var announcedTo: Int
    }

    public struct Stats: Sendable, Equatable {
        public var packetsIn = 0
        public var packetsOut = 0
        public var malformed = 0
        public var rateLimited = 0
        public var unmatchedResponses = 0
        public var badTokens = 0
        public var unknownMethods = 0
        public var queriesAnswered = 0
        public var timeouts = 0
        /// Queries from BEP 43 read-only nodes (answered, kept out of the table).
        public var readOnlyQueries = 0
    }

    enum Purpose: Sendable {
        case plain
        case bootstrap
        case refresh
        case announce(port: UInt16)
    }

    struct Run: Sendable {
        var lookup: Lookup
        var purpose: Purpose
        var trace: Bool
        var startedAt: Double
    }

    struct Transaction: Sendable {
        var address: NodeAddress
        var nodeID: NodeID?
        var lookup: LookupID?
        var sentAt: Double
        /// When it stops holding its lookup's α slot (the node's measured patience).
        var softAt: Double
        var slow = false
    }

    public let id: NodeID
    public let config: Config
    public private(set) var table: RoutingTable
    public private(set) var stats = Stats()
    /// Measured round trips: each query's soft timeout.
    public private(set) var roundTrips = RoundTripTimes()
    /// BEP 43: this node cannot be reached from outside (behind a NAT that maps nothing).
    /// Its queries say `ro`, so other nodes keep it out of their tables, and it answers no
    /// queries (none should arrive; those that do come from nodes that ignore `ro`).
    public var readOnly = false
    /// BEP 42's `ip` in answers, by responder IP (the latest of at most 32): what the DHT
    /// sees us at. `externalAddress` is the one two or more responders agree on.
    private var externalVotes: [(responder: UInt32, seen: NodeAddress)] = []
    public private(set) var externalAddress: NodeAddress?
    var runs: [LookupID: Run] = [:]
    var transactions: [UInt16: Transaction] = [:]
    var nextLookup: LookupID = 1
    var random: SplitMix64
    var secrets: (current: [UInt8], previous: [UInt8], rotatedAt: Double)
    var storage: [NodeID: [NodeAddress: Double]] = [:]
    var announcements: [NodeID: (port: UInt16, at: Double)] = [:]
    var buckets: [UInt32: (tokens: Double, at: Double)] = [:]
    var lastRefreshCheck: Double
    /// Routers from the last bootstrap, tried again while the routing table is empty.
    var routers: [NodeAddress] = []
    var lastBootstrap: Double = -1e9

    public init(id: NodeID, now: Double, seed: UInt64, config: Config = Config()) {
        self.id = id
        self.config = config
        self.table = RoutingTable(ownID: id, now: now)
        self.random = SplitMix64(seed: seed)
        let first = random.bytes(8)
        self.secrets = (first, first, now)
        self.lastRefreshCheck = now
    }

    // MARK: Requests from the owner

    /// Joins the network: look up our own id through the routers and the nodes we know.
    public mutating func bootstrap(routers: [NodeAddress], now: Double) -> (LookupID, [Directive]) {
        self.routers = routers
        lastBootstrap = now
        return start(
            Lookup(target: id, kind: .findNode, seeds: table.closest(to: id), routers: routers, excluding: id),
            .bootstrap, trace: false, now)
    }

    /// A node from a saved table: it enters the routing table as questionable and becomes
    /// good when it answers (a ping goes out at once).
    public mutating func restore(_ nodes: [NodeInfo], now: Double) -> [Directive] {
        var out: [Directive] = []
        for node in nodes {
            table.nodeQueriedUs(node, now: now)
            out += query(.ping, to: node.address, nodeID: node.id, lookup: nil, now: now)
        }
        return out
    }

    public mutating func lookup(
        _ target: NodeID, kind: Lookup.Kind, trace: Bool = false, routers: [NodeAddress] = [], now: Double
    ) -> (LookupID, [Directive]) {
        start(
            Lookup(target: target, kind: kind, seeds: table.closest(to: target), routers: routers, excluding: id),
            .plain, trace: trace, now)
    }

    /// get_peers to find the closest nodes and their tokens, then announce_peer to them; and
    /// again every 15 minutes, before the 30-minute expiry, until `stopAnnouncing`.
    public mutating func announce(_ infoHash: NodeID, port: UInt16, trace: Bool = false, now: Double) -> (
        LookupID, [Directive]
    ) {
        announcements[infoHash] = (port, now)
        return start(
            Lookup(target: infoHash, kind: .getPeers, seeds: table.closest(to: infoHash), excluding: id),
            .announce(port: port),
            trace: trace, now)
    }

    public mutating func stopAnnouncing(_ infoHash: NodeID) { announcements[infoHash] = nil }

    /// Adds a node we were told about (a saved table, or `add_dht_node`-style hints); it is
    /// pinged and enters the table only if it answers.
    public mutating func ping(_ address: NodeAddress, now: Double) -> [Directive] {
        query(.ping, to: address, nodeID: nil, lookup: nil, now: now)
    }

    private mutating func start(_ lookup: Lookup, _ purpose: Purpose, trace: Bool, _ now: Double) -> (
        LookupID, [Directive]
    ) {
        let lookupID = nextLookup
        nextLookup += 1
        runs[lookupID] = Run(lookup: lookup, purpose: purpose, trace: trace, startedAt: now)
        if trace {
            let seeds = lookup.candidates.count
            return (
                lookupID,
                [.trace(lookupID, "lookup \(lookup.target.hex) starting from \(seeds) known nodes")]
                    + advance(lookupID, now: now)
            )
        }
        return (lookupID, advance(lookupID, now: now))
    }

    // MARK: Packets

    public mutating func receive(_ packet: [UInt8], from source: NodeAddress, now: Double) -> [Directive] {
        stats.packetsIn += 1
        let message: KRPC.Message
        do {
            message = try KRPC.decode(packet)
        } catch let error as KRPC.ParseError {
            stats.malformed += 1
            // A query we could parse far enough to answer gets error 203, as BEP 5 asks.
            if let transaction = error.transaction, allow(source, now: now) {
                return [
                    send(.init(transaction: transaction, body: .error(code: 203, message: error.reason)), to: source)
                ]
            }
            return []
        } catch {
            stats.malformed += 1
            return []
        }
        switch message.body {
        case .query(let sender, let query):
            guard !readOnly else { return [] }
            guard allow(source, now: now) else {
                stats.rateLimited += 1
                return []
            }
            return answer(
                query, from: NodeInfo(id: sender, address: source), transaction: message.transaction,
                querierReadOnly: message.readOnly, now: now)
        case .unknownQuery(let method, _):
            guard allow(source, now: now) else {
                stats.rateLimited += 1
                return []
            }
            stats.unknownMethods += 1
            return [
                send(
                    .init(
                        transaction: message.transaction, body: .error(code: 204, message: "Method Unknown: \(method)")),
                    to: source)
            ]
        case .response(let response):
            return handleResponse(response, transaction: message.transaction, from: source, ip: message.ip, now: now)
        case .error:
            guard let key = transactionKey(message.transaction), let transaction = transactions[key],
                transaction.address == source
            else {
                stats.unmatchedResponses += 1
                return []
            }
            transactions[key] = nil
            if let lookupID = transaction.lookup {
                runs[lookupID]?.lookup.failed(address: source)
                return advance(lookupID, now: now)
            }
            return []
        }
    }

    private mutating func answer(
        _ query: KRPC.Query, from sender: NodeInfo, transaction: [UInt8], querierReadOnly: Bool, now: Double
    ) -> [Directive] {
        var out: [Directive] = []
        // A node that merely sends us a query does not enter the table (anyone can send a
        // packet with any id from any address): one already there is refreshed, a new one is
        // pinged and enters when it answers, as libtorrent does.
        // A read-only querier (BEP 43) is answered but never enters the table: it cannot
        // be reached, so it would only waste other nodes' lookups.
        if querierReadOnly {
            stats.readOnlyQueries += 1
        } else if table.contains(sender) {
            if case .pingNeeded(let oldest) = table.nodeQueriedUs(sender, now: now) {
                out += self.query(.ping, to: oldest.address, nodeID: oldest.id, lookup: nil, now: now)
            }
        } else if sender.id != id, transactions.count < config.maxOpenTransactions / 2,
            !transactions.values.contains(where: { $0.address == sender.address })
        {
            // (Not while a query to that address is open: two new nodes would otherwise ping
            // each other back and forth for ever.)
            out += self.query(.ping, to: sender.address, nodeID: sender.id, lookup: nil, now: now)
        }
        stats.queriesAnswered += 1
        let body: KRPC.Body
        switch query {
        case .ping:
            body = .response(.init(id: id))
        case .findNode(let target):
            body = .response(.init(id: id, nodes: table.closest(to: target)))
        case .getPeers(let infoHash):
            let stored = Array((storage[infoHash] ?? [:]).keys.prefix(config.maxPeersInResponse))
            body = .response(
                .init(
                    id: id, nodes: table.closest(to: infoHash), values: stored.isEmpty ? nil : stored,
                    token: token(for: sender.address, secret: secrets.current)))
        case .announcePeer(let infoHash, let port, let implied, let token):
            guard
                token == self.token(for: sender.address, secret: secrets.current)
                    || token == self.token(for: sender.address, secret: secrets.previous)
            else {
                stats.badTokens += 1
                body = .error(code: 203, message: "Bad token")
                break
            }
            store(
                infoHash, peer: NodeAddress(ip: sender.address.ip, port: implied ? sender.address.port : port), now: now
            )
            body = .response(.init(id: id))
        }
        // BEP 42: say where we see the querier; behind a NAT it learns its public address.
        out.append(send(.init(transaction: transaction, body: body, ip: sender.address), to: sender.address))
        return out
    }

    private mutating func handleResponse(
        _ response: KRPC.Response, transaction raw: [UInt8], from source: NodeAddress, ip: NodeAddress?, now: Double
    ) -> [Directive] {
        // Only an answer from the address we asked, to a transaction we opened, counts.
        guard let key = transactionKey(raw), let transaction = transactions[key], transaction.address == source
        else {
            stats.unmatchedResponses += 1
            return []
        }
        transactions[key] = nil
        roundTrips.record(now - transaction.sentAt, from: source)
        if let expected = transaction.nodeID, expected != response.id {
            // Another node now answers at that address: not the one the lookup wanted.
            stats.unmatchedResponses += 1
            if let lookupID = transaction.lookup {
                runs[lookupID]?.lookup.failed(address: source)
                return advance(lookupID, now: now)
            }
            return []
        }
        if let ip { vote(seen: ip, by: source) }
        var out: [Directive] = []
        if case .pingNeeded(let oldest) = table.nodeResponded(NodeInfo(id: response.id, address: source), now: now) {
            out += query(.ping, to: oldest.address, nodeID: oldest.id, lookup: nil, now: now)
        }
        guard let lookupID = transaction.lookup, var run = runs[lookupID] else { return out }
        run.lookup.responded(
            from: source, id: response.id, nodes: response.nodes ?? [], values: response.values ?? [],
            token: response.token)
        runs[lookupID] = run
        if run.trace {
            let candidate = run.lookup.candidates.first { $0.address == source }
            out.append(
                .trace(
                    lookupID,
                    "hop \(candidate?.depth ?? 0): \(source) id \(response.id) distance 2^\(response.id.log2Distance(to: run.lookup.target)) -> \(response.nodes?.count ?? 0) nodes, \(response.values?.count ?? 0) peers\(response.token != nil ? ", token" : "")"
                ))
        }
        return out + advance(lookupID, now: now)
    }

    /// Sends the lookup's next queries, or finishes it.
    private mutating func advance(_ lookupID: LookupID, now: Double) -> [Directive] {
        guard var run = runs[lookupID] else { return [] }
        let next = run.lookup.nextQueries()
        runs[lookupID] = run
        var out: [Directive] = []
        for candidate in next {
            let query: KRPC.Query =
                run.lookup.kind == .getPeers
                ? .getPeers(infoHash: run.lookup.target) : .findNode(target: run.lookup.target)
            out += self.query(query, to: candidate.address, nodeID: candidate.id, lookup: lookupID, now: now)
        }
        run = runs[lookupID] ?? run
        if run.lookup.isFinished {
            runs[lookupID] = nil
            var announced = 0
            if case .announce(let port) = run.purpose {
                for node in run.lookup.closestResponded {
                    guard let token = node.token else { continue }
                    out += query(
                        .announcePeer(infoHash: run.lookup.target, port: port, impliedPort: false, token: token),
                        to: node.address, nodeID: node.id, lookup: nil, now: now)
                    announced += 1
                }
            }
            let closest = run.lookup.closestResponded.compactMap { candidate in
                candidate.id.map { NodeInfo(id: $0, address: candidate.address) }
            }
            // Peers announced to us count too: we never query ourselves.
            var peers = run.lookup.peers
            if run.lookup.kind == .getPeers {
                for peer in storedPeers(for: run.lookup.target) where !peers.contains(peer) { peers.append(peer) }
            }
            let result = LookupResult(
                target: run.lookup.target, closest: closest, peers: peers, hops: run.lookup.hops,
                queries: run.lookup.queriesSent, responses: run.lookup.responses, announcedTo: announced)
            if run.trace {
                out.append(
                    .trace(
                        lookupID,
                        "done: \(result.responses)/\(result.queries) answered, \(result.hops) hops to the closest node, \(result.peers.count) peers"
                            + (announced > 0 ? ", announced to \(announced) nodes" : "")))
            }
            out.append(.lookupFinished(lookupID, result))
            if case .bootstrap = run.purpose {
                // Kademlia's join: after finding our neighbours, refresh every bucket farther
                // away than them, or a node would know nothing of the far half of the network
                // until someone there happened to query it.
                for bucket in 0..<max(0, table.buckets.count - 1) { out += refresh(bucket: bucket, now: now) }
            }
        }
        return out
    }

    private mutating func query(
        _ query: KRPC.Query, to address: NodeAddress, nodeID: NodeID?, lookup: LookupID?, now: Double
    ) -> [Directive] {
        guard transactions.count < config.maxOpenTransactions else {
            if let lookup { runs[lookup]?.lookup.failed(address: address) }
            return []
        }
        // Random, not sequential: an off-path attacker must not guess the id of an open query
        // to slip in a forged answer.
        var key = UInt16.random(in: 0...UInt16.max, using: &random)
        while transactions[key] != nil { key &+= 1 }
        let patience = roundTrips.patience(
            for: address, floor: config.minimumSoftTimeout, ceiling: config.softTimeout)
        transactions[key] = Transaction(
            address: address, nodeID: nodeID, lookup: lookup, sentAt: now, softAt: now + patience)
        let message = KRPC.Message(
            transaction: [UInt8(key >> 8), UInt8(key & 0xff)], body: .query(sender: id, query),
            version: KRPC.clientVersion, readOnly: readOnly)
        return [send(message, to: address)]
    }

    /// One responder's word for our address (only from answers to our own transactions).
    private mutating func vote(seen: NodeAddress, by responder: NodeAddress) {
        externalVotes.removeAll { $0.responder == responder.ip }
        externalVotes.append((responder.ip, seen))
        if externalVotes.count > 32 { externalVotes.removeFirst() }
        var counts: [NodeAddress: Int] = [:]
        for entry in externalVotes { counts[entry.seen, default: 0] += 1 }
        if let (best, count) = counts.max(by: { $0.value < $1.value }), count >= 2 { externalAddress = best }
    }

    private mutating func send(_ message: KRPC.Message, to address: NodeAddress) -> Directive {
        stats.packetsOut += 1
        var message = message
        if message.version == nil { message.version = KRPC.clientVersion }
        return .send(KRPC.encode(message), to: address)
    }

    private func transactionKey(_ raw: [UInt8]) -> UInt16? {
        raw.count == 2 ? UInt16(raw[0]) << 8 | UInt16(raw[1]) : nil
    }

    // MARK: Time

    /// The next moment a lookup's query reaches its soft timeout: the shell calls `expire`
    /// then (tens of milliseconds where round trips are short, finer than `tick`). Full
    /// timeouts, and queries outside lookups (pings), wait for `tick`: nothing waits on them.
    public var nextDeadline: Double? {
        var earliest: Double?
        for transaction in transactions.values where !transaction.slow && transaction.lookup != nil {
            if earliest.map({ transaction.softAt < $0 }) ?? true { earliest = transaction.softAt }
        }
        return earliest
    }

    /// Queries past their timeouts: a soft one frees its lookup's α slot (the lookup moves
    /// on), the full one fails the node. Called by `tick` and at `nextDeadline`.
    public mutating func expire(now: Double) -> [Directive] {
        var out: [Directive] = []
        // The same sums as `nextDeadline`, so a deadline met is a deadline expired.
        let expired = transactions.filter { now >= $0.value.sentAt + config.queryTimeout }
        var touched = Set<LookupID>()
        for (key, transaction) in expired.sorted(by: { $0.key < $1.key }) {
            transactions[key] = nil
            stats.timeouts += 1
            if let nodeID = transaction.nodeID { table.nodeFailed(nodeID, now: now) }
            if let lookupID = transaction.lookup {
                runs[lookupID]?.lookup.failed(address: transaction.address)
                if runs[lookupID]?.trace == true {
                    out.append(.trace(lookupID, "timeout: \(transaction.address) did not answer"))
                }
                touched.insert(lookupID)
            }
        }
        for (key, transaction) in transactions.sorted(by: { $0.key < $1.key })
        where !transaction.slow && now >= transaction.softAt {
            transactions[key]?.slow = true
            if let lookupID = transaction.lookup {
                runs[lookupID]?.lookup.slow(address: transaction.address)
                touched.insert(lookupID)
            }
        }
        for lookupID in touched.sorted() { out += advance(lookupID, now: now) }
        return out
    }

    /// Call about once a second: expires queries, rotates token secrets, expires stored
    /// peers, re-announces, refreshes quiet buckets.
    public mutating func tick(now: Double) -> [Directive] {
        var out = expire(now: now)
        if now - secrets.rotatedAt >= config.tokenRotation {
            secrets = (random.bytes(8), secrets.current, now)
        }
        for (infoHash, peers) in storage {
            let alive = peers.filter { now - $0.value < config.peerLifetime }
            storage[infoHash] = alive.isEmpty ? nil : alive
        }
        for (infoHash, entry) in announcements.sorted(by: { $0.key < $1.key })
        where now - entry.at >= config.announceRefresh {
            out += announce(infoHash, port: entry.port, now: now).1
        }
        // A node whose joining failed (routers busy or down) keeps trying every 10 s.
        if table.nodeCount == 0, !routers.isEmpty, now - lastBootstrap >= 10 {
            out += bootstrap(routers: routers, now: now).1
        }
        if now - lastRefreshCheck >= 60 {
            lastRefreshCheck = now
            for bucket in table.bucketsNeedingRefresh(now: now) { out += refresh(bucket: bucket, now: now) }
        }
        buckets = buckets.filter { now - $0.value.at < 60 }
        return out
    }

    /// Looks up a random id in the bucket's range, so the bucket learns live nodes.
    private mutating func refresh(bucket: Int, now: Double) -> [Directive] {
        table.markRefreshed(bucket: bucket, now: now)
        let target = id.randomID(sharingPrefix: bucket, using: &random)
        let lookup = Lookup(target: target, kind: .findNode, seeds: table.closest(to: target), excluding: id)
        return start(lookup, .refresh, trace: false, now).1
    }

    // MARK: Tokens, storage, rate limits

    func token(for address: NodeAddress, secret: [UInt8]) -> [UInt8] {
        var hasher = SHA256()
        hasher.update(data: secret)
        hasher.update(data: address.ipBytes)
        return Array(hasher.finalize().prefix(8))
    }

    private mutating func store(_ infoHash: NodeID, peer: NodeAddress, now: Double) {
        if storage[infoHash] == nil {
            guard storage.count < config.maxInfoHashes else { return }
            storage[infoHash] = [:]
        }
        if storage[infoHash]?[peer] == nil, (storage[infoHash]?.count ?? 0) >= config.maxPeersPerInfoHash {
            // Full: the peer heard from longest ago makes room.
            if let oldest = storage[infoHash]?.min(by: { $0.value < $1.value })?.key {
                storage[infoHash]?[oldest] = nil
            }
        }
        storage[infoHash]?[peer] = now
    }

    public var storedInfoHashes: Int { storage.count }
    public func storedPeers(for infoHash: NodeID) -> [NodeAddress] { Array((storage[infoHash] ?? [:]).keys) }
    public var activeLookups: Int { runs.count }

    private mutating func allow(_ source: NodeAddress, now: Double) -> Bool {
        let rate = config.queriesPerSecondPerIP
        var bucket = buckets[source.ip] ?? (tokens: rate * 2, at: now)
        bucket.tokens = min(rate * 2, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        guard bucket.tokens >= 1 else {
            buckets[source.ip] = bucket
            return false
        }
        bucket.tokens -= 1
        if buckets[source.ip] == nil && buckets.count >= config.maxTrackedIPs {
            // Full: forget addresses whose bucket has refilled (they carry no history), or
            // else the quietest one, rather than turning every newcomer away.
            let refill = 2.0
            buckets = buckets.filter { now - $0.value.at < refill }
            if buckets.count >= config.maxTrackedIPs,
                let quietest = buckets.min(by: { $0.value.at < $1.value.at })?.key
            {
                buckets[quietest] = nil
            }
        }
        buckets[source.ip] = bucket
        return true
    }

    // MARK: Persistence

    /// Our id and the good nodes of the table, so a restarted node needs no bootstrap:
    /// "PSDT" ‖ id (20) ‖ compact node infos (26 each).
    public func exportState(now: Double) -> [UInt8] {
        Array("PSDT".utf8) + id.bytes + table.allNodes.filter { !$0.isBad }.flatMap(\.info.compact)
    }

    public static func parseState(_ bytes: [UInt8]) -> (id: NodeID, nodes: [NodeInfo])? {
        guard bytes.count >= 24, Array(bytes.prefix(4)) == Array("PSDT".utf8),
            let id = NodeID(bytes: Array(bytes[4..<24])), let nodes = NodeInfo.parseCompact(Array(bytes[24...]))
        else { return nil }
        return (id, nodes)
    }
}

extension SplitMix64 {
    mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &self) } }
}
