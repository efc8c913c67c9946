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

extension DHTSession: Session {}
extension DownloadSession: Session {}
extension NATSession: Session {}
extension ShareSession: Session {}
