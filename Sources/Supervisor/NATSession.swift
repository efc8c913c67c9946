import Foundation
import IPC
import Logging
import NIOCore
import PeerShareCore

/// `peershare nat` (what this machine looks like from outside) and `peershare relay` (run a
/// relay until stopped), both through the nat worker.
public final class NATSession: SupervisorDelegate, @unchecked Sendable {
    public enum Action: Sendable {
        /// Ask these STUN servers (resolved `IP:PORT`), print the report, exit.
        case probe(servers: [String], relays: [String])
        case relay(host: String, port: UInt16, maxCircuits: UInt32, circuitRate: UInt64, circuitSeconds: UInt32)
    }

    let supervisor: Supervisor
    let action: Action
    let output: SessionOutput
    private let done: EventLoopPromise<Int32>
    private var stopping = false
    private var probeID: UInt32 = 0
    private var announced = false

    public init(supervisor: Supervisor, action: Action, output: SessionOutput) {
        self.supervisor = supervisor
        self.action = action
        self.output = output
        self.done = supervisor.eventLoop.makePromise(of: Int32.self)
        supervisor.delegate = self
    }

    public var result: EventLoopFuture<Int32> { done.futureResult }

    public func begin() {
        switch action {
        case .probe(let servers, _):
            probeID = supervisor.makeRequestID()
            supervisor.send(.natProbe(requestID: probeID, servers: servers), to: .nat, tracking: .request)
        case .relay(let host, let port, let circuits, let rate, let seconds):
            let start = IPCMessage.relayStart(
                host: host, port: port, maxCircuits: circuits, maxCircuitRate: rate, circuitSeconds: seconds)
            supervisor.send(start, to: .nat, tracking: .setup(key: "relay"))
        }
    }

    public func stop(exitCode: Int32) {
        guard !stopping else { return }
        stopping = true
        supervisor.shutdown().whenComplete { [self] _ in done.succeed(exitCode) }
    }

    public func supervisor(_ supervisor: Supervisor, received message: IPCMessage, from role: WorkerRole) {
        switch message {
        case .natReport(let id, let observed, let mapping, let localPort) where id == probeID:
            report(observed: observed, mapping: mapping, localPort: localPort)
            stop(exitCode: observed.contains { !$0.hasSuffix(" -") } ? ExitCodes.ok : ExitCodes.unavailable)
        case .relayListening(let port):
            guard case .relay(let host, let configured, let circuits, let rate, let seconds) = action,
                !announced
            else { return }
            announced = true
            output.link("\(host):\(port)")
            output.status("relay listening on \(host):\(port); press Ctrl-C to stop")
            if configured == 0 {
                // A restarted nat worker must come back on the same port: links name it.
                supervisor.rememberSetup(
                    .relayStart(
                        host: host, port: port, maxCircuits: circuits, maxCircuitRate: rate, circuitSeconds: seconds),
                    key: "relay", for: .nat)
            }
        case .failure(_, let code, let text):
            output.error(text)
            stop(exitCode: Int32(code))
        case .status(_, let text):
            output.status("\(role): \(text)")
        default:
            break
        }
    }

    /// Printed like `tailscale netcheck`: each source, then what follows from them.
    private func report(observed: [String], mapping: UInt8, localPort: UInt16) {
        var publicAddresses: [String] = []
        output.link("STUN (UDP, from local port \(localPort)):")
        for line in observed {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            let server = parts.first ?? line
            let seen = parts.count > 1 ? parts[1] : "-"
            output.link("  \(server.padding(toLength: 24, withPad: " ", startingAt: 0)) \(seen == "-" ? "no answer" : "sees \(seen)")")
            if seen != "-", let address = try? PeerAddress.parse(seen), !publicAddresses.contains(address.host) {
                publicAddresses.append(address.host)
            }
        }
        let kind = NATSession.mappingText(mapping)
        output.link("public address: \(publicAddresses.isEmpty ? "unknown (no STUN server answered)" : publicAddresses.joined(separator: ", "))")
        output.link("mapping: \(kind)")
        let reachable: String
        switch mapping {
        case 3: reachable = "yes, if no firewall drops incoming connections (no NAT on the way out)"
        case 1: reachable = "not directly; hole punching can work (the NAT keeps one port per socket)"
        case 2: reachable = "not directly; hole punching will not work: peers reach it by reverse connection or a relay"
        default: reachable = "unknown"
        }
        output.link("reachable from outside: \(reachable)")
        if case .probe(_, let relays) = action {
            output.link("relays known: \(relays.isEmpty ? "none (nat.relays in pipeline.json, or --relay)" : relays.joined(separator: ", "))")
        }
    }

    static func mappingText(_ code: UInt8) -> String {
        switch code {
        case 1: return "endpoint-independent (one public port for every destination)"
        case 2: return "endpoint-dependent (a new public port per destination)"
        case 3: return "none (the public address is this machine's own)"
        default: return "unknown (fewer than two STUN answers)"
        }
    }

    public func supervisor(_ supervisor: Supervisor, restarted role: WorkerRole) {}

    public func supervisor(_ supervisor: Supervisor, gaveUpOn role: WorkerRole, reason: String) {
        output.error(reason)
        stop(exitCode: ExitCodes.software)
    }
}
