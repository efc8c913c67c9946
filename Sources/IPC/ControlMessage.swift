import Wire

/// What `peershare limit` (or any local client of this user) asks a running supervisor on its
/// control socket. A channel of its own: nothing a worker says is accepted here, and nothing
/// said here reaches a worker unchecked.
public enum ControlRequest: ChannelMessage {
    /// The limits in force.
    case status
    /// New bandwidth limits in bytes per second (0: unlimited; `LimitChange.unchanged`: keep).
    case setLimits(upload: UInt64, download: UInt64, perPeerUpload: UInt64)

    public enum Tag: UInt16, CaseIterable, Sendable {
        case status = 0x0C01
        case setLimits = 0x0C02
    }

    public var tag: Tag {
        switch self {
        case .status: return .status
        case .setLimits: return .setLimits
        }
    }

    public func writePayload(into w: inout ByteWriter) {
        switch self {
        case .status: break
        case .setLimits(let upload, let download, let perPeer):
            w.u64(upload)
            w.u64(download)
            w.u64(perPeer)
        }
    }

    public init(type: UInt16, reader: ByteReader) throws {
        var r = reader
        switch try Self.tag(type) {
        case .status: self = .status
        case .setLimits: self = .setLimits(upload: try r.u64(), download: try r.u64(), perPeerUpload: try r.u64())
        }
        try r.expectEnd()
    }

    /// No request is longer.
    public static let maxFrameLength = 4096
}

/// The supervisor's one answer to each `ControlRequest`.
public enum ControlReply: ChannelMessage {
    /// Done; the limits now in force, as one line.
    case status(text: String)
    /// Not done (`code` as the process exit codes: 64 for a value out of range), and why.
    case refused(code: UInt16, message: String)

    public enum Tag: UInt16, CaseIterable, Sendable {
        case status = 0x0C81
        case refused = 0x0C82
    }

    public var tag: Tag {
        switch self {
        case .status: return .status
        case .refused: return .refused
        }
    }

    public func writePayload(into w: inout ByteWriter) {
        switch self {
        case .status(let text): w.text(text)
        case .refused(let code, let text):
            w.u16(code)
            w.text(text)
        }
    }

    public init(type: UInt16, reader: ByteReader) throws {
        var r = reader
        switch try Self.tag(type) {
        case .status: self = .status(text: try r.text())
        case .refused: self = .refused(code: try r.u16(), message: try r.text())
        }
        try r.expectEnd()
    }
}

/// `setLimits` values (on the control socket and to the transfer worker).
public enum LimitChange {
    /// Keep the current limit.
    public static let unchanged = UInt64.max
    /// The largest rate a limit may be set to, 2^50 B/s (1 PiB/s): far above any link, and
    /// far below where a rate stops surviving a Double ↔ UInt64 round trip.
    public static let maxRate: UInt64 = 1 << 50

    /// Why a request's values are out of range, or nil when each is `unchanged`, 0 (no
    /// limit) or at most `maxRate`.
    public static func problem(upload: UInt64, download: UInt64, perPeerUpload: UInt64) -> String? {
        for (name, value) in [("upload", upload), ("download", download), ("per-peer upload", perPeerUpload)]
        where value != unchanged && value > maxRate {
            return "\(name) limit \(value) B/s is out of range (0 for none, at most \(maxRate) B/s)"
        }
        return nil
    }
}
