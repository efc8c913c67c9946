/// Bencoding (BEP 3), the serialisation KRPC uses: integers `i42e`, byte strings `4:spam`,
/// lists `l...e` and dictionaries `d...e` with byte-string keys in sorted order.
///
/// The decoder is for untrusted UDP input: it bounds nesting depth and element counts and
/// reads lengths only against the bytes actually present, so no input makes it allocate
/// more than the packet's size or recurse without limit.
public indirect enum Bencode: Equatable, Sendable {
    case integer(Int64)
    case bytes([UInt8])
    case list([Bencode])
    case dictionary([[UInt8]: Bencode])

    public static func string(_ text: String) -> Bencode { .bytes(Array(text.utf8)) }

    public subscript(key: String) -> Bencode? {
        if case .dictionary(let entries) = self { return entries[Array(key.utf8)] }
        return nil
    }

    public var bytesValue: [UInt8]? {
        if case .bytes(let value) = self { return value }
        return nil
    }

    public var integerValue: Int64? {
        if case .integer(let value) = self { return value }
        return nil
    }

    public var listValue: [Bencode]? {
        if case .list(let value) = self { return value }
        return nil
    }

    // MARK: Encoding

    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }

    private func encode(into out: inout [UInt8]) {
        switch self {
        case .integer(let value):
            out.append(UInt8(ascii: "i"))
            out.append(contentsOf: Array(String(value).utf8))
            out.append(UInt8(ascii: "e"))
        case .bytes(let value):
            out.append(contentsOf: Array(String(value.count).utf8))
            out.append(UInt8(ascii: ":"))
            out.append(contentsOf: value)
        case .list(let items):
            out.append(UInt8(ascii: "l"))
            for item in items { item.encode(into: &out) }
            out.append(UInt8(ascii: "e"))
        case .dictionary(let entries):
            out.append(UInt8(ascii: "d"))
            for key in entries.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
                Bencode.bytes(key).encode(into: &out)
                entries[key]?.encode(into: &out)
            }
            out.append(UInt8(ascii: "e"))
        }
    }

    // MARK: Decoding

    public struct DecodeError: Error, Equatable, CustomStringConvertible {
        public var reason: String
        public var offset: Int
        public var description: String { "bencode: \(reason) at byte \(offset)" }
    }

    public static let maxDepth = 32
    public static let maxElements = 10_000

    /// Decodes exactly one value that spans the whole input.
    public static func decode(_ bytes: [UInt8]) throws -> Bencode {
        var parser = Parser(bytes: bytes)
        let value = try parser.value(depth: 0)
        guard parser.offset == bytes.count else {
            throw DecodeError(reason: "trailing bytes", offset: parser.offset)
        }
        return value
    }

    private struct Parser {
        let bytes: [UInt8]
        var offset = 0
        var elements = 0

        func fail(_ reason: String) -> DecodeError { DecodeError(reason: reason, offset: offset) }

        mutating func peek() throws -> UInt8 {
            guard offset < bytes.count else { throw fail("unexpected end") }
            return bytes[offset]
        }

        mutating func value(depth: Int) throws -> Bencode {
            guard depth <= Bencode.maxDepth else { throw fail("nested too deeply") }
            elements += 1
            guard elements <= Bencode.maxElements else { throw fail("too many elements") }
            switch try peek() {
            case UInt8(ascii: "i"):
                offset += 1
                let value = try integer(until: UInt8(ascii: "e"))
                return .integer(value)
            case UInt8(ascii: "l"):
                offset += 1
                var items: [Bencode] = []
                while try peek() != UInt8(ascii: "e") { items.append(try value(depth: depth + 1)) }
                offset += 1
                return .list(items)
            case UInt8(ascii: "d"):
                offset += 1
                var entries: [[UInt8]: Bencode] = [:]
                var previous: [UInt8]?
                while try peek() != UInt8(ascii: "e") {
                    guard case .bytes(let key) = try value(depth: depth + 1) else { throw fail("non-string key") }
                    if let previous, !previous.lexicographicallyPrecedes(key) {
                        throw fail("dictionary keys not sorted or repeated")
                    }
                    previous = key
                    entries[key] = try value(depth: depth + 1)
                }
                offset += 1
                return .dictionary(entries)
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                let length = try integer(until: UInt8(ascii: ":"))
                guard length >= 0, length <= Int64(bytes.count - offset) else {
                    throw fail("string length beyond input")
                }
                let start = offset
                offset += Int(length)
                return .bytes(Array(bytes[start..<offset]))
            default:
                throw fail("unexpected byte \(bytes[offset])")
            }
        }

        /// Digits with an optional leading '-', up to `terminator`; no leading zeros, no "-0".
        mutating func integer(until terminator: UInt8) throws -> Int64 {
            let start = offset
            var negative = false
            if try peek() == UInt8(ascii: "-") {
                negative = true
                offset += 1
            }
            var value: Int64 = 0
            var digits = 0
            while try peek() != terminator {
                let byte = bytes[offset]
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { throw fail("bad digit") }
                let (shifted, overflow1) = value.multipliedReportingOverflow(by: 10)
                let (next, overflow2) = shifted.addingReportingOverflow(Int64(byte - UInt8(ascii: "0")))
                guard !overflow1, !overflow2 else { throw fail("integer overflow") }
                value = next
                digits += 1
                offset += 1
            }
            guard digits > 0 else { throw fail("empty integer") }
            if digits > 1 && bytes[negative ? start + 1 : start] == UInt8(ascii: "0") { throw fail("leading zero") }
            if negative && value == 0 { throw fail("negative zero") }
            offset += 1
            return negative ? -value : value
        }
    }
}
