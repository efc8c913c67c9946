import Foundation
import Wire

/// The manifest describes a share: its entries (relative paths, sizes), the chunk size and
/// every chunk's hash. Its canonical binary encoding is what the share id hashes, so two
/// manifests with the same id are byte-for-byte the same. Format: docs/PROTOCOL.md §3.

public struct Manifest: Equatable, Sendable {
    public enum Kind: UInt8, Sendable {
        case file = 0
        case directory = 1
    }

    /// What a manifest is made from (`ManifestBuilder`, tests): a folder, or a file with its
    /// chunk hashes. A decoded manifest keeps no such values: see `Manifest`'s storage.
    public struct Item: Equatable, Sendable {
        public var path: String
        public var kind: Kind
        public var size: UInt64
        public var chunkHashes: [[UInt8]]

        public static func directory(_ path: String) -> Item {
            Item(path: path, kind: .directory, size: 0, chunkHashes: [])
        }

        public static func file(_ path: String, size: UInt64, chunkHashes: [[UInt8]]) -> Item {
            Item(path: path, kind: .file, size: size, chunkHashes: chunkHashes)
        }
    }

    /// One folder or file of the share, read out of the manifest's bytes when asked for.
    public struct Entry: Equatable, Sendable {
        public var path: String
        public var kind: Kind
        public var size: UInt64
        /// The share-wide index of its first chunk, and how many it has (0 for folders and
        /// empty files).
        public var firstChunk: Int
        public var chunkCount: Int
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

    public static let magic: [UInt8] = Array("PSM3".utf8)
    public static let minChunkSize = 64 * 1024
    public static let maxChunkSize = 4 * 1024 * 1024
    /// A manifest must fit in one IPC frame and one peer frame.
    public static let maxEncodedSize = 16 * 1024 * 1024
    public static let maxEntries = 1_000_000
    /// 1 PiB: far beyond any real share, small enough that sizes never overflow.
    public static let maxFileSize: UInt64 = 1 << 50

    /// Where one entry lies in `bytes`: 12 bytes per entry, however long its path. The
    /// manifest is kept as its own canonical encoding plus these, so a share of 100,000
    /// files costs every process that holds it the encoding (about 65 bytes a file) and
    /// 16 bytes a file more, not a string, a root and an array of arrays per file.
    struct EntryRecord: Sendable {
        /// Offset of the path's first byte (after its u16 length).
        var pathStart: UInt32
        var pathLength: UInt16
        var kind: Kind
        var firstChunk: UInt32
    }

    public let chunkSize: Int
    /// The canonical encoding (docs/PROTOCOL.md §3): what the share id hashes.
    private let bytes: [UInt8]
    private let records: [EntryRecord]
    /// Global chunk index -> the entry it belongs to; files are chunked one after another in
    /// entry order.
    private let chunkEntries: [UInt32]
    public let totalBytes: UInt64
    /// The longest chunk (at most `chunkSize`; in a folder of small files, the largest file):
    /// what a buffer for any one chunk must hold.
    public let largestChunkLength: Int

    /// The encoding of a manifest of these items, unchecked: `decode` is what checks it (tests
    /// build broken ones on purpose; the simulator builds its share so).
    public static func encoding(chunkSize: Int, entries items: [Item]) -> [UInt8] {
        var writer = Writer(chunkSize: chunkSize, entryCount: items.count)
        for item in items {
            if item.kind == .file {
                writer.addFile(item.path, size: item.size, chunkHashes: item.chunkHashes.flatMap { $0 })
            } else {
                writer.addDirectory(item.path)
            }
        }
        return writer.encoded
    }

    /// Writes a manifest entry by entry, straight into its encoding: a share of 100,000
    /// files is made without 100,000 items held on the side.
    public struct Writer {
        private var writer: ByteWriter
        private let chunkSize: Int

        /// `expectedBytes`: the encoding's size if known (else a guess from the entry count):
        /// reserved at once, so a 6.5 MB manifest is never copied to grow.
        public init(chunkSize: Int, entryCount: Int, expectedBytes: Int? = nil) {
            self.chunkSize = chunkSize
            writer = ByteWriter(capacity: expectedBytes ?? (12 + entryCount * 64))
            writer.raw(Manifest.magic)
            writer.u32(UInt32(chunkSize))
            writer.u32(UInt32(entryCount))
        }

        public var encodedSize: Int { writer.bytes.count }

        public mutating func addDirectory(_ path: String) {
            writer.u8(Kind.directory.rawValue)
            writer.string(path)
        }

        /// `chunkHashes`: the file's chunk hashes laid end to end, 32 bytes each.
        public mutating func addFile(_ path: String, size: UInt64, chunkHashes: [UInt8]) {
            writer.u8(Kind.file.rawValue)
            writer.string(path)
            writer.u64(size)
            writer.raw(chunkHashes)
        }

        /// The bytes written so far.
        public var encoded: [UInt8] { writer.bytes }

        /// The manifest, checked as every peer will check it.
        public func validatedManifest() throws -> Manifest { try Manifest.decode(writer.bytes) }
    }

    private init(
        chunkSize: Int, bytes: [UInt8], records: [EntryRecord], chunkEntries: [UInt32], totalBytes: UInt64,
        largestChunkLength: Int
    ) {
        self.chunkSize = chunkSize
        self.bytes = bytes
        self.records = records
        self.chunkEntries = chunkEntries
        self.totalBytes = totalBytes
        self.largestChunkLength = largestChunkLength
    }

    /// Two manifests are equal when their canonical bytes are.
    public static func == (lhs: Manifest, rhs: Manifest) -> Bool { lhs.bytes == rhs.bytes }

    public var chunkCount: Int { chunkEntries.count }
    public var entryCount: Int { records.count }

    /// The entries, each read out of the bytes when accessed.
    public var entries: Entries { Entries(manifest: self) }

    public struct Entries: RandomAccessCollection, Sendable {
        let manifest: Manifest
        public var startIndex: Int { 0 }
        public var endIndex: Int { manifest.records.count }
        public subscript(index: Int) -> Entry { manifest.entry(index) }
    }

    public func entry(_ index: Int) -> Entry {
        let record = records[index]
        let size = self.size(ofEntry: index)
        let count = record.kind == .file ? Int((size + UInt64(chunkSize) - 1) / UInt64(chunkSize)) : 0
        return Entry(
            path: path(ofEntry: index), kind: record.kind, size: size, firstChunk: Int(record.firstChunk),
            chunkCount: count)
    }

    public func kind(ofEntry index: Int) -> Kind { records[index].kind }

    /// The entry's path (validated by `decode`: relative, no `..`, valid UTF-8).
    public func path(ofEntry index: Int) -> String {
        let record = records[index]
        let start = Int(record.pathStart)
        return String(decoding: bytes[start..<start + Int(record.pathLength)], as: UTF8.self)
    }

    public func size(ofEntry index: Int) -> UInt64 {
        let record = records[index]
        guard record.kind == .file else { return 0 }
        // Read in place (asked once per chunk verified, by the supervisor and the workers).
        let start = Int(record.pathStart) + Int(record.pathLength)
        guard start >= 0, start + 8 <= bytes.count else { return 0 }
        return bytes.withUnsafeBytes { UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: start, as: UInt64.self)) }
    }

    /// Chunk index -> where it lives.
    public var chunkLocations: ChunkLocations { ChunkLocations(manifest: self) }

    public struct ChunkLocations: RandomAccessCollection, Sendable {
        let manifest: Manifest
        public var startIndex: Int { 0 }
        public var endIndex: Int { manifest.chunkEntries.count }
        public subscript(index: Int) -> ChunkLocation { manifest.location(ofChunk: index) }
    }

    public func location(ofChunk index: Int) -> ChunkLocation {
        let entryIndex = Int(chunkEntries[index])
        let offset = UInt64(index - Int(records[entryIndex].firstChunk)) * UInt64(chunkSize)
        let length = Int(min(UInt64(chunkSize), size(ofEntry: entryIndex) - offset))
        return ChunkLocation(entryIndex: entryIndex, offset: offset, length: length)
    }

    /// The single top-level name every path starts with (the shared file or folder).
    public var rootName: String {
        guard !records.isEmpty else { return "" }
        return path(ofEntry: 0).split(separator: "/", maxSplits: 1).first.map(String.init) ?? ""
    }

    /// The hash (`ChunkHash`, BLAKE3) the chunk must have: 32 bytes of the manifest, not a copy.
    public func expectedHash(ofChunk index: Int) -> ArraySlice<UInt8> {
        let entryIndex = Int(chunkEntries[index])
        let record = records[entryIndex]
        // path, size (8), then the entry's chunk hashes in order.
        let hashes = Int(record.pathStart) + Int(record.pathLength) + 8
        let start = hashes + (index - Int(record.firstChunk)) * ChunkHash.byteCount
        return bytes[start..<start + ChunkHash.byteCount]
    }

    /// Whether `hash` is the one the manifest lists for chunk `index`.
    public func isExpected(_ hash: [UInt8], ofChunk index: Int) -> Bool {
        index >= 0 && index < chunkCount && expectedHash(ofChunk: index).elementsEqual(hash)
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

    /// The canonical bytes (the same storage, not a copy).
    public func encoded() -> [UInt8] { bytes }

    /// Decodes and fully validates a manifest received from anyone. Every count is checked
    /// against the bytes actually present before anything is allocated for it.
    public static func decode(_ bytes: [UInt8]) throws -> Manifest {
        if bytes.count > maxEncodedSize {
            throw DecodeError.tooLarge(what: "manifest", length: bytes.count, limit: maxEncodedSize)
        }
        return try Manifest(indexing: bytes, validate: true)
    }

    /// The share's name and size, read out of a manifest's structure without checking its
    /// rules (names, the tree): for a manifest someone else checks, shown to the user
    /// (print the name inert). `share`'s supervisor uses it on what its hash worker made and
    /// checked; a full `decode` of 100,000 files there held the link back by a tenth of a second.
    public static func summary(of bytes: [UInt8]) throws -> (rootName: String, totalBytes: UInt64) {
        if bytes.count > maxEncodedSize {
            throw DecodeError.tooLarge(what: "manifest", length: bytes.count, limit: maxEncodedSize)
        }
        let indexed = try Manifest(indexing: bytes, validate: false)
        return (indexed.rootName, indexed.totalBytes)
    }

    /// Reads the entries' places out of `bytes`; with `validate`, checks everything a peer
    /// could get wrong: counts, sizes, UTF-8 and the path rules.
    private init(indexing bytes: [UInt8], validate: Bool) throws {
        var reader = ByteReader(bytes)
        let magic = try reader.raw(4)
        guard magic == Manifest.magic else {
            // PSM1 carried a Merkle root per file, which every decoder recomputed from the
            // chunk hashes beside it: 32 bytes a file that committed to nothing more. PSM2's
            // chunk hashes were SHA-256s; PSM3's are BLAKE3s, a quarter of the CPU.
            for older in ["PSM1", "PSM2"] where magic == Array(older.utf8) {
                throw DecodeError.invalid("a manifest of an older PeerShare (format \(older))")
            }
            throw DecodeError.invalid("not a PeerShare manifest")
        }
        let chunkSize = Int(try reader.u32())
        guard chunkSize >= Manifest.minChunkSize, chunkSize <= Manifest.maxChunkSize, chunkSize & (chunkSize - 1) == 0
        else {
            throw DecodeError.invalid("chunk size \(chunkSize) is not a power of two in 64 KiB...4 MiB")
        }
        let entryCount = Int(try reader.u32())
        // Each entry takes at least 3 bytes, so a count beyond that is a lie.
        guard entryCount <= Manifest.maxEntries, entryCount * 3 <= reader.remaining else {
            throw DecodeError.invalid("entry count \(entryCount) does not fit the manifest")
        }
        var records: [EntryRecord] = []
        records.reserveCapacity(entryCount)
        var chunkEntries: [UInt32] = []
        var totalBytes: UInt64 = 0
        var largestChunkLength = 0
        for entryIndex in 0..<entryCount {
            guard let kind = Kind(rawValue: try reader.u8()) else {
                throw DecodeError.invalid("unknown entry kind")
            }
            let pathLength = Int(try reader.u16())
            let pathStart = reader.offset
            _ = try reader.skip(pathLength)
            records.append(
                EntryRecord(
                    pathStart: UInt32(pathStart), pathLength: UInt16(pathLength), kind: kind,
                    firstChunk: UInt32(chunkEntries.count)))
            guard kind == .file else { continue }
            let size = try reader.u64()
            guard size <= Manifest.maxFileSize else { throw DecodeError.invalid("file size \(size) too large") }
            let count = Int((size + UInt64(chunkSize) - 1) / UInt64(chunkSize))
            guard count * 32 <= reader.remaining else {
                throw DecodeError.truncated(needed: count * 32, available: reader.remaining)
            }
            _ = try reader.skip(count * 32)
            chunkEntries.append(contentsOf: repeatElement(UInt32(entryIndex), count: count))
            totalBytes += size
            largestChunkLength = max(largestChunkLength, Int(min(size, UInt64(chunkSize))))
        }
        try reader.expectEnd()
        if validate {
            try SharePath.validateTree(PathTable(bytes: bytes, records: records))
        }
        self.init(
            chunkSize: chunkSize, bytes: bytes, records: records, chunkEntries: chunkEntries, totalBytes: totalBytes,
            largestChunkLength: largestChunkLength)
    }
}

/// The paths of a manifest as slices of one buffer, with whether each is a folder: what the
/// tree rules are checked on, without a string per path.
struct PathTable {
    let bytes: [UInt8]
    let ranges: [(start: Int, length: Int, isDirectory: Bool)]

    init(bytes: [UInt8], records: [Manifest.EntryRecord]) {
        self.bytes = bytes
        ranges = records.map { (Int($0.pathStart), Int($0.pathLength), $0.kind == .directory) }
    }

    init(_ paths: [(path: String, isDirectory: Bool)]) {
        var bytes: [UInt8] = []
        var ranges: [(start: Int, length: Int, isDirectory: Bool)] = []
        for (path, isDirectory) in paths {
            ranges.append((bytes.count, path.utf8.count, isDirectory))
            bytes.append(contentsOf: path.utf8)
        }
        self.bytes = bytes
        self.ranges = ranges
    }

    func path(_ index: Int) -> ArraySlice<UInt8> {
        let range = ranges[index]
        return bytes[range.start..<range.start + range.length]
    }
}

/// Rules for paths inside a manifest. They come from peers, so they are hostile until
/// proven otherwise: relative, '/'-separated, no '.', '..' or empty components, no NUL or
/// backslash, one common top-level name, no file that is also another entry's parent.
public enum SharePath {
    public static let maxLength = 4096
    public static let maxComponentLength = 255

    public static func validate(_ path: String) throws {
        try validate(bytes: Array(path.utf8)[...])
    }

    /// The rules on a path's UTF-8 bytes (as they lie in a manifest): no string is made for
    /// a path that passes.
    static func validate(bytes utf8: ArraySlice<UInt8>) throws {
        func shown() -> String { String(decoding: utf8, as: UTF8.self) }
        guard !utf8.isEmpty else { throw DecodeError.invalid("empty path") }
        guard utf8.count <= maxLength else { throw DecodeError.invalid("path longer than \(maxLength) bytes") }
        guard utf8.first != UInt8(ascii: "/") else { throw DecodeError.invalid("absolute path '\(shown())'") }
        var componentStart = utf8.startIndex
        var allASCII = true
        for index in utf8.indices {
            let byte = utf8[index]
            if byte == 0 || byte == UInt8(ascii: "\\") {
                throw DecodeError.invalid("path '\(shown())' contains NUL or backslash")
            }
            if byte >= 0x80 { allASCII = false }
            if byte == UInt8(ascii: "/") {
                try validate(component: utf8[componentStart..<index], of: shown)
                componentStart = index + 1
            }
        }
        try validate(component: utf8[componentStart...], of: shown)
        // Paths become file names: they must be text. ASCII is; anything else is checked.
        if !allASCII, String(validating: utf8, as: UTF8.self) == nil {
            throw DecodeError.invalid("string is not valid UTF-8")
        }
    }

    private static func validate(component: ArraySlice<UInt8>, of path: () -> String) throws {
        if component.isEmpty { throw DecodeError.invalid("path '\(path())' has an empty component") }
        if component.count <= 2, component.allSatisfy({ $0 == UInt8(ascii: ".") }) {
            throw DecodeError.invalid("path '\(path())' contains '\(String(decoding: component, as: UTF8.self))'")
        }
        if component.count > maxComponentLength {
            throw DecodeError.invalid("path component longer than \(maxComponentLength) bytes")
        }
    }

    public static func validateTree(_ paths: [(path: String, isDirectory: Bool)]) throws {
        try validateTree(PathTable(paths))
    }

    /// Every path valid, one top-level name, no duplicates, no file that is another entry's
    /// folder, every entry's folder listed. Checked on the paths sorted bytewise (an index
    /// array, not a set of strings): duplicates are then neighbours, and everything under
    /// "f/" starts where "f/" would. Paths are compared in place with `memcmp`: every process
    /// that reads a manifest of 100,000 files runs this, and comparing byte slices one
    /// element at a time made it a tenth of a downloading transfer worker's instructions.
    static func validateTree(_ table: PathTable) throws {
        guard !table.ranges.isEmpty else { throw DecodeError.invalid("manifest has no entries") }
        for index in table.ranges.indices { try validate(bytes: table.path(index)) }
        let ranges = table.ranges
        func shown(_ index: Int) -> String { String(decoding: table.path(index), as: UTF8.self) }
        try table.bytes.withUnsafeBufferPointer { buffer in
            // Every path was validated above: non-empty and inside `bytes`.
            guard let base = buffer.baseAddress else { throw DecodeError.invalid("manifest has no paths") }
            let slash = UInt8(ascii: "/")
            /// How `a` (start, length) sorts against `b`: negative, zero or positive.
            func order(_ a: (start: Int, length: Int), _ b: (start: Int, length: Int)) -> Int {
                let common = memcmp(base + a.start, base + b.start, min(a.length, b.length))
                return common != 0 ? Int(common) : a.length - b.length
            }
            func path(_ index: Int) -> (start: Int, length: Int) { (ranges[index].start, ranges[index].length) }
            func topLength(_ path: (start: Int, length: Int)) -> Int {
                UnsafeBufferPointer(start: base + path.start, count: path.length).firstIndex(of: slash) ?? path.length
            }
            /// The first position in `sorted` whose entry `before` is false for (a binary search:
            /// the entries it holds for come first).
            func firstPosition(in sorted: [Int], where before: (Int) -> Bool) -> Int {
                var low = 0
                var high = sorted.count
                while low < high {
                    let middle = (low + high) / 2
                    if before(sorted[middle]) { low = middle + 1 } else { high = middle }
                }
                return low
            }

            let root = (start: ranges[0].start, length: topLength(path(0)))
            for index in ranges.indices {
                let entry = path(index)
                guard topLength(entry) == root.length, order((entry.start, root.length), root) == 0 else {
                    throw DecodeError.invalid("paths have more than one top-level name")
                }
            }
            let sorted = ranges.indices.sorted { order(path($0), path($1)) < 0 }
            for position in sorted.indices.dropFirst()
            where order(path(sorted[position - 1]), path(sorted[position])) == 0 {
                throw DecodeError.invalid("duplicate path '\(shown(sorted[position]))'")
            }
            for index in ranges.indices where !ranges[index].isDirectory {
                let file = path(index)
                // The first path not below "file/" in byte order (compared without building
                // "file/"); if it starts with "file/", the file is someone's folder.
                let low = firstPosition(in: sorted) { other in
                    let candidate = path(other)
                    let common = memcmp(base + candidate.start, base + file.start, min(candidate.length, file.length))
                    if common != 0 { return common < 0 }
                    return candidate.length <= file.length || base[candidate.start + file.length] < slash
                }
                if low < sorted.count {
                    let candidate = path(sorted[low])
                    if candidate.length > file.length,
                        memcmp(base + candidate.start, base + file.start, file.length) == 0,
                        base[candidate.start + file.length] == slash
                    {
                        throw DecodeError.invalid("'\(shown(index))' is both a file and a folder")
                    }
                }
            }
            // Every entry but the root is inside a folder the manifest lists: a downloader makes
            // the folders from their entries, and "a/b" with no "a" would fail half-way there.
            for index in ranges.indices {
                let entry = path(index)
                let bytes = UnsafeBufferPointer(start: base + entry.start, count: entry.length)
                guard let last = bytes.lastIndex(of: slash) else { continue }
                let parent = (start: entry.start, length: last)
                let low = firstPosition(in: sorted) { order(path($0), parent) < 0 }
                guard low < sorted.count, order(path(sorted[low]), parent) == 0, ranges[sorted[low]].isDirectory else {
                    throw DecodeError.invalid("'\(shown(index))' is in a folder the manifest does not list")
                }
            }
        }
    }
}
