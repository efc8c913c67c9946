import IPC
import PeerShareCore
import WorkerRuntime

/// One row per worker process, in the spirit of Postfix's master.cf: what runs, how it is
/// restarted, what it may send and how it is confined.
/// Everything the supervisor knows about a worker comes from its row.
public struct WorkerSpec: Sendable {
    public var role: WorkerRole
    /// Arguments after the executable; every worker is this same binary re-executed.
    public var arguments: [String]
    public var restart: RestartPolicy
    /// Heartbeat: how often to ping, and how long silence may last before a kill.
    public var heartbeatIntervalMs: Int
    public var heartbeatTimeoutMs: Int
    /// Largest frame accepted from this worker.
    public var maxFrameLength: Int
    /// How the worker confines itself (Landlock + seccomp), passed on its command line: it
    /// must hold before the worker has read a byte from anyone.
    public var sandbox: SandboxProfile
    /// What the worker is told first on every start (before the session's own setup and the
    /// requests a restart replays): its settings. Nothing else configures a worker.
    public var setup: [WorkerCommand] = []
    /// Messages this worker may send; anything else is a protocol violation.
    public var mayEmit: Set<WorkerReport.Tag> { role.mayEmit }
}

public enum WorkerTable {
    /// The four workers of the user's design, configured from pipeline.json.
    ///
    ///     role       command                     restart           frame limit  sandbox       setup
    ///     discovery  peershare worker discovery  backoff, give up  16 MiB       network-only  -
    ///     nat        peershare worker nat        backoff, give up  16 MiB       network-only  -
    ///     transfer   peershare worker transfer   backoff, give up  16 MiB       network-only  transferSettings
    ///     hash       peershare worker hash       backoff, give up  16 MiB       files-only    -
    ///
    /// `readable`/`writable`: the only paths the hash worker may touch (the shared path, or
    /// the download's target folder). Every other worker may open no file at all.
    /// `roles`: the rows wanted (the daemon runs discovery once, and a hash and transfer
    /// worker per share or download, each hash worker confined to that item's path).
    public static func standard(
        config: PipelineConfig, logLevel: String, readable: [String] = [], writable: [String] = [],
        roles: Set<WorkerRole> = Set(WorkerRole.allCases)
    ) -> [WorkerSpec] {
        let policy = RestartPolicy(
            maxRestarts: config.workers.maxRestarts, windowMs: config.workers.restartWindowMs,
            initialBackoffMs: config.workers.restartBackoffMs, maxBackoffMs: config.workers.restartBackoffMaxMs)
        let off = Sandbox.disabledByEnvironment
        func row(_ role: WorkerRole, sandbox: SandboxProfile) -> WorkerSpec {
            let profile = off ? SandboxProfile(kind: .none) : sandbox
            return WorkerSpec(
                role: role, arguments: ["worker", role.rawValue, "--log-level", logLevel] + profile.arguments,
                restart: policy,
                heartbeatIntervalMs: config.workers.heartbeatIntervalMs,
                heartbeatTimeoutMs: config.workers.heartbeatTimeoutMs, maxFrameLength: IPCLimits.maxFrameLength,
                sandbox: profile)
        }
        let network = SandboxProfile(kind: .networkOnly)
        var transfer = row(.transfer, sandbox: network)
        let limits = config.limits
        // Validated when the configuration was read; clamped again so no value can trap here.
        func rate(_ value: Double) -> UInt64 { value.isFinite ? UInt64(min(max(0, value), ByteRate.maxRate)) : 0 }
        transfer.setup = [
            .transferSettings(
                requestsInFlight: UInt16(clamping: limits.requestsInFlight),
                maxPeers: UInt16(clamping: limits.maxPeers),
                upload: rate(limits.maxUploadRate), download: rate(limits.maxDownloadRate),
                perPeerUpload: rate(limits.maxPeerUploadRate))
        ]
        return [
            row(.discovery, sandbox: network),
            row(.nat, sandbox: network),
            transfer,
            row(.hash, sandbox: SandboxProfile(kind: .filesOnly, readable: readable, writable: writable)),
        ].filter { roles.contains($0.role) }
    }
}

/// Exponential backoff with a give-up rule. Pure: the caller passes the time in.
public struct RestartPolicy: Sendable, Equatable {
    public var maxRestarts: Int
    public var windowMs: Int
    public var initialBackoffMs: Int
    public var maxBackoffMs: Int

    public init(maxRestarts: Int, windowMs: Int, initialBackoffMs: Int, maxBackoffMs: Int) {
        self.maxRestarts = maxRestarts
        self.windowMs = windowMs
        self.initialBackoffMs = initialBackoffMs
        self.maxBackoffMs = maxBackoffMs
    }
}

/// Remembers a worker's recent crashes and says what to do about the next one.
public struct RestartTracker: Sendable {
    public enum Decision: Equatable, Sendable {
        case restart(afterMs: Int)
        case giveUp(crashes: Int)
    }

    public let policy: RestartPolicy
    private var crashTimesMs: [Int] = []

    public init(policy: RestartPolicy) {
        self.policy = policy
    }

    /// Records a crash at `nowMs`; crashes older than the window are forgotten.
    public mutating func crashed(atMs nowMs: Int) -> Decision {
        crashTimesMs = crashTimesMs.filter { nowMs - $0 < policy.windowMs }
        crashTimesMs.append(nowMs)
        let crashes = crashTimesMs.count
        if crashes > policy.maxRestarts { return .giveUp(crashes: crashes) }
        var delay = policy.initialBackoffMs
        for _ in 1..<crashes {
            delay = min(delay * 2, policy.maxBackoffMs)
        }
        return .restart(afterMs: min(delay, policy.maxBackoffMs))
    }
}
