/// When a hole punch dials, and when it gives up (libp2p's DCUtR retries likewise). Both
/// ends dial from the port the relay saw them at, as soon as the relay has introduced them;
/// the first SYN through either NAT opens it for the other side's SYN (TCP simultaneous
/// open). A SYN that arrives before the other side's NAT has a mapping is dropped (home
/// routers answer nothing), so the ends dial again a few times, briefly each.
public enum PunchPlan {
    /// Seconds after the introduction at which each dial starts.
    public static let dialOffsets: [Double] = [0, 0.25, 0.5, 0.8, 1.2]
    /// How long one dial waits for the handshake before the next may start.
    public static let dialTimeout = 0.3
    /// After this, the downloader asks the relay to bridge instead.
    public static let window = 1.8

    /// What a downloader does when a connection for the circuit works, given what it has.
    public enum Choice: Equatable, Sendable {
        /// The first direct connection (punched or reversed): keep it, leave the relay.
        case keep
        /// A direct connection is already kept, or the relay bridged: close this one.
        case close
    }

    public static func choose(alreadySettled: Bool) -> Choice { alreadySettled ? .close : .keep }
}
