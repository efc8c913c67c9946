import Wire

/// The manifest describes a share: its entries (relative paths, sizes), the chunk size and
/// every chunk's hash. Its canonical binary encoding is what the share id hashes, so two
/// manifests with the same id are byte-for-byte the same. Format: docs/PROTOCOL.md §3.

public struct Manifest: Equatable, Sendable {
    public enum Kind: UInt8, Sendable {
        case file = 0
        case directory = 1
    }

    public struct Entry: Equatable, Sendable {
        public var path: String
        public var kind: Kind
        public var size: UInt64
        /// Per-file Merkle root over `chunkHashes` (MerkleTree); lets a file be checked as a whole.
        public var merkleRoot: [UInt8]
        public var chunkHashes: [[UInt8]]

        public static func directory(_ path: String) -> Entry {
            Entry(path: path, kind: .directory, size: 0, merkleRoot: [], chunkHashes: [])
        }

        public static func file(_ path: String, size: UInt64, chunkHashes: [[UInt8]]) -> Entry {
            Entry(
                path: path, kind: .file, size: size,
                merkleRoot: MerkleTree.root(of: chunkHashes), chunkHashes: chunkHashes)
        }
    }

    /// Where a chunk lives: which entry, at what offset, how many bytes.
    public struct ChunkLocation: Equatable, Sendable {
        public var entryIndex: Int
        public var offset: UInt64
        public var length: Int

        public init(entryIndex: Int, offset: UInt64, length: Int) {
            self.entryIndex = entryIndex
            self.offset = offset
            self.length = length
        }
    }

    public static let magic: [UInt8] = Array("PSM1".utf8)
    public static let minChunkSize = 64 * 1024
    public static let maxChunkSize = 4 * 1024 * 1024
    /// A manifest must fit in one IPC frame and one peer frame.
    public static let maxEncodedSize = 16 * 1024 * 1024
    public static let maxEntries = 1_000_000
    /// 1 PiB: far beyond any real share, small enough that sizes never overflow.
    public static let maxFileSize: UInt64 = 1 << 50

    public var chunkSize: Int
    public var entries: [Entry]
    /// Global chunk index -> location; files are chunked one after another in entry order.
    public let chunkLocations: [ChunkLocation]

    public init(chunkSize: Int, entries: [Entry]) {
        self.chunkSize = chunkSize
        self.entries = entries
        var locations: [ChunkLocation] = []
        for (entryIndex, entry) in entries.enumerated() where entry.kind == .file {
            for chunk in 0..<entry.chunkHashes.count {
                let offset = UInt64(chunk) * UInt64(chunkSize)
                let length = Int(min(UInt64(chunkSize), entry.size - offset))
                locations.append(ChunkLocation(entryIndex: entryIndex, offset: offset, length: length))
            }
        }
        self.chunkLocations = locations
    }

    public static func == (lhs: Manifest, rhs: Manifest) -> Bool {
        lhs.chunkSize == rhs.chunkSize && lhs.entries == rhs.entries
    }

    public var chunkCount: Int { chunkLocations.count }
    public var totalBytes: UInt64 { entries.reduce(0) { $0 + $1.size } }
    /// The single top-level name every path starts with (the shared file or folder).
    public var rootName: String {
        entries.first.map { String($0.path.split(separator: "/", maxSplits: 1)[0]) } ?? ""
    }

    public func expectedHash(ofChunk index: Int) -> [UInt8] {
        let location = chunkLocations[index]
        let entry = entries[location.entryIndex]
        let first = Int(location.offset / UInt64(chunkSize))
        return entry.chunkHashes[first]
    }

    /// Chunk size from the share's total size: aim for about 2,048 chunks (a manifest of
    /// ~64 KiB of hashes), as a power of two between 64 KiB and 4 MiB. Small chunks waste
    /// per-request overhead; huge ones make a single bad chunk expensive to re-fetch.
    public static func chunkSize(forTotalBytes total: UInt64) -> Int {
        var size = minChunkSize
        while size < maxChunkSize && UInt64(size) * 2048 < total { size *= 2 }
        return size
    }

    // MARK: Encoding

    public func encoded() -> [UInt8] {
        var writer = ByteWriter(capacity: 64 + chunkCount * 32 + entries.count * 64)
        writer.raw(Manifest.magic)
        writer.u32(UInt32(chunkSize))
        writer.u32(UInt32(entries.count))
        for entry in entries {
            writer.u8(entry.kind.rawValue)
            writer.string(entry.path)
            if entry.kind == .file {
                writer.u64(entry.size)
                writer.raw(entry.merkleRoot)
                for hash in entry.chunkHashes { writer.raw(hash) }
            }
        }
        return writer.bytes
    }

    /// Decodes and fully validates a manifest received from anyone. Every count is checked
    /// against the bytes actually present before anything is allocated for it.
    public static func decode(_ bytes: [UInt8]) throws -> Manifest {
        if bytes.count > maxEncodedSize {
            throw DecodeError.tooLarge(what: "manifest", length: bytes.count, limit: maxEncodedSize)
        }
        var reader = ByteReader(bytes)
        guard try reader.raw(4) == magic else { throw DecodeError.invalid("not a PeerShare manifest") }
        let chunkSize = Int(try reader.u32())
        guard chunkSize >= minChunkSize, chunkSize <= maxChunkSize, chunkSize & (chunkSize - 1) == 0 else {
            throw DecodeError.invalid("chunk size \(chunkSize) is not a power of two in 64 KiB...4 MiB")
        }
        let entryCount = Int(try reader.u32())
        // Each entry takes at least 3 bytes, so a count beyond that is a lie.
        guard entryCount <= maxEntries, entryCount * 3 <= reader.remaining else {
            throw DecodeError.invalid("entry count \(entryCount) does not fit the manifest")
        }
        var entries: [Entry] = []
        entries.reserveCapacity(entryCount)
        for _ in 0..<entryCount {
            guard let kind = Kind(rawValue: try reader.u8()) else {
                throw DecodeError.invalid("unknown entry kind")
            }
            let path = try reader.string()
            switch kind {
            case .directory:
                entries.append(.directory(path))
            case .file:
                let size = try reader.u64()
                guard size <= maxFileSize else { throw DecodeError.invalid("file size \(size) too large") }
                let merkleRoot = try reader.raw(32)
                let count = Int((size + UInt64(chunkSize) - 1) / UInt64(chunkSize))
                guard count * 32 <= reader.remaining else {
                    throw DecodeError.truncated(needed: count * 32, available: reader.remaining)
                }
                var hashes: [[UInt8]] = []
                hashes.reserveCapacity(count)
                for _ in 0..<count { hashes.append(try reader.raw(32)) }
                let entry = Entry.file(path, size: size, chunkHashes: hashes)
                guard entry.merkleRoot == merkleRoot else {
                    throw DecodeError.invalid("Merkle root of \(path) does not match its chunk hashes")
                }
                entries.append(entry)
            }
        }
        try reader.expectEnd()
        try SharePath.validateTree(entries.map { ($0.path, $0.kind == .directory) })
        return Manifest(chunkSize: chunkSize, entries: entries)
    }
}

/// Rules for paths inside a manifest. They come from peers, so they are hostile until
/// proven otherwise: relative, '/'-separated, no '.', '..' or empty components, no NUL or
/// backslash, one common top-level name, no file that is also another entry's parent.
public enum SharePath {
    public static let maxLength = 4096
    public static let maxComponentLength = 255

    public static func validate(_ path: String) throws {
        let utf8 = Array(path.utf8)
        guard !utf8.isEmpty else { throw DecodeError.invalid("empty path") }
        guard utf8.count <= maxLength else { throw DecodeError.invalid("path longer than \(maxLength) bytes") }
        guard utf8.first != UInt8(ascii: "/") else { throw DecodeError.invalid("absolute path '\(path)'") }
        guard !utf8.contains(0), !utf8.contains(UInt8(ascii: "\\")) else {
            throw DecodeError.invalid("path '\(path)' contains NUL or backslash")
        }
        for component in path.split(separator: "/", omittingEmptySubsequences: false) {
            if component.isEmpty { throw DecodeError.invalid("path '\(path)' has an empty component") }
            if component == "." || component == ".." {
                throw DecodeError.invalid("path '\(path)' contains '\(component)'")
            }
            if component.utf8.count > maxComponentLength {
                throw DecodeError.invalid("path component longer than \(maxComponentLength) bytes")
            }
        }
    }

    public static func validateTree(_ paths: [(path: String, isDirectory: Bool)]) throws {
        guard !paths.isEmpty else { throw DecodeError.invalid("manifest has no entries") }
        var seen = Set<String>()
        var files = Set<String>()
        var root: Substring?
        for (path, isDirectory) in paths {
            try validate(path)
            guard seen.insert(path).inserted else { throw DecodeError.invalid("duplicate path '\(path)'") }
            if !isDirectory { files.insert(path) }
            let top = path.split(separator: "/", maxSplits: 1)[0]
            if root == nil { root = top }
            guard top == root else { throw DecodeError.invalid("paths have more than one top-level name") }
        }
        for (path, _) in paths {
            var prefix = ""
            for component in path.split(separator: "/").dropLast() {
                prefix += prefix.isEmpty ? String(component) : "/" + component
                if files.contains(prefix) { throw DecodeError.invalid("'\(prefix)' is both a file and a folder") }
            }
        }
    }
}
