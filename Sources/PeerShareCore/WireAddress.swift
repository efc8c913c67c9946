import Wire

/// An address on the wire: family u8 (4 or 6) ‖ 4 or 16 address bytes ‖ port u16.
public struct WireAddress: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var ip: [UInt8]
    public var port: UInt16

    public init?(ip: [UInt8], port: UInt16) {
        guard ip.count == 4 || ip.count == 16 else { return nil }
        self.ip = ip
        self.port = port
    }

    public init(reader r: inout ByteReader) throws {
        let family = try r.u8()
        guard family == 4 || family == 6 else { throw DecodeError.invalid("unknown address family \(family)") }
        ip = try r.raw(family == 4 ? 4 : 16)
        port = try r.u16()
    }

    public func write(into w: inout ByteWriter) {
        w.u8(ip.count == 4 ? 4 : 6)
        w.raw(ip)
        w.u16(port)
    }

    public var peerAddress: PeerAddress { PeerAddress(host: IPText.format(ip), port: Int(port)) }
    public var description: String { peerAddress.description }
}

/// Numeric IP addresses as text and back (IPv4 dotted quads, IPv6 in full groups).
public enum IPText {
    public static func format(_ bytes: [UInt8]) -> String {
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        var groups: [String] = []
        var i = 0
        while i + 1 < bytes.count {
            groups.append(String(UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1]), radix: 16))
            i += 2
        }
        return groups.joined(separator: ":")
    }

    /// IPv4 only (what the relay messages carry on this release); nil for anything else.
    public static func parseIPv4(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isNumber), let value = UInt8(part) else {
                return nil
            }
            bytes.append(value)
        }
        return bytes
    }
}
