import Foundation
import PeerShareCore
import Supervisor
import Wire

/// What the daemon remembers across restarts: its shares and downloads, and the limits set
/// through `peershare limit`. (The identity key and the DHT routing table have files of their
/// own, written the same way.) Pure data with pure operations; `StateFile` does the IO.
///
/// Downloads keep their verified chunks in their staging folder on disk, next to where they
/// land: a restarted download finds them there (the hash worker checks each against the
/// manifest), so this file only says which downloads exist.
public struct DaemonState: Codable, Sendable, Equatable {
    public static let currentVersion = 1
    /// A daemon holds at most this many items (each is a hash and a transfer worker today).
    public static let maxItems = 1024

    public var version = DaemonState.currentVersion
    public var nextID: UInt32 = 1
    /// Set through `peershare limit` (or the web UI); nil: pipeline.json's.
    public var limits: LimitSettings?
    public var items: [ItemRecord] = []

    public init() {}

    /// One share or download.
    public struct ItemRecord: Codable, Sendable, Equatable {
        public enum Kind: String, Codable, Sendable { case share, download }
        public var id: UInt32
        public var kind: Kind
        /// A share: the absolute path shared. A download: the absolute folder it lands in.
        public var path: String
        /// A download: the link it was added with. A share: its link, once printed.
        public var link: String?
        /// The TCP port it was served on: reused after a restart, so links stay valid.
        public var port: UInt16 = 0
        /// An encrypted share's link secret (hex), so its link survives a restart. This file
        /// is the user's alone (0600), as the identity key is.
        public var secret: String?
        public var encrypt = false
        public var paused = false
        /// A download that completed: where it is now (it is then served, as a seeder).
        public var finalPath: String?
        /// When the manifest kept beside this file (`ManifestStore`) was made, in Unix
        /// nanoseconds (a file's modification time is as fine): a file modified since is hashed again rather than served from it.
        public var hashedAt: UInt64?

        public init(id: UInt32, kind: Kind, path: String, link: String? = nil, encrypt: Bool = false) {
            self.id = id
            self.kind = kind
            self.path = path
            self.link = link
            self.encrypt = encrypt
        }

        /// Why this record cannot be used (hand-edited or damaged), or nil.
        public var problem: String? {
            guard id > 0 else { return "item id 0" }
            guard path.hasPrefix("/"), !path.contains("\0"), path.utf8.count <= 4096 else {
                return "item \(id): path is not absolute"
            }
            if kind == .download {
                guard let link, (try? ShareLink.parse(link)) != nil else { return "item \(id): bad link" }
            }
            if let secret, [UInt8](hex: secret)?.count != ShareLink.secretBytes {
                return "item \(id): bad secret"
            }
            return nil
        }
    }

    public enum AddOutcome: Equatable, Sendable {
        /// A new record, with this id.
        case added(UInt32)
        /// The same share or download is there already: this id.
        case existing(UInt32)
        case full
    }

    /// Adds a share of `path` unless it is shared already.
    public mutating func addShare(path: String, encrypt: Bool) -> AddOutcome {
        if let same = items.first(where: { $0.kind == .share && $0.path == path && $0.encrypt == encrypt }) {
            return .existing(same.id)
        }
        return append(ItemRecord(id: nextID, kind: .share, path: path, encrypt: encrypt))
    }

    /// Adds a download of `link` into `target` unless the same share is already coming there.
    public mutating func addDownload(link: ShareLink, text: String, target: String) -> AddOutcome {
        if let same = items.first(where: {
            $0.kind == .download && $0.path == target
                && $0.link.flatMap { try? ShareLink.parse($0) }?.shareID == link.shareID
        }) {
            return .existing(same.id)
        }
        return append(ItemRecord(id: nextID, kind: .download, path: target, link: text))
    }

    private mutating func append(_ record: ItemRecord) -> AddOutcome {
        guard items.count < DaemonState.maxItems else { return .full }
        items.append(record)
        nextID = nextID == UInt32.max ? 1 : nextID + 1
        return .added(record.id)
    }

    public func index(of id: UInt32) -> Int? { items.firstIndex { $0.id == id } }

    public mutating func update(_ id: UInt32, _ change: (inout ItemRecord) -> Void) {
        guard let index = index(of: id) else { return }
        change(&items[index])
    }

    @discardableResult
    public mutating func remove(_ id: UInt32) -> ItemRecord? {
        guard let index = index(of: id) else { return nil }
        return items.remove(at: index)
    }

    // Decoding keeps every good item of a damaged file: an item that does not decode or
    // does not make sense is dropped (and named in `dropped`), the rest kept.
    enum CodingKeys: String, CodingKey { case version, nextID, limits, items }

    /// Items dropped while decoding, with why (not saved).
    public var dropped: [String] = []

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        version = try container.decode(Int.self, forKey: .version)
        guard version == DaemonState.currentVersion else {
            throw DecodingError.dataCorruptedError(
                forKey: .version, in: container, debugDescription: "unknown state version \(version)")
        }
        nextID = max(1, (try? container.decode(UInt32.self, forKey: .nextID)) ?? 1)
        limits = try? container.decode(LimitSettings.self, forKey: .limits)
        var list = try container.nestedUnkeyedContainer(forKey: .items)
        var seen: Set<UInt32> = []
        while !list.isAtEnd, items.count < DaemonState.maxItems {
            guard let record = try? list.decode(ItemRecord.self) else {
                // Skip the undecodable element and say so.
                _ = try? list.decode(Skip.self)
                dropped.append("item #\(list.currentIndex): not a valid item")
                continue
            }
            if let problem = record.problem {
                dropped.append(problem)
            } else if !seen.insert(record.id).inserted {
                dropped.append("item \(record.id): id used twice")
            } else {
                items.append(record)
            }
        }
        // An id is never handed out twice, even after a damaged nextID.
        nextID = max(nextID, (items.map(\.id).max() ?? 0) &+ 1)
        if nextID == 0 { nextID = 1 }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(version, forKey: .version)
        try container.encode(nextID, forKey: .nextID)
        try container.encodeIfPresent(limits, forKey: .limits)
        try container.encode(items, forKey: .items)
    }

    private struct Skip: Decodable {}

    public static func == (a: DaemonState, b: DaemonState) -> Bool {
        a.version == b.version && a.nextID == b.nextID && a.limits == b.limits && a.items == b.items
    }
}

/// The state file, `$XDG_STATE_HOME/peershare/daemon.json`: read once at start, written
/// whole after every change — to a temporary file that is synced and then renamed over the
/// old one, so a crash (or `kill -9`) at any moment leaves either the old file or the new
/// one, never half of one. A file that cannot be read is moved aside and reported.
///
/// Why JSON and not SQLite: a few hundred small records, written on a user's command (not
/// per chunk: verified chunks are on disk already); a file people can read; no dependency.
public struct StateFile: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    /// `$XDG_STATE_HOME/peershare/daemon.json`, or `~/.local/state/peershare/daemon.json`.
    public static func defaultPath(environment: [String: String]) -> String? {
        if let state = environment["XDG_STATE_HOME"], state.hasPrefix("/") { return state + "/peershare/daemon.json" }
        if let home = environment["HOME"], home.hasPrefix("/") { return home + "/.local/state/peershare/daemon.json" }
        return nil
    }

    public struct Loaded: Sendable {
        public var state: DaemonState
        /// What was wrong with the file, for the log and the terminal (empty: nothing).
        public var problems: [String]
        /// Where a damaged file was moved, if it was.
        public var movedAside: String?
    }

    /// Reads the state. A missing file is an empty state; a file that does not parse is moved
    /// aside (`daemon.json.corrupt-TIME`) and the daemon starts empty; a file with some bad
    /// items keeps the others, and a copy of the original is kept aside too.
    public func load(now: Date = Date()) -> Loaded {
        guard let data = FileManager.default.contents(atPath: path) else {
            return Loaded(state: DaemonState(), problems: [], movedAside: nil)
        }
        let aside = "\(path).corrupt-\(Int(now.timeIntervalSince1970))"
        guard data.count <= StateFile.maxBytes else {
            rename(path, aside)
            return Loaded(
                state: DaemonState(), problems: ["\(path) is larger than \(StateFile.maxBytes) bytes"],
                movedAside: aside)
        }
        do {
            let state = try JSONDecoder().decode(DaemonState.self, from: data)
            if state.dropped.isEmpty { return Loaded(state: state, problems: [], movedAside: nil) }
            // Keep the original for whoever wants to see what was dropped.
            try? data.write(to: URL(fileURLWithPath: aside))
            return Loaded(state: state, problems: state.dropped, movedAside: aside)
        } catch {
            rename(path, aside)
            return Loaded(
                state: DaemonState(), problems: ["\(path) cannot be read: \(StateFile.describe(error))"],
                movedAside: aside)
        }
    }

    /// A state file is a few hundred records; anything far larger is not one.
    public static let maxBytes = 16 << 20

    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let context): return context.debugDescription
        case DecodingError.keyNotFound(let key, _): return "no '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let context): return context.debugDescription
        default: return "\(error)"
        }
    }

    /// Writes the state crash-safely: temp file (0600), fsync, rename, fsync of the folder.
    public func save(_ state: DaemonState) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try StateFile.writeAtomically(try encoder.encode(state), to: path)
    }

    /// A whole file or the old one, never half of one: temp file (0600), fsync, rename,
    /// fsync of the folder.
    static func writeAtomically(_ data: Data, to path: String) throws {
        let folder = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(
            atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let temporary = "\(path).tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw StateError("cannot write \(temporary): \(String(cString: strerror(errno)))") }
        var ok = data.withUnsafeBytes { raw -> Bool in
            guard let base = raw.baseAddress else { return true }
            var offset = 0
            while offset < raw.count {
                let wrote = write(fd, base + offset, raw.count - offset)
                if wrote < 0 && errno == EINTR { continue }
                guard wrote > 0 else { return false }
                offset += wrote
            }
            return true
        }
        ok = ok && fsync(fd) == 0
        close(fd)
        guard ok, rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw StateError("cannot write \(path): \(reason)")
        }
        let folderFD = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folderFD >= 0 {
            fsync(folderFD)
            close(folderFD)
        }
    }

    public struct StateError: Error, CustomStringConvertible {
        public var description: String
        init(_ text: String) { description = text }
    }
}

/// The manifests of the daemon's items, one file each beside the state file
/// (`manifests/ID.manifest`, 0600): a share restarted or woken is opened from its manifest
/// instead of being hashed again. A file that is missing, too large, or not the manifest of
/// the item's link is ignored (the share is hashed), never trusted.
public struct ManifestStore: Sendable {
    public let folder: String

    public init(stateFile: StateFile) {
        folder = (stateFile.path as NSString).deletingLastPathComponent + "/manifests"
    }

    func path(of id: UInt32) -> String { "\(folder)/\(id).manifest" }

    public func save(_ bytes: [UInt8], for id: UInt32) throws {
        try StateFile.writeAtomically(Data(bytes), to: path(of: id))
    }

    /// The manifest kept for `id`, if it is the one `link` names.
    public func load(for id: UInt32, link: String?) -> [UInt8]? {
        guard let text = link, let shareID = try? ShareLink.parse(text).shareID else { return nil }
        var info = stat()
        guard stat(path(of: id), &info) == 0, info.st_size <= ManifestStore.maxBytes,
            let data = FileManager.default.contents(atPath: path(of: id))
        else { return nil }
        let bytes = [UInt8](data)
        return ShareID(manifestBytes: bytes) == shareID ? bytes : nil
    }

    public func remove(_ id: UInt32) { unlink(path(of: id)) }

    /// As large as a manifest the hash worker may send.
    public static let maxBytes = 64 << 20
}
