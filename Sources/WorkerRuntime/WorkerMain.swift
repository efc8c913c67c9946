import CSystemShims
import Foundation
import IPC
import Logging

/// What a worker does with the messages addressed to it. The skeleton answers lifecycle
/// messages (ping, shutdown) itself on the reader thread, so a worker busy with a long job
/// still answers heartbeats; everything else is handed to the service.
public protocol WorkerService: Sendable {
    /// Called on the reader thread; a service hands the work to its own queue or loop.
    func handle(_ command: WorkerCommand, pipe: WorkerPipe)
    /// One line describing the worker's state, for `statusRequest`.
    func statusLine() -> String
    /// Named totals since the worker started, for `countersRequest` (and `/metrics`).
    func counters() -> [WorkerCounter]
    /// Called on `shutdown`, just before the process exits: undo what outlives it (the nat
    /// worker removes its port mappings from the router). Keep it under a second.
    func shutdown()
}

extension WorkerService {
    public func shutdown() {}
    public func counters() -> [WorkerCounter] { [] }
}

/// The skeleton every worker process runs (Postfix's `multi_server_main`): adopt the pipe,
/// die with the supervisor, say hello, then loop over frames.
public enum WorkerMain {
    public static let supervisorPIDVariable = "PEERSHARE_SUPERVISOR_PID"

    /// `makeService` is handed the one `WorkerPipe` of the process: every writer must share
    /// its lock, or a heartbeat reply could land in the middle of a large frame.
    public static func run(role: WorkerRole, logger: Logger, makeService: (WorkerPipe) -> WorkerService) -> Never {
        dieWithSupervisor(logger: logger)
        let pipe = WorkerPipe(descriptor: WorkerDescriptor.supervisorPipe)
        var check = CommandCheck(role: role)
        do {
            try pipe.send(.hello(version: IPCLimits.protocolVersion, role: role, pid: getpid()))
            guard case .welcome(let version)? = try pipe.receive(), check.refusal(of: .welcome) == nil
            else {
                throw WorkerError.handshake("expected welcome from the supervisor")
            }
            guard version == IPCLimits.protocolVersion else {
                throw WorkerError.handshake(
                    "supervisor speaks version \(version), we speak \(IPCLimits.protocolVersion)")
            }
        } catch {
            logger.critical("cannot start: \(error)")
            exit(70)
        }
        let service = makeService(pipe)
        logger.debug("ready (pid \(getpid()))")
        while true {
            let message: WorkerCommand?
            do {
                message = try pipe.receive()
            } catch {
                logger.error("closing: bad frame from supervisor: \(error)")
                exit(70)
            }
            guard let message else {
                logger.debug("supervisor closed the pipe; exiting")
                exit(0)
            }
            if let refusal = check.refusal(of: message.tag) {
                logger.error("closing: the supervisor sent \(refusal)")
                exit(70)
            }
            switch message {
            case .ping(let nonce):
                try? pipe.send(.pong(nonce: nonce))
            case .countersRequest(let id):
                try? pipe.send(.counters(requestID: id, values: service.counters()))
            case .statusRequest(let id):
                try? pipe.send(.status(requestID: id, text: service.statusLine()))
            case .shutdown:
                logger.debug("shutdown requested")
                service.shutdown()
                exit(0)
            default:
                service.handle(message, pipe: pipe)
            }
        }
    }

    /// A worker must never outlive its supervisor, even one killed with SIGKILL: ask the
    /// kernel for SIGKILL when the parent dies, then check the parent did not die before
    /// that request took effect (the race PR_SET_PDEATHSIG's man page warns about). EOF
    /// on the pipe is the second line of defence.
    static func dieWithSupervisor(logger: Logger) {
        _ = peershare_set_parent_death_signal(SIGKILL)
        if let expected = ProcessInfo.processInfo.environment[supervisorPIDVariable].flatMap(Int32.init),
            getppid() != expected
        {
            logger.critical("supervisor \(expected) is already gone; exiting")
            exit(70)
        }
        // Workers are in their own process group (the supervisor handles Ctrl-C and tells
        // them to stop); SIGPIPE must be an error return, not a silent death.
        signal(SIGPIPE, SIG_IGN)
    }
}
