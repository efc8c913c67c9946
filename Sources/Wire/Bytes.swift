/// Big-endian binary encoding helpers shared by every wire format in PeerShare.
///
/// `ByteReader` never traps on bad input: every read checks the remaining length first and
/// throws `DecodeError`, so a hostile peer or a corrupt pipe can only produce an error.

public enum DecodeError: Error, Equatable, CustomStringConvertible {
    case truncated(needed: Int, available: Int)
    case tooLarge(what: String, length: Int, limit: Int)
    case invalid(String)
    case trailingBytes(Int)

    public var description: String {
        switch self {
        case .truncated(let needed, let available):
            return "truncated: needed \(needed) bytes, \(available) available"
        case .tooLarge(let what, let length, let limit):
            return "\(what) of \(length) bytes exceeds the limit of \(limit)"
        case .invalid(let why): return why
        case .trailingBytes(let count): return "\(count) unexpected trailing bytes"
        }
    }
}

public struct ByteWriter: Sendable {
    /// What was written; with `keepingBlobsFrom`, less the blobs kept aside (see `parts`).
    public private(set) var bytes: [UInt8]
    /// Blobs of `keepBlobsFrom` bytes or more, kept by reference, and where in `bytes` they go.
    private var kept: [(at: Int, blob: [UInt8])] = []
    private let keepBlobsFrom: Int

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
        keepBlobsFrom = .max
    }

    /// A writer that does not copy byte arrays of `threshold` bytes or more passed to `blob`
    /// (a 6.5 MB manifest): they are written from where they are, by `forEachPart`, and
    /// `bytes` alone is not the encoding.
    public init(capacity: Int, keepingBlobsFrom threshold: Int) {
        bytes = []
        bytes.reserveCapacity(capacity)
        keepBlobsFrom = threshold
    }

    /// How many bytes the encoding has, kept blobs included.
    public var count: Int { kept.reduce(bytes.count) { $0 + $1.blob.count } }

    /// The encoding in order, a part at a time: `bytes` with the kept blobs in their places.
    public func forEachPart(_ body: (UnsafeRawBufferPointer) throws -> Void) rethrows {
        var from = 0
        try bytes.withUnsafeBytes { all in
            for (at, blob) in kept {
                try body(UnsafeRawBufferPointer(rebasing: all[from..<at]))
                try blob.withUnsafeBytes(body)
                from = at
            }
            try body(UnsafeRawBufferPointer(rebasing: all[from...]))
        }
    }

    /// A byte string with a 32-bit length prefix; large ones may be kept by reference.
    public mutating func blob(_ data: [UInt8]) {
        guard data.count >= keepBlobsFrom else { return blob(data[...]) }
        u32(UInt32(data.count))
        kept.append((bytes.count, data))
    }

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func u16(_ value: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: value >> 8))
        bytes.append(UInt8(truncatingIfNeeded: value))
    }
    public mutating func u32(_ value: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) {
            bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift)))
        }
    }
    public mutating func u64(_ value: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) {
            bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift)))
        }
    }
    public mutating func raw<C: Collection>(_ data: C) where C.Element == UInt8 {
        bytes.append(contentsOf: data)
    }
    /// A byte string with a 32-bit length prefix.
    public mutating func blob<C: Collection>(_ data: C) where C.Element == UInt8 {
        u32(UInt32(data.count))
        bytes.append(contentsOf: data)
    }
    /// A UTF-8 string with a 16-bit length prefix.
    public mutating func string(_ text: String) {
        let utf8 = Array(text.utf8.prefix(Int(UInt16.max)))
        u16(UInt16(utf8.count))
        bytes.append(contentsOf: utf8)
    }
    public mutating func bool(_ value: Bool) { u8(value ? 1 : 0) }
    /// Overwrites 4 bytes already written (a length prefix known only at the end).
    public mutating func patchU32(at offset: Int, _ value: UInt32) {
        for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> UInt32(24 - 8 * index)) }
    }
}

public struct ByteReader {
    private let bytes: [UInt8]
    public private(set) var offset: Int
    private let end: Int

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
        self.offset = 0
        self.end = bytes.count
    }

    public init(_ bytes: [UInt8], from start: Int) {
        self.bytes = bytes
        self.offset = min(max(0, start), bytes.count)
        self.end = bytes.count
    }

    public var remaining: Int { end - offset }

    private mutating func need(_ count: Int) throws {
        if count < 0 || count > remaining {
            throw DecodeError.truncated(needed: count, available: remaining)
        }
    }

    public mutating func u8() throws -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }
    public mutating func u16() throws -> UInt16 {
        try need(2)
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }
    public mutating func u32() throws -> UInt32 {
        try need(4)
        var value: UInt32 = 0
        for index in 0..<4 { value = value << 8 | UInt32(bytes[offset + index]) }
        offset += 4
        return value
    }
    public mutating func u64() throws -> UInt64 {
        try need(8)
        var value: UInt64 = 0
        for index in 0..<8 { value = value << 8 | UInt64(bytes[offset + index]) }
        offset += 8
        return value
    }
    public mutating func raw(_ count: Int) throws -> [UInt8] {
        try need(count)
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }
    /// Steps over `count` bytes (checked like any read); returns where they began.
    @discardableResult
    public mutating func skip(_ count: Int) throws -> Int {
        try need(count)
        defer { offset += count }
        return offset
    }
    /// A 32-bit length-prefixed byte string, refused before allocation when over `limit`.
    public mutating func blob(limit: Int, what: String = "field") throws -> [UInt8] {
        let length = Int(try u32())
        if length > limit { throw DecodeError.tooLarge(what: what, length: length, limit: limit) }
        return try raw(length)
    }
    public mutating func string() throws -> String {
        let length = Int(try u16())
        let utf8 = try raw(length)
        guard let text = String(validating: utf8, as: UTF8.self) else {
            throw DecodeError.invalid("string is not valid UTF-8")
        }
        return text
    }
    public mutating func bool() throws -> Bool {
        switch try u8() {
        case 0: return false
        case 1: return true
        case let other: throw DecodeError.invalid("boolean byte \(other)")
        }
    }
    public func expectEnd() throws {
        if remaining != 0 { throw DecodeError.trailingBytes(remaining) }
    }
}

extension Array where Element == UInt8 {
    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        text.reserveCapacity(count * 2)
        for byte in self {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    public init?(hex: String) {
        let utf8 = Array(hex.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(utf8.count / 2)
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var index = 0
        while index < utf8.count {
            guard let high = nibble(utf8[index]), let low = nibble(utf8[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        self = out
    }
}
