import PeerShareCore

/// Runs many `DHTNode`s on a virtual network with a virtual clock: the same pure logic the
/// discovery worker runs, at a scale (10,000 nodes) that real sockets on one machine cannot
/// reach. Packets get a random one-way latency; dead nodes swallow packets, so their peers
/// see real timeouts.
public struct DHTSimulator {
    public struct Node {
        public var dht: DHTNode
        public var alive = true
    }

    struct Event {
        var packet: [UInt8]
        var from: NodeAddress
        var to: NodeAddress
        /// Not a packet: `to`'s next query deadline (`DHTNode.nextDeadline`) is due.
        var deadline = false
    }

    public private(set) var nodes: [Node] = []
    public private(set) var now: Double = 0
    var index: [NodeAddress: Int] = [:]
    var queue = TimedQueue<Event>()
    var random: SplitMix64
    var finished: [Int: [DHTNode.LookupID: DHTNode.LookupResult]] = [:]
    /// Virtual time each lookup finished at (queries to dead nodes may still be timing out).
    public private(set) var finishedAt: [Int: [DHTNode.LookupID: Double]] = [:]
    public private(set) var packetsDelivered = 0
    /// Nodes that may have open queries: only these are ticked.
    var busy = Set<Int>()
    /// Each node's deadline event in the queue (the earliest one asked for).
    var armed: [Int: Double] = [:]
    let latency: ClosedRange<Double>

    public init(seed: UInt64, latency: ClosedRange<Double> = 0.005...0.050) {
        random = SplitMix64(seed: seed)
        self.latency = latency
    }

    public static func address(of index: Int) -> NodeAddress {
        NodeAddress(ip: 0x0A00_0000 | UInt32(index + 1), port: 6881)
    }

    /// Adds a node and joins it through `bootstrap` (a node index) and runs until it settles.
    public mutating func addNode(bootstrap: Int?, config: DHTNode.Config = .init()) {
        let number = nodes.count
        let address = DHTSimulator.address(of: number)
        let node = DHTNode(id: NodeID.random(using: &random), now: now, seed: random.next(), config: config)
        nodes.append(Node(dht: node))
        index[address] = number
        if let bootstrap {
            let directives = nodes[number].dht.bootstrap(routers: [DHTSimulator.address(of: bootstrap)], now: now).1
            perform(directives, at: number)
            runUntilIdle()
        }
    }

    public mutating func kill(_ number: Int) { nodes[number].alive = false }

    /// Runs a lookup from `origin` and returns its result when it finishes.
    public mutating func lookup(from origin: Int, target: NodeID, kind: Lookup.Kind = .findNode)
        -> DHTNode.LookupResult?
    {
        timedLookup(from: origin, target: target, kind: kind)?.result
    }

    /// A lookup and how long it took in virtual seconds, to the moment it finished.
    public mutating func timedLookup(from origin: Int, target: NodeID, kind: Lookup.Kind = .findNode)
        -> (result: DHTNode.LookupResult, seconds: Double)?
    {
        let start = now
        let (id, directives) = nodes[origin].dht.lookup(target, kind: kind, now: now)
        perform(directives, at: origin)
        runUntilIdle()
        guard let result = finished[origin]?.removeValue(forKey: id),
            let end = finishedAt[origin]?.removeValue(forKey: id)
        else { return nil }
        return (result, end - start)
    }

    public mutating func announce(from origin: Int, infoHash: NodeID, port: UInt16) -> DHTNode.LookupResult? {
        let (id, directives) = nodes[origin].dht.announce(infoHash, port: port, now: now)
        perform(directives, at: origin)
        runUntilIdle()
        return finished[origin]?.removeValue(forKey: id)
    }

    /// The live node whose id is closest to `target`: what a correct lookup must find.
    public func trueClosest(to target: NodeID, excluding origin: Int? = nil) -> NodeID? {
        nodes.indices.filter { nodes[$0].alive && $0 != origin }.map { nodes[$0].dht.id }
            .min { $0.distance(to: target) < $1.distance(to: target) }
    }

    mutating func perform(_ directives: [DHTNode.Directive], at number: Int) {
        let from = DHTSimulator.address(of: number)
        busy.insert(number)
        // As the discovery worker's shell does: a timer for the node's next query deadline.
        defer {
            if let next = nodes[number].dht.nextDeadline, armed[number].map({ next < $0 || $0 < now }) ?? true {
                armed[number] = next
                queue.push(Event(packet: [], from: from, to: from, deadline: true), at: max(next, now))
            }
        }
        for directive in directives {
            switch directive {
            case .send(let packet, let to):
                queue.push(
                    Event(packet: packet, from: from, to: to), at: now + Double.random(in: latency, using: &random))
            case .lookupFinished(let id, let result):
                finished[number, default: [:]][id] = result
                finishedAt[number, default: [:]][id] = now
            case .trace:
                break
            }
        }
    }

    /// Delivers packets in time order, ticking busy nodes every 250 ms of virtual time,
    /// until nothing is in flight and no lookup is running.
    public mutating func runUntilIdle() {
        var nextTick = now + 0.25
        while true {
            if let time = queue.nextTime, time <= nextTick, let (_, event) = queue.pop() {
                now = time
                guard let target = index[event.to], nodes[target].alive else { continue }
                if event.deadline {
                    if armed[target] == time { armed[target] = nil }
                    perform(nodes[target].dht.expire(now: now), at: target)
                    continue
                }
                packetsDelivered += 1
                let directives = nodes[target].dht.receive(event.packet, from: event.from, now: now)
                perform(directives, at: target)
                busy.insert(target)
                continue
            }
            busy = busy.filter { nodes[$0].alive && nodes[$0].dht.hasPendingWork }
            if busy.isEmpty && queue.isEmpty { return }
            now = nextTick
            nextTick += 0.25
            for number in busy.sorted() {
                let directives = nodes[number].dht.tick(now: now)
                perform(directives, at: number)
            }
        }
    }
}

extension DHTNode {
    /// True while queries are open or lookups run: the simulator ticks only such nodes.
    public var hasPendingWork: Bool { !transactions.isEmpty || !runs.isEmpty }
}
