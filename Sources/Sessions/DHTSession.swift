import Foundation
import IPC
import Logging
import NIOCore
import PeerShareCore
import Supervisor

/// `peershare dht ...`: one DHT action through the discovery worker, with its result printed
/// for people (and `--trace` printing every hop of a lookup as it happens).
public final class DHTSession: SupervisorDelegate, @unchecked Sendable {
    public enum Action: Sendable {
        /// Join, print the routing table, exit.
        case routes
        case lookup(key: [UInt8], trace: Bool)
        case getPeers(key: [UInt8], trace: Bool)
        case announce(key: [UInt8], port: UInt16, trace: Bool)
        /// Run a node until Ctrl-C (a bootstrap node for others).
        case node
    }

    public let context: SessionContext
    /// The context's DHT client, which this session cannot do without.
    let node: DHTClient
    let action: Action
    private var stopping = false
    /// `dht node` printed its table on the way out (or gave up waiting for it).
    private var summaryPrinted = false

    /// `context` must have a DHT client (`node`).
    public init(context: SessionContext, node: DHTClient, action: Action) {
        self.context = context
        self.node = node
        self.action = action
        context.supervisor.delegate = self
    }

    public func begin() {
        node.onReady = { [self] port in
            output.status("DHT node listening on UDP \(node.settings.host):\(port)")
            if case .node = action { output.link("\(node.settings.host):\(port)") }
        }
        node.start()
        let trace: (String) -> Void = { [output] line in output.link(line) }
        switch action {
        case .node:
            break
        case .routes:
            // Lookups wait for the bootstrap; a lookup of a random key completes one first.
            var random = SystemRandomNumberGenerator()
            let key = (0..<20).map { _ in UInt8.random(in: 0...255, using: &random) }
            node.request(.lookup, key: key) { [self] _ in
                node.summary { [self] text in
                    for line in text.split(separator: "\n") { output.link(String(line)) }
                    stop(exitCode: ExitCodes.ok)
                }
            }
        case .lookup(let key, let tracing):
            node.request(.lookup, key: key, trace: tracing ? trace : nil) { [self] result in
                finish(result, showPeers: false)
            }
        case .getPeers(let key, let tracing):
            node.request(.getPeers, key: key, trace: tracing ? trace : nil) { [self] result in
                finish(result, showPeers: true)
            }
        case .announce(let key, let port, let tracing):
            node.request(.announce, key: key, port: port, trace: tracing ? trace : nil) { [self] result in
                if case .success(let report) = result {
                    output.link("announced port \(port) to \(report.announcedTo) nodes")
                    stop(exitCode: report.announcedTo > 0 ? ExitCodes.ok : ExitCodes.unavailable)
                } else {
                    finish(result, showPeers: false)
                }
            }
        }
    }

    private func finish(_ result: Result<DHTReport, DHTClient.DHTFailure>, showPeers: Bool) {
        switch result {
        case .success(let report):
            output.link("closest nodes (\(report.hops) hops, \(report.responses)/\(report.queries) queries answered):")
            for node in report.closest { output.link("  \(node)") }
            if showPeers {
                output.link("peers (\(report.peers.count)):")
                for peer in report.peers { output.link("  \(peer)") }
            }
            stop(exitCode: report.closest.isEmpty ? ExitCodes.unavailable : ExitCodes.ok)
        case .failure(let failure):
            output.error("\(failure)")
            stop(exitCode: Int32(failure.code))
        }
    }

    public func stop(exitCode: Int32) {
        guard !stopping else { return }
        stopping = true
        let finish: @Sendable () -> Void = { [self] in context.finish(exitCode: exitCode) }
        guard case .node = action else { return finish() }
        // A node run by hand ends with its table and counters: what it saw while it ran.
        node.summary { [self] text in
            guard !summaryPrinted else { return }
            summaryPrinted = true
            for line in text.split(separator: "\n") { output.link(String(line)) }
            finish()
        }
        supervisor.eventLoop.scheduleTask(in: .seconds(1)) { [self] in
            if !summaryPrinted {
                summaryPrinted = true
                finish()
            }
        }
    }

    public func supervisor(_ supervisor: Supervisor, received message: WorkerReport, from role: WorkerRole) {
        if role == .discovery, node.handle(message) { return }
        if case .failure(_, let code, let text) = message, role == .discovery {
            output.error(text)
            stop(exitCode: Int32(code))
        }
    }

    public func supervisor(_ supervisor: Supervisor, restarted role: WorkerRole) {}

    public func supervisor(_ supervisor: Supervisor, gaveUpOn role: WorkerRole, reason: String) {
        output.error(reason)
        stop(exitCode: ExitCodes.software)
    }
}
