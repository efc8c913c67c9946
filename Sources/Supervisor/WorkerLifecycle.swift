import IPC

/// One worker's life as the supervisor keeps it, as a pure Instance: what to tell it when it
/// says hello (its table row's setup, the session's setup so far, every request still
/// unanswered), what it may send, and what to do when it dies (restart after a backoff, or
/// give up). The `Supervisor` is its shell: it spawns, writes, kills and keeps time, and does
/// what this returns. Time comes in as milliseconds; nothing here reads a clock or a socket.
public struct WorkerLifecycle: Sendable {
    /// How a message sent to the worker is remembered for a restarted worker.
    public enum Tracking: Sendable, Equatable {
        case none
        /// Remembered until a reply with the same request id arrives; re-sent after a restart.
        case request
        /// Remembered under a key for the life of the session and sent first after every restart.
        case setup(key: String)
    }

    public enum Directive: Sendable, Equatable {
        /// Write this message to the worker now.
        case write(WorkerCommand)
        /// The worker came back after a crash and has been told everything again.
        case restarted(setup: Int, requests: Int)
        /// Spawn the worker again after this many milliseconds.
        case respawn(afterMs: Int)
        /// Too many crashes in the window: stop trying.
        case giveUp(reason: String)
        /// The worker broke the protocol: close its pipe and kill it (it is then restarted).
        case violation(String)
        /// Hand the message to the session.
        case deliver(WorkerReport)
    }

    public let role: WorkerRole
    /// The table row's setup: every start of the worker gets these first.
    public let rowSetup: [WorkerCommand]
    public private(set) var ready = false
    public private(set) var restarts = 0
    private var tracker: RestartTracker
    private let windowMs: Int
    private(set) var setup: [(key: String, message: WorkerCommand)] = []
    private(set) var inFlight: [UInt32: WorkerCommand] = [:]

    public init(spec: WorkerSpec) {
        role = spec.role
        rowSetup = spec.setup
        tracker = RestartTracker(policy: spec.restart)
        windowMs = spec.restart.windowMs
    }

    /// A message for the worker: remembered as `tracking` says, written if it is ready.
    public mutating func send(_ message: WorkerCommand, tracking: Tracking) -> [Directive] {
        switch tracking {
        case .none: break
        case .request:
            if let id = message.requestID { inFlight[id] = message }
        case .setup(let key):
            if let index = setup.firstIndex(where: { $0.key == key }) {
                setup[index].message = message
            } else {
                setup.append((key, message))
            }
        }
        return ready ? [.write(message)] : []
    }

    /// Remembers a setup message without sending it (the worker already has that state).
    public mutating func remember(_ message: WorkerCommand, key: String) {
        setup.removeAll { $0.key == key }
        setup.append((key, message))
    }

    public mutating func forget(key: String) { setup.removeAll { $0.key == key } }

    /// A message from the worker. Before its hello nothing else is accepted; after it, only
    /// what its role may send, and a hello never again.
    public mutating func received(_ message: WorkerReport) -> [Directive] {
        guard role.mayEmit.contains(message.tag) else { return [.violation("\(role) may not send \(message.tag)")] }
        if !ready {
            guard case .hello(let version, let helloRole, _) = message, helloRole == role,
                version == IPCLimits.protocolVersion
            else {
                return [.violation("expected hello from \(role) speaking version \(IPCLimits.protocolVersion)")]
            }
            return welcome()
        }
        switch message {
        case .hello:
            return [.violation("hello sent twice")]
        case .hashProgress, .pong, .pluginFailed, .sessionKeysRequest:
            break  // not answers to our requests (a key request carries the worker's own id)
        default:
            if let id = message.requestID { inFlight[id] = nil }
        }
        return [.deliver(message)]
    }

    /// Welcome, then the replay: a first start and a restart alike get the row's setup, the
    /// session's setup so far and every request still unanswered — the worker's whole state
    /// is what it was told.
    private mutating func welcome() -> [Directive] {
        ready = true
        var out: [Directive] = [.write(.welcome(version: IPCLimits.protocolVersion))]
        out += rowSetup.map { .write($0) }
        out += setup.map { .write($0.message) }
        out += inFlight.keys.sorted().compactMap { id in inFlight[id].map { .write($0) } }
        if restarts > 0 { out.append(.restarted(setup: setup.count, requests: inFlight.count)) }
        return out
    }

    /// A new process was started (or the old one is being stopped): it is told nothing until
    /// it says hello.
    public mutating func down() { ready = false }

    /// The process is gone. `partnerRestart`: the supervisor killed it on purpose, with its
    /// data-channel partner, which is no crash of its own.
    public mutating func exited(status: String, nowMs: Int, partnerRestart: Bool = false) -> [Directive] {
        ready = false
        if partnerRestart {
            restarts += 1
            return [.respawn(afterMs: 0)]
        }
        switch tracker.crashed(atMs: nowMs) {
        case .restart(let delay):
            restarts += 1
            return [.respawn(afterMs: delay)]
        case .giveUp(let crashes):
            return [
                .giveUp(
                    reason:
                        "the \(role) worker failed \(crashes) times within \(windowMs / 1000) s (last: \(status)); giving up"
                )
            ]
        }
    }
}
