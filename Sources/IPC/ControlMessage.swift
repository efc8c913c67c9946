import Wire

/// What `peershare limit`, `ls`, `share` and `get` (or any local client of this user) ask a
/// running supervisor on its control socket. A channel of its own: nothing a worker says is
/// accepted here, and nothing said here reaches a worker unchecked. A standalone `share` or
/// `get` answers `status` and `setLimits`; `peershare daemon` answers everything.
public enum ControlRequest: ChannelMessage {
    /// The limits in force.
    case status
    /// New bandwidth limits in bytes per second (0: unlimited; `LimitChange.unchanged`: keep).
    case setLimits(upload: UInt64, download: UInt64, perPeerUpload: UInt64)
    /// Daemon: share this absolute path; answered with `added` once its link exists.
    case addShare(path: String, encrypt: Bool)
    /// Daemon: download this link into this absolute folder; answered with `added` at once.
    case addDownload(link: String, targetDirectory: String)
    /// Daemon: every share and download.
    case list
    /// Daemon: stop serving or fetching an item (its workers exit), keeping it for `resume`.
    case pause(id: UInt32)
    case resume(id: UInt32)
    /// Daemon: forget an item (files on disk are kept).
    case remove(id: UInt32)
    /// Daemon: the web UI's address with its token (`peershare ui`).
    case webAddress

    public enum Tag: UInt16, CaseIterable, Sendable {
        case status = 0x0C01
        case setLimits = 0x0C02
        case addShare = 0x0C03
        case addDownload = 0x0C04
        case list = 0x0C05
        case pause = 0x0C06
        case resume = 0x0C07
        case remove = 0x0C08
        case webAddress = 0x0C09
    }

    public var tag: Tag {
        switch self {
        case .status: return .status
        case .setLimits: return .setLimits
        case .addShare: return .addShare
        case .addDownload: return .addDownload
        case .list: return .list
        case .pause: return .pause
        case .resume: return .resume
        case .remove: return .remove
        case .webAddress: return .webAddress
        }
    }

    public func writePayload(into w: inout ByteWriter) {
        switch self {
        case .status, .list, .webAddress: break
        case .setLimits(let upload, let download, let perPeer):
            w.u64(upload)
            w.u64(download)
            w.u64(perPeer)
        case .addShare(let path, let encrypt):
            w.text(path)
            w.bool(encrypt)
        case .addDownload(let link, let target):
            w.text(link)
            w.text(target)
        case .pause(let id), .resume(let id), .remove(let id):
            w.u32(id)
        }
    }

    public init(type: UInt16, reader: ByteReader) throws {
        var r = reader
        switch try Self.tag(type) {
        case .status: self = .status
        case .setLimits: self = .setLimits(upload: try r.u64(), download: try r.u64(), perPeerUpload: try r.u64())
        case .addShare: self = .addShare(path: try r.text(), encrypt: try r.bool())
        case .addDownload: self = .addDownload(link: try r.text(), targetDirectory: try r.text())
        case .list: self = .list
        case .pause: self = .pause(id: try r.u32())
        case .resume: self = .resume(id: try r.u32())
        case .remove: self = .remove(id: try r.u32())
        case .webAddress: self = .webAddress
        }
        try r.expectEnd()
    }

    /// No request is longer: two paths of PATH_MAX (4096) and a link (at most 4 KiB).
    public static let maxFrameLength = 16 * 1024
}

/// The supervisor's one answer to each `ControlRequest`.
public enum ControlReply: ChannelMessage {
    /// Done; the limits now in force (or what was done), as one line.
    case status(text: String)
    /// Not done (`code` as the process exit codes: 64 for a value out of range), and why.
    case refused(code: UInt16, message: String)
    /// An item was added to the daemon (or was there already): its id, and a share's link.
    case added(id: UInt32, link: String)
    /// The daemon's items, in id order.
    case items([DaemonItemSummary])

    public enum Tag: UInt16, CaseIterable, Sendable {
        case status = 0x0C81
        case refused = 0x0C82
        case added = 0x0C83
        case items = 0x0C84
    }

    public var tag: Tag {
        switch self {
        case .status: return .status
        case .refused: return .refused
        case .added: return .added
        case .items: return .items
        }
    }

    public func writePayload(into w: inout ByteWriter) {
        switch self {
        case .status(let text): w.text(text)
        case .refused(let code, let text):
            w.u16(code)
            w.text(text)
        case .added(let id, let link):
            w.u32(id)
            w.text(link)
        case .items(let items):
            let kept = items.prefix(DaemonItemSummary.maxItems)
            w.u16(UInt16(kept.count))
            for item in kept { item.write(into: &w) }
        }
    }

    public init(type: UInt16, reader: ByteReader) throws {
        var r = reader
        switch try Self.tag(type) {
        case .status: self = .status(text: try r.text())
        case .refused: self = .refused(code: try r.u16(), message: try r.text())
        case .added: self = .added(id: try r.u32(), link: try r.text())
        case .items:
            let count = Int(try r.u16())
            guard count <= DaemonItemSummary.maxItems else {
                throw DecodeError.tooLarge(what: "items", length: count, limit: DaemonItemSummary.maxItems)
            }
            var items: [DaemonItemSummary] = []
            for _ in 0..<count { items.append(try DaemonItemSummary(reader: &r)) }
            self = .items(items)
        }
        try r.expectEnd()
    }
}

/// One share or download of the daemon, as `ls`, `status` and the web UI show it.
public struct DaemonItemSummary: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        case share = 1
        case download = 2
    }
    /// Where the item is in its life. `seeding`: a download that is complete and served.
    public enum Phase: UInt8, Sendable, CaseIterable {
        case starting = 1
        case hashing, serving, downloading, seeding, paused, failed
        /// A share or finished download with no peer for a while: no workers, its port held
        /// by the daemon; the next peer to connect wakes it.
        case sleeping

        public var name: String {
            switch self {
            case .starting: return "starting"
            case .hashing: return "hashing"
            case .serving: return "serving"
            case .downloading: return "downloading"
            case .seeding: return "seeding"
            case .paused: return "paused"
            case .failed: return "failed"
            case .sleeping: return "sleeping"
            }
        }
    }

    public var id: UInt32
    public var kind: Kind
    public var phase: Phase
    /// The exit code a failed item ended with (as `peershare share`/`get` would exit), else 0.
    public var exitCode: UInt16
    /// The share's root name (from its manifest: a peer's words for a download; print inert).
    public var name: String
    /// A share's link, or the link a download was added with.
    public var link: String
    /// Where the files are: the shared path, or the download's target (then its final path).
    public var path: String
    public var bytesDone: UInt64
    public var bytesTotal: UInt64
    public var peers: UInt16
    /// The latest status line, or why it failed.
    public var note: String

    public init(
        id: UInt32, kind: Kind, phase: Phase, exitCode: UInt16 = 0, name: String, link: String, path: String,
        bytesDone: UInt64 = 0, bytesTotal: UInt64 = 0, peers: UInt16 = 0, note: String = ""
    ) {
        self.id = id
        self.kind = kind
        self.phase = phase
        self.exitCode = exitCode
        self.name = name
        self.link = link
        self.path = path
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
        self.peers = peers
        self.note = note
    }

    /// A reply lists at most this many (a daemon holds at most as many).
    public static let maxItems = 1024

    func write(into w: inout ByteWriter) {
        w.u32(id)
        w.u8(kind.rawValue)
        w.u8(phase.rawValue)
        w.u16(exitCode)
        w.text(name)
        w.text(link)
        w.text(path)
        w.u64(bytesDone)
        w.u64(bytesTotal)
        w.u16(peers)
        w.text(note)
    }

    init(reader r: inout ByteReader) throws {
        id = try r.u32()
        guard let kind = Kind(rawValue: try r.u8()) else { throw DecodeError.invalid("unknown item kind") }
        guard let phase = Phase(rawValue: try r.u8()) else { throw DecodeError.invalid("unknown item phase") }
        self.kind = kind
        self.phase = phase
        exitCode = try r.u16()
        name = try r.text()
        link = try r.text()
        path = try r.text()
        bytesDone = try r.u64()
        bytesTotal = try r.u64()
        peers = try r.u16()
        note = try r.text()
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
