import Foundation
import IPC
import Logging

/// The transfer⇄hash data channel from one side: the socketpair end the supervisor placed on
/// `WorkerDescriptor.dataChannel`. Chunk data moves here (writeChunk, readChunk and their
/// answers) in the same frames as on the supervisor's pipes, so it is copied once between
/// the two workers instead of twice through the supervisor. Control stays with the
/// supervisor: setup, progress and verdicts go through it as before.
public enum DataChannel {
    /// The inherited end, typed by what this worker sends and receives on it (the transfer
    /// worker: `ChunkRequest` out, `ChunkReply` in; the hash worker the reverse), or nil when
    /// this process was started without one.
    public static func inherited<Outgoing, Incoming>() -> MessagePipe<Outgoing, Incoming>? {
        var info = stat()
        guard fstat(WorkerDescriptor.dataChannel, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK else {
            return nil
        }
        return MessagePipe(descriptor: WorkerDescriptor.dataChannel)
    }

    /// Reads frames on a thread of its own and hands them to `deliver`, as many at a time as
    /// have arrived (one wake-up of the consumer per burst, not per message). Each end decodes only
    /// its own direction's messages (`ChunkRequest` at the hash worker, `ChunkReply` at the
    /// transfer worker): the supervisor does not see this channel, so each side enforces the
    /// rules itself. When the partner goes away, reading stops and
    /// `closed` is called: the worker waits for the supervisor, which restarts the pair on a
    /// new channel. When the partner breaks the rules (a bad frame, a message it may not
    /// send), this worker exits with status 70 — the supervisor sees a crash and restarts
    /// both, as it restarts a worker that breaks the rules on its own pipe.
    public static func startReading<Outgoing, Incoming>(
        _ pipe: MessagePipe<Outgoing, Incoming>, deliver: @escaping @Sendable ([Incoming]) -> Void,
        logger: Logger, closed: @escaping @Sendable (String) -> Void
    ) {
        Thread.detachNewThread {
            while true {
                let messages: [Incoming]?
                do {
                    messages = try pipe.receiveAvailable()
                } catch let error as WorkerError {
                    // Reset or cut mid-frame: the partner died (killed with data unread).
                    return closed("\(error)")
                } catch {
                    // Malformed, or a message of the other direction.
                    logger.error("bad frame on the data channel: \(error); exiting")
                    exit(70)
                }
                guard let messages else { return closed("the data channel was closed") }
                deliver(messages)
            }
        }
    }
}
