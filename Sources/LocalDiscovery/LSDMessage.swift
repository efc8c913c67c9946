/// One BEP 14 (Local Service Discovery) announce, the text datagram peers on a LAN multicast
/// to say "I take part in these swarms, on this TCP port":
///
///     BT-SEARCH * HTTP/1.1\r\n
///     Host: 239.192.152.143:6771\r\n
///     Port: 4000\r\n
///     Infohash: 0123456789abcdef0123456789abcdef01234567\r\n
///     cookie: 5f2a9c01\r\n
///     \r\n
///     \r\n
///
/// PeerShare announces a share's DHT key (`DHTKey.forShare`, already public in the DHT) as the
/// infohash. `Port: 0` is PeerShare's "looking, not serving": a downloader that takes no
/// connections still asks, and is never handed out as a peer. The cookie tells our own
/// announces, looped back to us, from others'.
public struct LSDMessage: Equatable, Sendable {
    public var port: UInt16
    /// 20-byte keys, at most `maxKeys`.
    public var keys: [[UInt8]]
    public var cookie: String?

    /// A datagram longer than this is not an announce (BEP 14's fit in one Ethernet frame).
    public static let maxDatagram = 1400
    public static let maxKeys = 16
    static let maxCookie = 64
    static let requestLine = "BT-SEARCH * HTTP/1.1"

    public init(port: UInt16, keys: [[UInt8]], cookie: String?) {
        self.port = port
        self.keys = keys
        self.cookie = cookie
    }

    public func encoded(host: String) -> [UInt8] {
        var text = "\(LSDMessage.requestLine)\r\nHost: \(host)\r\nPort: \(port)\r\n"
        for key in keys.prefix(LSDMessage.maxKeys) { text += "Infohash: \(hex(key))\r\n" }
        if let cookie { text += "cookie: \(cookie)\r\n" }
        text += "\r\n\r\n"
        return Array(text.utf8)
    }

    public enum ParseError: Error, Equatable {
        case tooLong, notAnAnnounce, badPort, badInfohash, tooManyKeys, noKey, badCookie
    }

    /// Parses a datagram from anyone on the LAN. Strict where it matters (the request line, the
    /// port, 40 hex digits per key, sizes), lenient where BEP 14 clients differ (header case,
    /// unknown headers, a missing cookie, LF or CRLF).
    public init(datagram: [UInt8]) throws(ParseError) {
        guard datagram.count <= LSDMessage.maxDatagram else { throw .tooLong }
        guard String(validating: datagram, as: UTF8.self) != nil else { throw .notAnAnnounce }
        // Lines split on LF bytes (a String would keep CRLF as one Character), CR dropped.
        var lines: [Substring] = datagram.split(separator: 0x0A, omittingEmptySubsequences: false).map { line in
            let bytes = line.last == 0x0D ? line.dropLast() : line
            return Substring(decoding: bytes, as: UTF8.self)
        }
        guard let first = lines.first, first == LSDMessage.requestLine else { throw .notAnAnnounce }
        lines.removeFirst()
        var port: UInt16?
        var keys: [[UInt8]] = []
        var cookie: String?
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingSpaces()
            switch name {
            case "port":
                guard value.count <= 5, value.allSatisfy(\.isASCIIDigit), let number = UInt16(value) else {
                    throw .badPort
                }
                port = number
            case "infohash":
                guard let key = LSDMessage.key(hex: value) else { throw .badInfohash }
                guard keys.count < LSDMessage.maxKeys else { throw .tooManyKeys }
                keys.append(key)
            case "cookie":
                guard value.count <= LSDMessage.maxCookie, value.allSatisfy({ $0.isASCII && !$0.isASCIIControl })
                else { throw .badCookie }
                cookie = String(value)
            default:
                continue
            }
        }
        guard let port else { throw .badPort }
        guard !keys.isEmpty else { throw .noKey }
        self.init(port: port, keys: keys, cookie: cookie)
    }

    static func key(hex text: Substring) -> [UInt8]? {
        guard text.utf8.count == 40 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(20)
        var high: UInt8?
        for c in text.utf8 {
            let nibble: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = c - UInt8(ascii: "A") + 10
            default: return nil
            }
            if let h = high {
                bytes.append(h << 4 | nibble)
                high = nil
            } else {
                high = nibble
            }
        }
        return bytes
    }
}

func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0xF)])
    }
    return String(decoding: out, as: UTF8.self)
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var s = self
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return s
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
    var isASCIIControl: Bool { asciiValue.map { $0 < 0x20 || $0 == 0x7F } ?? false }
}
