/// The four worker processes of the user's design. The raw value is the name used on the
/// command line (`peershare worker ROLE`) and in every log line.
public enum WorkerRole: String, CaseIterable, Sendable, Codable {
    case discovery
    case nat
    case transfer
    case hash

    public var code: UInt8 {
        switch self {
        case .discovery: return 1
        case .nat: return 2
        case .transfer: return 3
        case .hash: return 4
        }
    }

    public init?(code: UInt8) {
        guard let role = WorkerRole.allCases.first(where: { $0.code == code }) else { return nil }
        self = role
    }

    /// Which reports this worker may send to the supervisor. Anything else is a protocol
    /// violation: the supervisor logs it, closes the pipe and restarts the worker (the
    /// privsep monitor's permission table). By phase, `WorkerLifecycle` adds that `hello`
    /// comes first and only once.
    public var mayEmit: Set<WorkerReport.Tag> { Self.emits[self] ?? [] }

    /// Built once: the supervisor asks for every report (a verdict per chunk).
    private static let emits = Dictionary(uniqueKeysWithValues: allCases.map { ($0, $0.buildMayEmit()) })

    private func buildMayEmit() -> Set<WorkerReport.Tag> {
        let common: Set<WorkerReport.Tag> = [.hello, .pong, .status, .failure, .counters]
        switch self {
        case .discovery:
            return common.union([.dhtReady, .dhtTrace, .dhtResult, .dhtState, .lanPeer])
        case .nat:
            return common.union([.natReport, .relayListening, .portMapped])
        case .hash:
            return common.union([
                .manifestBuilt, .hashProgress, .shareOpened, .downloadPrepared, .downloadFinalized,
            ])
        case .transfer:
            return common.union([
                .serving, .listenFailed, .manifestReceived, .chunkStored, .peerEvent, .fetchFailed, .peerCount,
                .pluginFailed,
                .sessionKeysRequest, .relayRegistered, .observedAddress,
            ])
        }
    }

    /// Which commands this worker accepts from the supervisor: the other direction of the
    /// same table. The supervisor will not send anything else, and the worker exits on
    /// anything else (a confused or compromised supervisor is not obeyed blindly either).
    /// By phase, `CommandCheck` adds the commands a worker accepts only once.
    public var mayReceive: Set<WorkerCommand.Tag> { Self.receives[self] ?? [] }

    private static let receives = Dictionary(uniqueKeysWithValues: allCases.map { ($0, $0.buildMayReceive()) })

    private func buildMayReceive() -> Set<WorkerCommand.Tag> {
        let common: Set<WorkerCommand.Tag> = [.welcome, .ping, .statusRequest, .countersRequest, .shutdown]
        switch self {
        case .discovery:
            return common.union([
                .dhtStart, .dhtRequest, .dhtStateRequest, .dhtReadOnly, .lanStart, .lanAnnounce, .withdraw,
            ])
        case .nat:
            return common.union([.natProbe, .mapPorts, .relayStart])
        case .hash:
            return common.union([.buildManifest, .openShare, .prepareDownload, .finalizeDownload])
        case .transfer:
            return common.union([
                .transferSettings, .configurePipeline, .serve, .fetch, .startChunks, .addPeers, .setLimits,
                .useRelays, .publicListenPort, .sessionKeys,
                // The answer to a key request the supervisor refuses.
                .failure,
            ])
        }
    }

    /// The worker at the other end of this one's data channel, if it has one.
    public var dataChannelPartner: WorkerRole? {
        switch self {
        case .transfer: return .hash
        case .hash: return .transfer
        case .discovery, .nat: return nil
        }
    }
}

/// What a worker accepts from the supervisor, by role (`WorkerRole.mayReceive`) and by
/// phase: `welcome` is the answer to `hello` and comes once, before anything else; a
/// worker's start-up settings (`transferSettings`, `dhtStart`, `relayStart`, `lanStart`) come once in its
/// life — a second one would mean the supervisor lost track, and a worker does not guess
/// which is right. Pure: the worker's main loop asks, and exits on a refusal.
public struct CommandCheck: Sendable {
    public static let onlyOnce: Set<WorkerCommand.Tag> = [
        .welcome, .transferSettings, .dhtStart, .relayStart, .lanStart,
    ]
    public let role: WorkerRole
    private var seen: Set<WorkerCommand.Tag> = []

    public init(role: WorkerRole) { self.role = role }

    /// Nil when the command may be obeyed now; otherwise why not.
    public mutating func refusal(of tag: WorkerCommand.Tag) -> String? {
        guard role.mayReceive.contains(tag) else { return "\(tag), which a \(role) worker never receives" }
        if seen.isEmpty && tag != .welcome { return "\(tag) before welcome" }
        if CommandCheck.onlyOnce.contains(tag) {
            guard seen.insert(tag).inserted else { return "\(tag) a second time" }
        } else {
            seen.insert(tag)
        }
        return nil
    }
}

/// The descriptors a worker inherits, by number, in one place: the supervisor places them
/// (`Supervisor.spawn`), the workers find them there.
public enum WorkerDescriptor {
    /// Every worker's pipe to the supervisor (one end of a socketpair).
    public static let supervisorPipe: Int32 = 3
    /// The transfer⇄hash data channel, in both of those workers.
    public static let dataChannel: Int32 = 4
    /// The transfer and hash workers' shared chunk pool (a memfd both map), in both of them.
    public static let chunkPool: Int32 = 5
    /// The transfer worker's plugin pipes: 6, 7, ... in pipeline order.
    public static let firstPlugin: Int32 = 6
}
