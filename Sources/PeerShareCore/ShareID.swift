import CBLAKE3
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

/// The hash of one chunk: BLAKE3 (32 bytes), the official C code with the widest SIMD
/// the CPU has (AVX-512 here: about 7 GB/s on one core, against SHA-256's 1.7 with the CPU's
/// SHA extensions). Every chunk is hashed twice in a transfer, once by the sharer and once
/// by each downloader, so this is most of the CPU a verified transfer costs
/// (docs/ARCHITECTURE.md, "Why BLAKE3").
public enum ChunkHash {
    public static let byteCount = 32

    public static func of(_ data: UnsafeRawBufferPointer) -> [UInt8] {
        _ = cpuFeaturesDetected
        var hasher = blake3_hasher()
        blake3_hasher_init(&hasher)
        if let base = data.baseAddress { blake3_hasher_update(&hasher, base, data.count) }
        return [UInt8](unsafeUninitializedCapacity: byteCount) { digest, count in
            blake3_hasher_finalize(&hasher, digest.baseAddress, byteCount)
            count = byteCount
        }
    }

    public static func of(_ data: [UInt8]) -> [UInt8] {
        data.withUnsafeBytes { of($0) }
    }

    /// BLAKE3's C code finds the CPU's SIMD on its first hash and keeps it in a plain global
    /// (`g_cpu_features` in blake3_dispatch.c, not atomic in 1.3.1): `share` hashes on several
    /// threads at once, whose first hashes would all write it. A Swift `static let` runs its
    /// initialiser once, before any other thread gets past it, so that first hash is this one
    /// and every later call only reads the global.
    private static let cpuFeaturesDetected: Void = {
        var hasher = blake3_hasher()
        blake3_hasher_init(&hasher)
        blake3_hasher_update(&hasher, [UInt8](repeating: 0, count: 1024), 1024)
    }()
}
