import IPC
import Logging
import WorkerRuntime

/// The discovery worker. In this release it is a real, supervised process that answers
/// heartbeats and status requests; the Kademlia DHT (BEP 5) moves in with the discovery issue.
public final class DiscoveryService: WorkerService {
    let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
    }

    public func handle(_ message: IPCMessage, pipe: WorkerPipe) {
        logger.warning("ignoring \(message.tag): the DHT is not part of this release yet")
    }

    public func statusLine() -> String { "idle (no DHT yet; peers come from links and --peer)" }
}
