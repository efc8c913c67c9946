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
