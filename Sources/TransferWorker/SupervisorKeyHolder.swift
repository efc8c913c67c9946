import Foundation
import IPC
import Stages
import WorkerRuntime

/// The transfer worker's way to the session's secrets, which it never holds: each encryption
/// handshake asks the supervisor (`sessionKeysRequest`) for the connection's keys and our
/// signature, and waits for the answer. The wait blocks the event loop for one round trip on
/// a local pipe (tens of microseconds; at most `timeout`), once per encrypted connection. The
/// answer arrives on the pipe's reader thread, which hands it over here directly, never
/// through the event loop that is waiting.
final class SupervisorKeyHolder: HandshakeKeyHolder, @unchecked Sendable {
    static let timeout: DispatchTimeInterval = .seconds(2)

    private final class Waiter {
        let done = DispatchSemaphore(value: 0)
        var answer: WorkerCommand?
    }

    private let pipe: WorkerPipe
    private let lock = NSLock()
    private var waiting: [UInt32: Waiter] = [:]
    /// Ids of our own, apart from the supervisor's (which it picks for its requests to us).
    private var nextID: UInt32 = 0x8000_0000

    init(pipe: WorkerPipe) {
        self.pipe = pipe
    }

    func keys(role: SodiumHandshake.Role, sharedSecret: [UInt8], transcript: [UInt8]) throws -> HandshakeKeys {
        let waiter = Waiter()
        let id: UInt32 = lock.withLock {
            nextID = nextID == UInt32.max ? 0x8000_0000 : nextID + 1
            waiting[nextID] = waiter
            return nextID
        }
        defer { _ = lock.withLock { waiting.removeValue(forKey: id) } }
        try pipe.send(
            .sessionKeysRequest(
                requestID: id, role: role == .server ? 1 : 0, sharedSecret: sharedSecret, transcript: transcript))
        guard waiter.done.wait(timeout: .now() + SupervisorKeyHolder.timeout) == .success else {
            throw SodiumError("the supervisor did not answer the key request in time")
        }
        switch lock.withLock({ waiter.answer }) {
        case .sessionKeys(_, let c2s, let s2c, let publicKey, let signature)?:
            guard c2s.count == 32, s2c.count == 32, publicKey.count == 32, signature.count == 64 else {
                throw SodiumError("malformed keys from the supervisor")
            }
            return HandshakeKeys(clientToServer: c2s, serverToClient: s2c, publicKey: publicKey, signature: signature)
        case .failure(_, _, let text)?:
            throw SodiumError("the supervisor refused the key request: \(text)")
        default:
            throw SodiumError("no keys from the supervisor")
        }
    }

    /// Called on the pipe's reader thread with every message from the supervisor: true when
    /// it was the answer to one of our requests (and is consumed).
    func deliver(_ message: WorkerCommand) -> Bool {
        guard let id = message.requestID, id >= 0x8000_0000 else { return false }
        switch message {
        case .sessionKeys, .failure: break
        default: return false
        }
        let waiter: Waiter? = lock.withLock {
            let found = waiting[id]
            found?.answer = message
            return found
        }
        waiter?.done.signal()
        return waiter != nil
    }
}
