import CSystemShims
import Foundation
import IPC
import Logging
import NIOCore
import NIOPosix
import Stages
import Wire
import WorkerRuntime

/// What the supervisor's owner (a `share` or `get` session) hears about.
public protocol SupervisorDelegate: AnyObject {
    /// A message from a worker that passed the permission check (never hello/pong).
    func supervisor(_ supervisor: Supervisor, received message: WorkerReport, from role: WorkerRole)
    /// A worker crashed, was restarted, and has been sent its setup and in-flight requests again.
    func supervisor(_ supervisor: Supervisor, restarted role: WorkerRole)
    /// A worker crashed too often; the supervisor is stopping everything.
    func supervisor(_ supervisor: Supervisor, gaveUpOn role: WorkerRole, reason: String)
}

/// Starts the workers of the worker table, watches them, restarts them, and routes messages.
///
/// Every method must be called on `eventLoop`; all state lives there, which is why the class
/// can be `@unchecked Sendable`. Workers are spawned from the event loop's thread, which lives
/// as long as the supervisor: PR_SET_PDEATHSIG fires when the *thread* that forked a child exits.
public final class Supervisor: @unchecked Sendable {
    public typealias Tracking = WorkerLifecycle.Tracking

    /// Loop-confined like the supervisor itself.
    final class Worker: @unchecked Sendable {
        let spec: WorkerSpec
        var pid: pid_t = 0
        var channel: Channel?
        var generation = 0
        var stopped = false
        var lastHeardNs: UInt64 = 0
        /// Setup, replay, permissions and restarts: the pure part (`WorkerLifecycle`).
        var life: WorkerLifecycle
        var ready: Bool { life.ready }

        init(spec: WorkerSpec) {
            self.spec = spec
            self.life = WorkerLifecycle(spec: spec)
        }
    }

    public let eventLoop: EventLoop
    public weak var delegate: SupervisorDelegate?
    let logger: Logger
    private var workers: [WorkerRole: Worker] = [:]
    /// The binary workers are started from; nil: this one (`OwnExecutable`).
    private let executable: String?
    private var startPromise: EventLoopPromise<Void>?
    private var stopPromise: EventLoopPromise<Void>?
    private var shuttingDown = false
    private var heartbeat: RepeatedTask?
    private var nextRequestID: UInt32 = 1
    private var nonce: UInt64 = 0

    private let plugins: PluginHost
    /// The session's secrets (an encrypted share): answers the transfer worker's key
    /// requests, each transcript once. Nil: a public share, and every request is refused.
    public var keyHolder: HandshakeKeyHolder?
    /// Transcripts already answered, oldest first (bounded).
    private var answeredTranscripts: Set<[UInt8]> = []
    private var answeredOrder: [[UInt8]] = []
    /// Data channel ends made for a worker that has not been started on them yet.
    private var pendingDataEnds: [WorkerRole: DataChannelEnd] = [:]
    /// Workers killed because their data channel partner was restarted: not a crash of theirs.
    private var killedWithPartner: Set<WorkerRole> = []
    /// A listening TCP socket someone else owns (the daemon, which holds a sleeping share's
    /// port): every life of the transfer worker inherits it and serves on it rather than
    /// binding a port of its own — socket activation, as systemd and inetd do it. Not closed
    /// here.
    public var transferListener: Int32?

    public init(
        table: [WorkerSpec], eventLoop: EventLoop, logger: Logger, executable: String? = nil,
        plugins: [PluginSpec] = []
    ) {
        self.eventLoop = eventLoop
        self.logger = logger
        self.executable = executable
        self.plugins = PluginHost(specs: plugins, loop: eventLoop, logger: logger)
        for spec in table { workers[spec.role] = Worker(spec: spec) }
    }

    /// A plugin hung or answered garbage (the transfer worker says so): restart it.
    public func pluginFailed(name: String, reason: String) {
        plugins.failed(name: name, reason: reason)
    }

    /// A fresh request id; ids are unique across all workers for the supervisor's lifetime.
    public func makeRequestID() -> UInt32 {
        defer { nextRequestID &+= 1 }
        return nextRequestID
    }

    /// Process ids of the running workers, for status and tests.
    public var workerPIDs: [WorkerRole: pid_t] {
        workers.compactMapValues { $0.pid > 0 ? $0.pid : nil }
    }

    // MARK: Starting and stopping

    /// Spawns every worker; succeeds when all of them have completed the version handshake.
    public func start() -> EventLoopFuture<Void> {
        eventLoop.preconditionInEventLoop()
        let promise = eventLoop.makePromise(of: Void.self)
        startPromise = promise
        // Plugins first: the transfer worker inherits their pipes when it is spawned.
        plugins.onRestart = { [self] _ in
            if let transfer = workers[.transfer], transfer.pid > 0 { kill(transfer.pid, SIGKILL) }
        }
        plugins.onGiveUp = { [self] reason in
            logger.critical("\(reason)")
            delegate?.supervisor(self, gaveUpOn: .transfer, reason: reason)
        }
        do {
            try plugins.startAll()
        } catch {
            promise.fail(error)
            return promise.futureResult
        }
        for worker in workers.values { spawn(worker) }
        let interval = workers.values.map(\.spec.heartbeatIntervalMs).min() ?? 1000
        heartbeat = eventLoop.scheduleRepeatedTask(
            initialDelay: .milliseconds(Int64(interval)), delay: .milliseconds(Int64(interval))
        ) { [self] _ in checkHeartbeats() }
        return promise.futureResult
    }

    /// Asks every worker to exit, kills those that do not within the grace period, reaps all.
    public func shutdown(graceMs: Int64 = 2000) -> EventLoopFuture<Void> {
        eventLoop.preconditionInEventLoop()
        if let stopPromise { return stopPromise.futureResult }
        let promise = eventLoop.makePromise(of: Void.self)
        stopPromise = promise
        shuttingDown = true
        plugins.stopAll()
        heartbeat?.cancel()
        startPromise?.fail(SupervisorError.stopped)
        startPromise = nil
        for worker in workers.values {
            if worker.pid > 0 {
                write(.shutdown, to: worker)
            } else {
                worker.stopped = true
            }
        }
        eventLoop.scheduleTask(in: .milliseconds(graceMs)) { [self] in
            for worker in workers.values where worker.pid > 0 {
                logger.warning("\(worker.spec.role) did not exit in time; killing it")
                kill(worker.pid, SIGKILL)
            }
        }
        completeShutdownIfDone()
        return promise.futureResult
    }

    private func completeShutdownIfDone() {
        if shuttingDown, workers.values.allSatisfy({ $0.pid == 0 }) {
            stopPromise?.succeed(())
        }
    }

    // MARK: Counters, for /metrics

    /// Asks every running worker for its counters and completes with what has arrived after
    /// `timeoutMs` at most (a busy or restarting worker is simply missing from that scrape).
    public func collectCounters(timeoutMs: Int64 = 1000) -> EventLoopFuture<[WorkerRole: [WorkerCounter]]> {
        eventLoop.preconditionInEventLoop()
        let promise = eventLoop.makePromise(of: [WorkerRole: [WorkerCounter]].self)
        var ids: [UInt32] = []
        for (role, worker) in workers where worker.ready {
            let id = makeRequestID()
            ids.append(id)
            counterRequests[id] = role
            write(.countersRequest(requestID: id), to: worker)
        }
        let asked = ids
        let collection = CounterCollection(waiting: Set(asked), promise: promise)
        counterCollections.append(collection)
        collection.finishIfDone()
        eventLoop.scheduleTask(in: .milliseconds(timeoutMs)) { [self] in
            for id in asked { counterRequests[id] = nil }
            collection.finish()
            counterCollections.removeAll { $0 === collection }
        }
        return promise.futureResult
    }

    /// How many times each worker has been restarted.
    public var restartCounts: [WorkerRole: Int] { workers.mapValues { $0.life.restarts } }

    private var counterRequests: [UInt32: WorkerRole] = [:]
    private var counterCollections: [CounterCollection] = []

    /// One scrape's answers, completed when all arrived or at its timeout. Loop-confined.
    final class CounterCollection: @unchecked Sendable {
        var waiting: Set<UInt32>
        var answers: [WorkerRole: [WorkerCounter]] = [:]
        let promise: EventLoopPromise<[WorkerRole: [WorkerCounter]]>
        var done = false

        init(waiting: Set<UInt32>, promise: EventLoopPromise<[WorkerRole: [WorkerCounter]]>) {
            self.waiting = waiting
            self.promise = promise
        }

        func finishIfDone() { if waiting.isEmpty { finish() } }

        func finish() {
            guard !done else { return }
            done = true
            promise.succeed(answers)
        }
    }

    private func countersArrived(_ id: UInt32, _ values: [WorkerCounter], from role: WorkerRole) {
        guard counterRequests.removeValue(forKey: id) == role else { return }
        for collection in counterCollections where collection.waiting.remove(id) != nil {
            collection.answers[role] = values
            collection.finishIfDone()
        }
    }

    // MARK: Sending

    public func send(_ message: WorkerCommand, to role: WorkerRole, tracking: Tracking = .none) {
        eventLoop.preconditionInEventLoop()
        guard let worker = workers[role] else { return }
        guard role.mayReceive.contains(message.tag) else {
            // A bug here, not in the worker: it would exit on receiving this.
            logger.error("not sending \(message.tag) to the \(role) worker, which does not accept it")
            return
        }
        perform(worker.life.send(message, tracking: tracking), for: worker)
    }

    /// Drops a setup message: a restarted worker will not get it again.
    public func forgetSetup(key: String, for role: WorkerRole) {
        workers[role]?.life.forget(key: key)
    }

    /// Records a setup message for future restarts without sending it now (the worker
    /// already has that state, e.g. the hash worker that built the manifest).
    public func rememberSetup(_ message: WorkerCommand, key: String, for role: WorkerRole) {
        workers[role]?.life.remember(message, key: key)
    }

    private func write(_ message: WorkerCommand, to worker: Worker) {
        guard let channel = worker.channel else { return }
        channel.writeAndFlush(OutgoingFrame.frame(message.frame()), promise: nil)
    }

    // MARK: Spawning

    private func spawn(_ worker: Worker) {
        let role = worker.spec.role
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            workerExited(
                worker, generation: worker.generation, status: "socketpair failed: \(String(cString: strerror(errno)))")
            return
        }
        var arguments = ["peershare"] + worker.spec.arguments
        let envStrings = StderrRelay.childEnvironment(
            ProcessInfo.processInfo.environment, extra: [WorkerMain.supervisorPIDVariable: String(getpid())])
        // stdin and stdout are /dev/null, stderr a pipe we read (never the terminal); the
        // transfer and hash workers share a data channel (descriptor 4) and a chunk pool
        // (descriptor 5); the transfer worker also inherits the plugins' pipes (descriptors
        // 6, 7, ...). Nothing else.
        var mappings: [(Int32, Int32)] = [(pair[1], WorkerDescriptor.supervisorPipe)]
        let stderrPipe = StderrRelay.makePipe()
        if let stderrPipe { mappings.append((stderrPipe.write, 2)) }
        let dataEnd = dataChannelEnd(for: role)
        if let dataEnd {
            mappings.append((dataEnd.socket, WorkerDescriptor.dataChannel))
            mappings.append((dataEnd.pool, WorkerDescriptor.chunkPool))
        }
        if role == .transfer {
            mappings += plugins.descriptorsForNewTransferWorker()
            if let transferListener {
                // After the plugins' pipes: the one descriptor numbered by its argument.
                let number = (mappings.map(\.1).max() ?? WorkerDescriptor.chunkPool) + 1
                mappings.append((transferListener, number))
                arguments += ["--listener-fd", String(number)]
            }
        }
        var from = mappings.map(\.0)
        var to = mappings.map(\.1)
        let pid = withCStrings(arguments) { argv in
            withCStrings(envStrings) { envp in
                peershare_spawn_fds(executable ?? OwnExecutable.path(), argv, envp, &from, &to, Int32(mappings.count))
            }
        }
        close(pair[1])
        if let dataEnd {
            close(dataEnd.socket)
            close(dataEnd.pool)
        }
        if let stderrPipe {
            close(stderrPipe.write)
            if pid > 0 { StderrRelay.start(reading: stderrPipe.read) } else { close(stderrPipe.read) }
        }
        worker.generation += 1
        let generation = worker.generation
        guard pid > 0 else {
            close(pair[0])
            workerExited(worker, generation: generation, status: "cannot start: \(String(cString: strerror(errno)))")
            return
        }
        worker.pid = pid
        worker.life.down()
        worker.lastHeardNs = DispatchTime.now().uptimeNanoseconds
        logger.debug("started \(role) worker (pid \(pid))")
        reap(pid: pid, worker: worker, generation: generation)

        let maxFrame = worker.spec.maxFrameLength
        ClientBootstrap(group: eventLoop)
            .channelOption(ChannelOptions.recvAllocator, value: ChunkTrafficReads.allocator)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        ChannelMessageDecoder<WorkerReport>.handler(maxFrameLength: maxFrame),
                        FrameChannelWriter(),
                        WorkerChannelHandler(supervisor: self, role: role, generation: generation),
                    ])
                }
            }
            .withConnectedSocket(pair[0])
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    if worker.generation == generation { worker.channel = channel } else { channel.close(promise: nil) }
                case .failure(let error):
                    logger.error("cannot attach to \(role) worker's pipe: \(error)")
                    kill(pid, SIGKILL)
                }
            }
    }

    /// One worker's descriptors for its partnership: its end of the data channel, and the
    /// chunk pool both map.
    struct DataChannelEnd {
        var socket: Int32
        var pool: Int32
    }

    /// This worker's end of the data channel it shares with its partner (transfer ⇄ hash:
    /// chunk slots are named there, their bytes lie in the pool) and the pool. Both are
    /// made once per pair of lives: the worker started first makes them and leaves the
    /// other end (and a second descriptor of the pool) for its partner; a worker restarted
    /// while its partner lives makes new ones and kills the partner, whose restart picks up
    /// the new end — a worker is never left holding a channel whose other side is gone, nor a
    /// pool a dead partner may still have written into.
    private let chunkPoolBytes = ChunkPool.configuredBytes(environment: ProcessInfo.processInfo.environment)

    private func dataChannelEnd(for role: WorkerRole) -> DataChannelEnd? {
        guard let partnerRole = role.dataChannelPartner, workers[partnerRole] != nil else { return nil }
        if let end = pendingDataEnds.removeValue(forKey: role) { return end }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            logger.error("cannot make the \(role)⇄\(partnerRole) data channel: \(String(cString: strerror(errno)))")
            return nil
        }
        guard let pool = ChunkPool.makeDescriptor(bytes: chunkPoolBytes) else {
            logger.error("cannot make the \(role)⇄\(partnerRole) chunk pool: \(String(cString: strerror(errno)))")
            close(pair[0])
            close(pair[1])
            return nil
        }
        let partnerPool = fcntl(pool, F_DUPFD_CLOEXEC, 0)
        guard partnerPool >= 0 else {
            logger.error("cannot share the chunk pool: \(String(cString: strerror(errno)))")
            for fd in [pair[0], pair[1], pool] { close(fd) }
            return nil
        }
        if let stale = pendingDataEnds.updateValue(
            DataChannelEnd(socket: pair[1], pool: partnerPool), forKey: partnerRole)
        {
            close(stale.socket)
            close(stale.pool)
        }
        if let partner = workers[partnerRole], partner.pid > 0 {
            logger.info("restarting the \(partnerRole) worker too: it shares a data channel with \(role)")
            killedWithPartner.insert(partnerRole)
            kill(partner.pid, SIGKILL)
        }
        return DataChannelEnd(socket: pair[0], pool: pool)
    }

    /// A thread per worker blocks in waitpid, so no child is ever left a zombie, and reports
    /// the exit status back on the event loop.
    private func reap(pid: pid_t, worker: Worker, generation: Int) {
        let loop = eventLoop
        Thread.detachNewThread { [self] in
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            let description: String
            if status & 0x7f == 0 {
                description = "exited with status \((status >> 8) & 0xff)"
            } else {
                description = "killed by signal \(status & 0x7f)"
            }
            loop.execute { self.workerExited(worker, generation: generation, status: description) }
        }
    }

    // MARK: Events from worker channels

    func received(_ decoded: DecodedMessage<WorkerReport>, from role: WorkerRole, generation: Int) {
        guard let worker = workers[role], worker.generation == generation else { return }
        let message: WorkerReport
        switch decoded {
        case .message(let report): message = report
        case .undecodable(let why): return violation(by: worker, "undecodable message: \(why)")
        }
        if role.mayEmit.contains(message.tag) { worker.lastHeardNs = DispatchTime.now().uptimeNanoseconds }
        perform(worker.life.received(message), for: worker)
    }

    /// Carries out what a worker's `WorkerLifecycle` decided.
    private func perform(_ directives: [WorkerLifecycle.Directive], for worker: Worker) {
        let role = worker.spec.role
        for directive in directives {
            switch directive {
            case .write(let message):
                write(message, to: worker)
            case .restarted(let setup, let requests):
                logger.info(
                    "\(role) worker restarted (pid \(worker.pid)); re-sent \(setup) setup and \(requests) in-flight requests"
                )
                delegate?.supervisor(self, restarted: role)
            case .violation(let what):
                violation(by: worker, what)
                return
            case .respawn(let delay):
                if delay == 0 {
                    spawn(worker)
                } else {
                    logger.warning("\(role) worker \(lastExit[role] ?? "exited"); restarting in \(delay) ms")
                    eventLoop.scheduleTask(in: .milliseconds(Int64(delay))) { [self] in
                        if !shuttingDown { spawn(worker) }
                    }
                }
            case .giveUp(let reason):
                logger.critical("\(reason)")
                startPromise?.fail(SupervisorError.gaveUp(reason))
                startPromise = nil
                delegate?.supervisor(self, gaveUpOn: role, reason: reason)
            case .deliver(let message):
                switch message {
                case .pong:
                    break
                case .counters(let id, let values):
                    countersArrived(id, values, from: role)
                case .pluginFailed(let name, let reason):
                    plugins.failed(name: name, reason: reason)
                case .sessionKeysRequest(let id, let keyRole, let shared, let transcript):
                    write(answerKeyRequest(id: id, role: keyRole, shared: shared, transcript: transcript), to: worker)
                default:
                    delegate?.supervisor(self, received: message, from: role)
                }
            }
        }
        if let startPromise, worker.ready, workers.values.allSatisfy(\.ready) {
            self.startPromise = nil
            startPromise.succeed(())
        }
    }

    /// How each worker last ended, for the restart message.
    private var lastExit: [WorkerRole: String] = [:]

    /// The monitor's side of an encryption handshake (OpenSSH's privsep, for our keys): the
    /// transfer worker sends the X25519 shared secret and the transcript hash; we derive the
    /// connection's keys with the link secret and sign the transcript with the identity. A
    /// transcript is answered once: it is unique to a connection (both sides' ephemeral keys
    /// are in it), so a second request for it is not a handshake.
    private func answerKeyRequest(id: UInt32, role: UInt8, shared: [UInt8], transcript: [UInt8]) -> WorkerCommand {
        guard let keyHolder else {
            return .failure(requestID: id, code: 70, message: "no encrypted share here: no keys to give")
        }
        guard role <= 1, shared.count == 32, transcript.count == 32 else {
            return .failure(requestID: id, code: 70, message: "malformed key request")
        }
        guard answeredTranscripts.insert(transcript).inserted else {
            logger.warning("the transfer worker asked twice for the keys of one handshake; refused")
            return .failure(requestID: id, code: 70, message: "that handshake's keys were given already")
        }
        answeredOrder.append(transcript)
        if answeredOrder.count > 65536 { answeredTranscripts.remove(answeredOrder.removeFirst()) }
        do {
            let keys = try keyHolder.keys(
                role: role == 1 ? .server : .client, sharedSecret: shared, transcript: transcript)
            return .sessionKeys(
                requestID: id, clientToServer: keys.clientToServer, serverToClient: keys.serverToClient,
                publicKey: keys.publicKey, signature: keys.signature)
        } catch {
            return .failure(requestID: id, code: 70, message: "\(error)")
        }
    }

    func channelError(_ error: Error, role: WorkerRole, generation: Int) {
        guard let worker = workers[role], worker.generation == generation else { return }
        // A worker that exits (stopping, or killed) resets its end: that is an exit, which the
        // reaper reports, not a protocol violation.
        if shuttingDown { return }
        if let io = error as? IOError, [ECONNRESET, EPIPE].contains(io.errnoCode) {
            logger.debug("\(role) worker's pipe: \(error)")
            return
        }
        violation(by: worker, "bad frame: \(error)")
    }

    func channelClosed(role: WorkerRole, generation: Int) {
        guard let worker = workers[role], worker.generation == generation, worker.pid > 0 else { return }
        // The pipe is gone, so the worker is useless even if still alive: make sure it dies;
        // the reaper thread then reports the exit.
        if !shuttingDown { logger.debug("\(role) worker closed its pipe") }
        kill(worker.pid, SIGKILL)
    }

    private func violation(by worker: Worker, _ what: String) {
        logger.error("protocol violation by the \(worker.spec.role) worker: \(what); restarting it")
        worker.channel?.close(promise: nil)
        if worker.pid > 0 { kill(worker.pid, SIGKILL) }
    }

    private func workerExited(_ worker: Worker, generation: Int, status: String) {
        guard worker.generation == generation else { return }
        let role = worker.spec.role
        worker.pid = 0
        worker.life.down()
        worker.channel?.close(promise: nil)
        worker.channel = nil
        if shuttingDown {
            logger.debug("\(role) worker \(status)")
            worker.stopped = true
            completeShutdownIfDone()
            return
        }
        lastExit[role] = status
        let nowMs = Int(DispatchTime.now().uptimeNanoseconds / 1_000_000)
        let partner = killedWithPartner.remove(role) != nil
        perform(worker.life.exited(status: status, nowMs: nowMs, partnerRestart: partner), for: worker)
    }

    // MARK: Heartbeats

    private func checkHeartbeats() {
        let now = DispatchTime.now().uptimeNanoseconds
        for worker in workers.values where worker.pid > 0 {
            let silentMs = Int((now &- worker.lastHeardNs) / 1_000_000)
            if silentMs > worker.spec.heartbeatTimeoutMs {
                logger.error("\(worker.spec.role) worker silent for \(silentMs) ms; killing it")
                kill(worker.pid, SIGKILL)
            } else if worker.ready {
                nonce &+= 1
                write(.ping(nonce: nonce), to: worker)
            }
        }
    }
}

public enum SupervisorError: Error, CustomStringConvertible {
    case stopped
    case gaveUp(String)

    public var description: String {
        switch self {
        case .stopped: return "the supervisor is stopping"
        case .gaveUp(let reason): return reason
        }
    }
}

/// The supervisor's end of one worker's pipe: frames in, events out.
final class WorkerChannelHandler: ChannelInboundHandler {
    typealias InboundIn = DecodedMessage<WorkerReport>
    let supervisor: Supervisor
    let role: WorkerRole
    let generation: Int

    init(supervisor: Supervisor, role: WorkerRole, generation: Int) {
        self.supervisor = supervisor
        self.role = role
        self.generation = generation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        supervisor.received(unwrapInboundIn(data), from: role, generation: generation)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        supervisor.channelError(error, role: role, generation: generation)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        supervisor.channelClosed(role: role, generation: generation)
    }
}

/// Runs `body` with a NULL-terminated C array of the strings.
func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return body(pointers)
}
