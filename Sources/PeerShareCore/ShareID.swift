import Crypto
import Wire

/// A share's identity: the SHA-256 of its canonical manifest encoding (docs/PROTOCOL.md).
public struct ShareID: Hashable, Sendable, CustomStringConvertible {
    public static let byteCount = 32
    public let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == ShareID.byteCount else { return nil }
        self.bytes = bytes
    }

    public init?(hex: String) {
        guard let bytes = [UInt8](hex: hex) else { return nil }
        self.init(bytes: bytes)
    }

    /// The identity of a manifest, computed over its exact encoded bytes.
    public init(manifestBytes: [UInt8]) {
        self.bytes = Array(SHA256.hash(data: manifestBytes))
    }

    public var hex: String { bytes.hexString }
    public var description: String { hex }
    /// The first 8 hex digits: enough to tell shares apart in logs and file names.
    public var short: String { String(hex.prefix(8)) }
}

/// SHA-256 of one chunk; swift-crypto's BoringSSL core uses the CPU's SHA extensions.
public enum ChunkHash {
    public static let byteCount = 32

    public static func of(_ data: UnsafeRawBufferPointer) -> [UInt8] {
        Array(SHA256.hash(data: data))
    }

    public static func of(_ data: [UInt8]) -> [UInt8] {
        data.withUnsafeBytes { of($0) }
    }
}

/// A binary Merkle tree over a file's chunk hashes. Interior node = SHA-256(0x01 ‖ left ‖ right),
/// leaf = the chunk hash; an odd node at the end of a level is promoted unchanged. The root of
/// an empty file is SHA-256 of the empty string.
public enum MerkleTree {
    public static func root(of leaves: [[UInt8]]) -> [UInt8] {
        let concatenated = leaves.flatMap { $0 }
        return concatenated.withUnsafeBytes { root(ofConcatenated: $0) }
    }

    /// The root over leaves laid end to end (32 bytes each), as a manifest holds them. A
    /// single leaf is its own root, so a one-chunk file costs no hashing.
    public static func root(ofConcatenated leaves: UnsafeRawBufferPointer) -> [UInt8] {
        let size = ChunkHash.byteCount
        let count = leaves.count / size
        if count == 0 { return Array(SHA256.hash(data: [UInt8]())) }
        if count == 1 { return Array(leaves[0..<size]) }
        var level = Array(leaves[0..<count * size])
        var width = count
        while width > 1 {
            var next: [UInt8] = []
            next.reserveCapacity((width + 1) / 2 * size)
            var index = 0
            while index < width {
                if index + 1 < width {
                    var hasher = SHA256()
                    hasher.update(data: [0x01])
                    hasher.update(data: level[index * size..<(index + 2) * size])
                    next.append(contentsOf: hasher.finalize())
                } else {
                    next.append(contentsOf: level[index * size..<(index + 1) * size])
                }
                index += 2
            }
            level = next
            width = (width + 1) / 2
        }
        return level
    }
}
