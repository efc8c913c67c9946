import PeerShareCore
import Wire

/// STUN (RFC 5389) binding requests and responses: what address and port a NAT gave the
/// socket a request left from. Only what address discovery needs: a Binding request with no
/// attributes, and a Binding success response's XOR-MAPPED-ADDRESS (or, from RFC 3489
/// servers, MAPPED-ADDRESS). Pure: bytes in, an answer or an error out.
///
///     0                   1                   2                   3
///     +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
///     |0 0|  message type (0x0001 request, 0x0101 success)  | length  |
///     |                 magic cookie 0x2112A442                       |
///     |                 transaction id (96 bits)                      |
///     |  attributes: type u16 ‖ length u16 ‖ value, padded to 4 bytes  |
public enum STUN {
    public static let magicCookie: UInt32 = 0x2112_A442
    public static let headerSize = 20
    public static let bindingRequest: UInt16 = 0x0001
    public static let bindingSuccess: UInt16 = 0x0101
    static let mappedAddress: UInt16 = 0x0001
    static let xorMappedAddress: UInt16 = 0x0020
    /// No response we accept is longer: an answer of a few attributes fits in far less.
    public static let maxMessage = 1024

    /// A Binding request with this transaction id (12 bytes).
    public static func request(transactionID: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: headerSize)
        w.u16(bindingRequest)
        w.u16(0)
        w.u32(magicCookie)
        w.raw(transactionID.prefix(12))
        return w.bytes
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var description: String
        init(_ text: String) { description = text }
    }

    /// The mapped address in a Binding success response to the request with `transactionID`.
    /// Anything else — another transaction, an error response, a truncated or oversized
    /// attribute, an address family we do not know — is an error, never a guess.
    public static func mappedAddress(in message: [UInt8], transactionID: [UInt8]) throws -> PeerAddress {
        guard message.count >= headerSize, message.count <= maxMessage else {
            throw ParseError("a STUN message is 20 to \(maxMessage) bytes, this one \(message.count)")
        }
        var r = ByteReader(message)
        let type = try r.u16()
        let length = Int(try r.u16())
        guard type == bindingSuccess else {
            throw ParseError(String(format: "not a binding success (type 0x%04x)", type))
        }
        guard try r.u32() == magicCookie else { throw ParseError("no magic cookie") }
        guard try r.raw(12) == transactionID else { throw ParseError("an answer to another transaction") }
        guard length == r.remaining, length % 4 == 0 else {
            throw ParseError("length field disagrees with the message")
        }
        var plain: PeerAddress?
        while r.remaining > 0 {
            let attribute = try r.u16()
            let valueLength = Int(try r.u16())
            let value = try r.raw(valueLength)
            _ = try r.raw((4 - valueLength % 4) % 4)
            switch attribute {
            case xorMappedAddress:
                return try address(value, xorWith: Array(message[4..<20]))
            case mappedAddress:
                plain = try address(value, xorWith: nil)
            default:
                continue
            }
        }
        guard let plain else { throw ParseError("no (XOR-)MAPPED-ADDRESS attribute") }
        return plain
    }

    /// family u8 after a zero byte, port u16, address; XOR'd with the cookie and transaction id.
    static func address(_ value: [UInt8], xorWith mask: [UInt8]?) throws -> PeerAddress {
        guard value.count == 8 || value.count == 20 else { throw ParseError("bad address attribute length") }
        let family = value[1]
        guard (family == 1 && value.count == 8) || (family == 2 && value.count == 20) else {
            throw ParseError("unknown address family \(family)")
        }
        var port = UInt16(value[2]) << 8 | UInt16(value[3])
        var bytes = Array(value[4...])
        if let mask {
            port ^= UInt16(mask[0]) << 8 | UInt16(mask[1])
            for i in bytes.indices { bytes[i] ^= mask[i] }
        }
        return PeerAddress(host: IPText.format(bytes), port: Int(port))
    }
}

/// How a NAT maps one local socket toward different destinations (RFC 4787's terms).
public enum MappingKind: UInt8, Sendable, CustomStringConvertible {
    /// Not enough answers to tell.
    case unknown = 0
    /// The same public address and port for every destination: punching can work.
    case endpointIndependent = 1
    /// A new port per destination (a "symmetric" NAT): only a relay, or the other side's
    /// open port, connects.
    case endpointDependent = 2
    /// The mapped address is our own: no NAT between us and the servers.
    case none = 3

    public var description: String {
        switch self {
        case .unknown: return "unknown (fewer than two STUN answers)"
        case .endpointIndependent: return "endpoint-independent (one public port for every destination)"
        case .endpointDependent: return "endpoint-dependent (a new public port per destination)"
        case .none: return "none (the public address is this machine's own)"
        }
    }

    /// From what servers at different addresses saw of one socket, and the socket's own
    /// address and port.
    public static func classify(observed: [PeerAddress], local: [String], localPort: Int) -> MappingKind {
        guard let first = observed.first else { return .unknown }
        if observed.allSatisfy({ local.contains($0.host) && $0.port == localPort }) { return .none }
        guard observed.count >= 2 else { return .unknown }
        return observed.allSatisfy { $0 == first } ? .endpointIndependent : .endpointDependent
    }
}
