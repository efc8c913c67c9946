import IPC
import Logging
import WorkerRuntime

/// The NAT traversal worker. In this release it is a real, supervised process that answers
/// heartbeats and status requests; port mapping, hole punching and relays come later.
public final class NATService: WorkerService {
    let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
    }

    public func handle(_ message: IPCMessage, pipe: WorkerPipe) {
        logger.warning("ignoring \(message.tag): NAT traversal is not part of this release yet")
    }

    public func statusLine() -> String { "idle (no NAT traversal yet)" }
}
