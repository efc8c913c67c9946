import Logging
import NIOCore
import Supervisor

/// What every command's session is to its launcher (`SupervisorRunner` in the CLI): started
/// once the supervisor runs, stopped by a signal, done when `result` completes with the exit
/// code. One launcher starts every session through this.
public protocol Session: SupervisorDelegate, Sendable {
    /// Called on the supervisor's event loop once the session is the supervisor's delegate.
    func begin()
    /// Ctrl-C or SIGTERM: stop the workers and finish with `exitCode`.
    func stop(exitCode: Int32)
    var result: EventLoopFuture<Int32> { get }
}

extension DHTSession: ContextSession {}
extension DownloadSession: ContextSession {}
extension NATSession: ContextSession {}
extension ShareSession: ContextSession {}

/// What every session is given, and how every session ends: the supervisor it drives, the DHT
/// client and the LAN client if it has them, where it reports to people, its logger — and, once, the way out:
/// save the DHT table (when it is kept), stop the workers, complete `result` with the exit
/// code. Confined to the supervisor's event loop, like the supervisor.
public final class SessionContext: @unchecked Sendable {
    public let supervisor: Supervisor
    public let dht: DHTClient?
    public let lan: LANClient?
    public let output: SessionOutput
    public let logger: Logger
    private let done: EventLoopPromise<Int32>
    /// `finish` has been called: the session is on its way out.
    private var finishing = false

    /// False for the daemon's sessions: the DHT node is the daemon's, which saves its table.
    private let savesDHT: Bool

    public init(
        supervisor: Supervisor, dht: DHTClient?, lan: LANClient? = nil, output: SessionOutput, logger: Logger,
        savesDHT: Bool = true
    ) {
        self.savesDHT = savesDHT
        self.supervisor = supervisor
        self.dht = dht
        self.lan = lan
        self.output = output
        self.logger = logger
        done = supervisor.eventLoop.makePromise(of: Int32.self)
    }

    public var result: EventLoopFuture<Int32> { done.futureResult }

    /// Ends the session with `exitCode`; a second call does nothing.
    public func finish(exitCode: Int32) {
        guard !finishing else { return }
        finishing = true
        let shutdown = { [self] in supervisor.shutdown().whenComplete { [self] _ in done.succeed(exitCode) } }
        if let dht, savesDHT { dht.saveState(then: shutdown) } else { shutdown() }
    }
}

/// A session built on a `SessionContext`: the context's fields read as the session's own.
public protocol ContextSession: Session {
    var context: SessionContext { get }
}

extension ContextSession {
    public var result: EventLoopFuture<Int32> { context.result }
    var supervisor: Supervisor { context.supervisor }
    var dht: DHTClient? { context.dht }
    var lan: LANClient? { context.lan }
    var output: SessionOutput { context.output }
    var logger: Logger { context.logger }
}
