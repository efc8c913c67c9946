import Foundation
import IPC
import Kademlia
import LocalDiscovery
import Logging
import NIOCore
import NIOPosix
import WorkerRuntime

/// The discovery worker: one Mainline DHT node (BEP 5), and LAN discovery (BEP 14). It never
/// opens a file: its saved routing table arrives in `dhtStart` and leaves in `dhtState`, and
/// the supervisor stores it. Router host names are resolved by the supervisor too, so this
/// process needs no DNS; the LAN's interfaces are enumerated by the supervisor as well.
public final class DiscoveryService: WorkerService, @unchecked Sendable {
    let logger: Logger
    let pipe: WorkerPipe
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    var loop: EventLoop { group.next() }
    // Loop-confined.
    private var shell: DHTShell?
    private var ready: EventLoopFuture<Void>?
    private var pendingReadOnly = false
    private var lan: LANShell?
    /// LAN announces asked for before the LAN sockets were up.
    private var lanStarted: EventLoopFuture<Void>?

    public init(logger: Logger, pipe: WorkerPipe) {
        self.logger = logger
        self.pipe = pipe
    }

    public func statusLine() -> String {
        (try? loop.submit { [self] in
            guard let shell else { return "DHT not started" }
            return "DHT node \(shell.node.id.hex) on UDP \(shell.port): \(shell.node.table.nodeCount) nodes"
        }.wait()) ?? "busy"
    }

    public func counters() -> [WorkerCounter] {
        (try? loop.submit { [self] in
            var out: [WorkerCounter] = []
            if let shell {
                let stats = shell.node.stats
                out += [
                    WorkerCounter("dht_nodes", UInt64(shell.node.table.nodeCount)),
                    WorkerCounter("dht_packets_in", UInt64(stats.packetsIn)),
                    WorkerCounter("dht_packets_out", UInt64(stats.packetsOut)),
                    WorkerCounter("dht_queries_answered", UInt64(stats.queriesAnswered)),
                    WorkerCounter("dht_timeouts", UInt64(stats.timeouts)),
                    WorkerCounter("dht_rate_limited", UInt64(stats.rateLimited)),
                    WorkerCounter("dht_malformed", UInt64(stats.malformed)),
                ]
            }
            if let lan {
                let counts = lan.discovery.counters
                out += [
                    WorkerCounter("lan_announces_sent", UInt64(counts.sent)),
                    WorkerCounter("lan_datagrams_received", UInt64(counts.received)),
                    WorkerCounter("lan_peers_found", UInt64(counts.found)),
                    WorkerCounter("lan_off_link", UInt64(counts.offLink)),
                    WorkerCounter("lan_rate_limited", UInt64(counts.rateLimited)),
                    WorkerCounter("lan_malformed", UInt64(counts.malformed)),
                ]
            }
            return out
        }.wait()) ?? []
    }

    func tell(_ message: WorkerReport) { pipe.sendOrExit(message, logger: logger) }

    public func handle(_ message: WorkerCommand, pipe: WorkerPipe) {
        loop.execute { [self] in onSupervisor(message) }
    }

    private func onSupervisor(_ message: WorkerCommand) {
        switch message {
        case .dhtStart(let host, let port, let routers, let state):
            start(host: host, port: Int(port), routers: routers.compactMap(NodeAddress.init), state: state)
        case .dhtRequest(let id, let operation, let key, let port, let trace):
            guard let ready else {
                return tell(.failure(requestID: id, code: 70, message: "the DHT node is not started"))
            }
            ready.whenComplete { [self] _ in perform(id, operation, key, port, trace) }
        case .dhtReadOnly(let readOnly):
            // Before the node exists, kept for when it starts.
            pendingReadOnly = readOnly
            shell?.setReadOnly(readOnly)
            logger.info(
                readOnly ? "DHT node read-only (BEP 43): this machine cannot be reached" : "DHT node answers queries")
        case .lanStart(let lines):
            let interfaces = lines.compactMap(LANShell.Interface.init)
            let shell = LANShell(loop: loop, interfaces: interfaces)
            shell.onFound = { [self] key, address in tell(.lanPeer(key: key, address: address)) }
            lan = shell
            lanStarted = shell.start().map { [self] in
                for problem in shell.problems { logger.warning("LAN discovery: \(problem)") }
                logger.info(
                    "LAN discovery (BEP 14) on \(interfaces.count) interface(s): \(interfaces.flatMap(\.networks).count) network(s)"
                )
            }
        case .lanAnnounce(let key, let port, let serving, let bits):
            guard let lan, let lanStarted else { return logger.warning("LAN discovery is not started") }
            var families: Set<LocalDiscovery.Group> = []
            if bits & 1 != 0 { families.insert(.ipv4) }
            if bits & 2 != 0 { families.insert(.ipv6) }
            let groups = families
            lanStarted.whenComplete { _ in lan.announce(key: key, port: port, families: groups, serving: serving) }
        case .withdraw(let key):
            if let id = NodeID(bytes: key) { shell?.stopAnnouncing(id) }
            if let lan, let lanStarted { lanStarted.whenComplete { _ in lan.withdraw(key: key) } }
        case .dhtStateRequest(let id):
            guard let shell else { return tell(.dhtState(requestID: id, state: [], summary: "DHT not started")) }
            tell(.dhtState(requestID: id, state: shell.exportState(), summary: summary(shell)))
        default:
            logger.warning("ignoring unexpected \(message.tag)")
        }
    }

    private func start(host: String, port: Int, routers: [NodeAddress], state: [UInt8]) {
        guard shell == nil else { return }
        let saved = DHTNode.parseState(state)
        let promise = loop.makePromise(of: Void.self)
        ready = promise.futureResult
        DHTShell.start(host: host, port: port, id: saved?.id, on: loop).whenComplete { [self] result in
            switch result {
            case .failure(let error):
                logger.debug("cannot bind the DHT to \(host):\(port): \(error)")
                tell(.failure(requestID: 0, code: 69, message: "cannot bind the DHT to UDP \(host):\(port): \(error)"))
                promise.succeed(())
            case .success(let shell):
                self.shell = shell
                shell.setReadOnly(pendingReadOnly)
                logger.info("DHT node \(shell.node.id.hex) listening on UDP \(host):\(shell.port)")
                tell(.dhtReady(port: UInt16(shell.port), nodeID: shell.node.id.bytes))
                if let saved { shell.restore(saved.nodes) }
                if routers.isEmpty && (saved?.nodes.isEmpty ?? true) {
                    logger.info("no bootstrap nodes: waiting to be contacted")
                    promise.succeed(())
                    return
                }
                // A restored table answers pings within a few hundred ms; give it that long.
                let delay: TimeAmount = saved == nil ? .zero : .milliseconds(500)
                loop.scheduleTask(in: delay) {
                    shell.bootstrap(routers: routers).whenComplete { result in
                        if case .success(let found) = result {
                            self.logger.info(
                                "bootstrapped: \(shell.node.table.nodeCount) nodes in the table after \(found.queries) queries"
                            )
                        }
                        promise.succeed(())
                    }
                }
            }
        }
    }

    private func perform(_ id: UInt32, _ operation: DHTOperation, _ key: [UInt8], _ port: UInt16, _ trace: Bool) {
        guard let shell else {
            return tell(.failure(requestID: id, code: 69, message: "the DHT node could not start"))
        }
        guard let target = NodeID(bytes: key) else {
            return tell(.failure(requestID: id, code: 64, message: "a DHT key is 20 bytes"))
        }
        let tracer: ((String) -> Void)? = trace ? { [self] line in tell(.dhtTrace(requestID: id, line: line)) } : nil
        let future: EventLoopFuture<DHTNode.LookupResult>
        switch operation {
        case .lookup: future = shell.lookup(target, kind: .findNode, trace: tracer)
        case .getPeers: future = shell.lookup(target, kind: .getPeers, trace: tracer)
        case .announce: future = shell.announce(target, port: port, trace: tracer)
        case .addNode:
            if let address = NodeAddress(compact: key[0..<6]) { shell.ping(address) }
            return tell(
                .dhtResult(
                    requestID: id,
                    report: DHTReport(peers: [], closest: [], hops: 0, queries: 1, responses: 0, announcedTo: 0)))
        }
        future.whenComplete { [self] result in
            switch result {
            case .success(let found):
                let report = DHTReport(
                    peers: found.peers.map(\.description),
                    closest: found.closest.map { "\($0.id.hex)@\($0.address)" },
                    hops: UInt16(clamping: found.hops), queries: UInt16(clamping: found.queries),
                    responses: UInt16(clamping: found.responses), announcedTo: UInt16(clamping: found.announcedTo))
                tell(.dhtResult(requestID: id, report: report))
            case .failure(let error):
                tell(.failure(requestID: id, code: 70, message: "DHT lookup failed: \(error)"))
            }
        }
    }

    private func summary(_ shell: DHTShell) -> String {
        let node = shell.node
        var lines = ["node \(node.id.hex) on UDP port \(shell.port)"]
        lines.append("routing table: \(node.table.nodeCount) nodes in \(node.table.buckets.count) buckets")
        let now = shell.now
        for (index, bucket) in node.table.buckets.enumerated() where !bucket.entries.isEmpty {
            let range = index == node.table.buckets.count - 1 ? "\(index)+" : "\(index)"
            lines.append("  bucket \(range) (shares \(range) leading bits with us): \(bucket.entries.count) nodes")
            for entry in bucket.entries {
                let state = entry.isBad ? "bad" : entry.isGood(now: now) ? "good" : "questionable"
                lines.append(
                    "    \(entry.info.id.hex) \(entry.info.address) \(state), seen \(Int(now - entry.lastSeen)) s ago")
            }
        }
        let s = node.stats
        lines.append(
            "stats: \(s.packetsIn) packets in, \(s.packetsOut) out, \(s.queriesAnswered) queries answered, \(s.malformed + shell.oversized) malformed, \(s.rateLimited) rate-limited, \(s.badTokens) bad tokens, \(s.unknownMethods) unknown methods, \(s.timeouts) timeouts, \(s.unmatchedResponses) unmatched responses"
        )
        lines.append("storing peers for \(node.storedInfoHashes) keys")
        lines.append(
            "other nodes see us at (BEP 42): \(node.externalAddress.map { "\($0)" } ?? "not known yet")"
                + (node.readOnly ? "; read-only (BEP 43)" : "") + ", \(s.readOnlyQueries) queries from read-only nodes")
        return lines.joined(separator: "\n")
    }
}
