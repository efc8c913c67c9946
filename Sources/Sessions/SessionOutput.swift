import Foundation

/// Where a session's user-facing output goes (the CLI prints it; tests could capture it).
public struct SessionOutput: Sendable {
    public var link: @Sendable (String) -> Void
    public var status: @Sendable (String) -> Void
    public var error: @Sendable (String) -> Void
    /// `peers` is the number of connected peers while downloading, nil elsewhere.
    public var progress: @Sendable (_ done: UInt64, _ total: UInt64, _ label: String, _ peers: Int?) -> Void
    public var finishProgress: @Sendable () -> Void
    /// Structured news for the daemon (which shows items, not lines): what the share is,
    /// where it is served, where a download landed. The CLI prints the lines instead.
    public var described: (@Sendable (_ name: String, _ bytes: UInt64) -> Void)?
    public var serving: (@Sendable (_ port: UInt16) -> Void)?
    public var completed: (@Sendable (_ path: String) -> Void)?
    /// The share's manifest, once known (hashed, or received and checked against the link):
    /// the daemon keeps it to wake a sleeping share without hashing it again.
    public var manifest: (@Sendable (_ bytes: [UInt8]) -> Void)?
    /// A chunk from `peer` passed verification (its bytes): the daemon's per-peer counts.
    public var verifiedFrom: (@Sendable (_ peer: String, _ bytes: UInt64) -> Void)?
    /// A transfer worker's line about a peer ("peer ADDRESS: connected, PATH, in N ms").
    public var peerEvent: (@Sendable (_ text: String) -> Void)?
    /// How the user resumes a download that stopped with its verified chunks kept (a full
    /// disk): the same command again on the command line, `peershare resume ID` in the daemon.
    public var resumeHint = "run the same command again to resume"

    public init(
        link: @escaping @Sendable (String) -> Void, status: @escaping @Sendable (String) -> Void,
        error: @escaping @Sendable (String) -> Void,
        progress: @escaping @Sendable (UInt64, UInt64, String, Int?) -> Void,
        finishProgress: @escaping @Sendable () -> Void
    ) {
        self.link = link
        self.status = status
        self.error = error
        self.progress = progress
        self.finishProgress = finishProgress
    }
}

/// Exit codes, from sysexits.h so scripts can tell failures apart (README lists them).
public enum ExitCodes {
    public static let ok: Int32 = 0
    public static let usage: Int32 = 64
    public static let dataError: Int32 = 65
    public static let noInput: Int32 = 66
    public static let unavailable: Int32 = 69
    public static let software: Int32 = 70
    public static let cannotCreate: Int32 = 73
    public static let ioError: Int32 = 74
    public static let config: Int32 = 78
    /// SIGINT (Ctrl-C), as shells report it: 128 + 2.
    public static let interrupted: Int32 = 130
    /// SIGTERM: 128 + 15. Never 0: a download stopped by a signal is not complete.
    public static let terminated: Int32 = 143
}
