import Foundation
import IPC
import Logging
import NIOCore
import PeerShareCore
import Supervisor
import Traversal

/// `peershare nat` (what this machine looks like from outside) and `peershare relay` (run a
/// relay until stopped), both through the nat worker.
public final class NATSession: SupervisorDelegate, @unchecked Sendable {
    public enum Action: Sendable {
        /// Ask these STUN servers (resolved `IP:PORT`), print the report, exit.
        case probe(servers: [String], relays: [String], gateway: String?)
        case relay(host: String, port: UInt16, maxCircuits: UInt32, circuitRate: UInt64, circuitSeconds: UInt32)
    }

    /// Its DHT client, if any, is where a relay announces itself (`DHTKey.relays`).
    public let context: SessionContext
    let action: Action
    private var probeID: UInt32 = 0
    private var announced = false
    private var mapID: UInt32 = 0
    private var mappingLine: String?
    private var reportLines: [String]?
    private var probeCode = ExitCodes.ok

    public init(context: SessionContext, action: Action) {
        self.context = context
        self.action = action
        context.supervisor.delegate = self
    }

    public func begin() {
        dht?.start()
        switch action {
        case .probe(let servers, _, let gateway):
            probeID = supervisor.makeRequestID()
            supervisor.send(.natProbe(requestID: probeID, servers: servers), to: .nat, tracking: .request)
            if let gateway {
                // Ports 0: only ask the router whether it speaks NAT-PMP or UPnP, and its address.
                mapID = supervisor.makeRequestID()
                supervisor.send(.mapPorts(requestID: mapID, gateway: gateway, tcpPort: 0, udpPort: 0), to: .nat)
            } else {
                mappingLine = "port mapping: no default route, so no router to ask"
            }
        case .relay(let host, let port, let circuits, let rate, let seconds):
            let start = WorkerCommand.relayStart(
                host: host, port: port, maxCircuits: circuits, maxCircuitRate: rate, circuitSeconds: seconds)
            supervisor.send(start, to: .nat, tracking: .setup(key: "relay"))
        }
    }

    public func stop(exitCode: Int32) { context.finish(exitCode: exitCode) }

    public func supervisor(_ supervisor: Supervisor, received message: WorkerReport, from role: WorkerRole) {
        if role == .discovery, let dht, dht.handle(message) { return }
        switch message {
        case .natReport(let id, let observed, let mapping, let localPort) where id == probeID:
            reportLines = report(observed: observed, mapping: mapping, localPort: localPort)
            probeCode = observed.contains { !$0.hasSuffix(" -") } ? ExitCodes.ok : ExitCodes.unavailable
            finishProbe()
        case .portMapped(let id, let method, let ip, _, _, _, let note) where id == mapID:
            mappingLine =
                method.isEmpty
                ? "port mapping: the router answers neither NAT-PMP nor UPnP (\(InertText.make(note)))"
                : "port mapping: \(method) answered (router's address \(InertText.make(ip))): shares ask it to forward their ports, so peers reach them directly"
            finishProbe()
        case .relayListening(let port):
            guard case .relay(let host, let configured, let circuits, let rate, let seconds) = action,
                !announced
            else { return }
            announced = true
            output.link("\(host):\(port)")
            output.status("relay listening on \(host):\(port); press Ctrl-C to stop")
            if let dht {
                dht.request(.announce, key: DHTKey.relays, port: port, setupKey: "announce") { [output] result in
                    if case .success(let report) = result, report.announcedTo > 0 {
                        output.status("announced as a relay in the DHT to \(report.announcedTo) nodes")
                    }
                }
            }
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

    private func finishProbe() {
        guard let lines = reportLines, let mappingLine else { return }
        for line in lines { output.link(line) }
        output.link(mappingLine)
        if case .probe(_, let relays, _) = action {
            output.link(
                "relays known: \(relays.isEmpty ? "none (nat.relays in pipeline.json, or --relay)" : relays.joined(separator: ", "))"
            )
        }
        stop(exitCode: probeCode)
    }

    /// Printed like `tailscale netcheck`: each source, then what follows from them.
    private func report(observed: [String], mapping: UInt8, localPort: UInt16) -> [String] {
        var lines: [String] = []
        var publicAddresses: [String] = []
        lines.append("STUN (UDP, from local port \(localPort)):")
        for line in observed {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            let server = parts.first ?? line
            let seen = parts.count > 1 ? parts[1] : "-"
            lines.append(
                "  \(server.padding(toLength: 24, withPad: " ", startingAt: 0)) \(seen == "-" ? "no answer" : "sees \(seen)")"
            )
            if seen != "-", let address = try? PeerAddress.parse(seen), !publicAddresses.contains(address.host) {
                publicAddresses.append(address.host)
            }
        }
        let kind = (MappingKind(rawValue: mapping) ?? .unknown).description
        lines.append(
            "public address: \(publicAddresses.isEmpty ? "unknown (no STUN server answered)" : publicAddresses.joined(separator: ", "))"
        )
        lines.append("mapping: \(kind)")
        let reachable: String
        switch mapping {
        case 3: reachable = "yes, if no firewall drops incoming connections (no NAT on the way out)"
        case 1: reachable = "not directly; hole punching can work (the NAT keeps one port per socket)"
        case 2: reachable = "not directly; hole punching will not work: peers reach it by reverse connection or a relay"
        default: reachable = "unknown"
        }
        lines.append("reachable from outside: \(reachable)")
        return lines
    }

    public func supervisor(_ supervisor: Supervisor, restarted role: WorkerRole) {}

    public func supervisor(_ supervisor: Supervisor, gaveUpOn role: WorkerRole, reason: String) {
        output.error(reason)
        stop(exitCode: ExitCodes.software)
    }
}
