import Crypto
import PeerShareCore

/// A 160-bit Kademlia identifier: node ids and info-hashes live in the same space, and
/// "distance" is their XOR read as an unsigned integer (BEP 5).
public struct NodeID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public static let byteCount = 20
    public let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == NodeID.byteCount else { return nil }
        self.bytes = bytes
    }

    public init?(hex: String) {
        var out: [UInt8] = []
        var chars = Array(hex.utf8)
        guard chars.count == 40 else { return nil }
        while !chars.isEmpty {
            guard let byte = UInt8(String(decoding: chars.prefix(2), as: UTF8.self), radix: 16) else { return nil }
            out.append(byte)
            chars.removeFirst(2)
        }
        self.bytes = out
    }

    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> NodeID {
        NodeID(unchecked: (0..<byteCount).map { _ in UInt8.random(in: 0...255, using: &generator) })
    }

    init(unchecked bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// The DHT key a PeerShare share is announced under (`DHTKey.forShare`).
    public static func shareKey(shareID: [UInt8]) -> NodeID { NodeID(unchecked: DHTKey.forShare(bytes: shareID)) }

    public var hex: String { bytes.map { String($0, radix: 16).leftPadded(to: 2) }.joined() }
    public var description: String { String(hex.prefix(8)) }

    public func distance(to other: NodeID) -> NodeID {
        NodeID(unchecked: zip(bytes, other.bytes).map { $0 ^ $1 })
    }

    /// Number of leading bits this id shares with `other` (160 when equal).
    public func commonPrefixLength(with other: NodeID) -> Int {
        for index in 0..<NodeID.byteCount {
            let x = bytes[index] ^ other.bytes[index]
            if x != 0 { return index * 8 + x.leadingZeroBitCount }
        }
        return 160
    }

    /// log2 of the XOR distance, as a small number for people: 160 - common prefix length.
    public func log2Distance(to other: NodeID) -> Int { 160 - commonPrefixLength(with: other) }

    public static func < (lhs: NodeID, rhs: NodeID) -> Bool { lhs.bytes.lexicographicallyPrecedes(rhs.bytes) }

    /// A random id whose first `prefixLength` bits equal ours: a target inside one bucket.
    public func randomID<G: RandomNumberGenerator>(sharingPrefix prefixLength: Int, using generator: inout G)
        -> NodeID
    {
        var out = NodeID.random(using: &generator).bytes
        for bit in 0..<min(prefixLength, 160) {
            let mask = UInt8(0x80) >> UInt8(bit % 8)
            out[bit / 8] = (out[bit / 8] & ~mask) | (bytes[bit / 8] & mask)
        }
        if prefixLength < 160 {
            // Flip the next bit so the id falls in the bucket at exactly this prefix length.
            let bit = prefixLength
            let mask = UInt8(0x80) >> UInt8(bit % 8)
            out[bit / 8] = (out[bit / 8] & ~mask) | (~bytes[bit / 8] & mask)
        }
        return NodeID(unchecked: out)
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// An IPv4 UDP/TCP endpoint, as BEP 5's compact formats carry it.
public struct NodeAddress: Hashable, Sendable, CustomStringConvertible {
    public var ip: UInt32
    public var port: UInt16

    public init(ip: UInt32, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            return nil
        }
        let octets = text[..<colon].split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var ip: UInt32 = 0
        for octet in octets {
            guard let value = UInt8(octet) else { return nil }
            ip = ip << 8 | UInt32(value)
        }
        self.init(ip: ip, port: port)
    }

    public var host: String {
        "\(ip >> 24).\((ip >> 16) & 0xff).\((ip >> 8) & 0xff).\(ip & 0xff)"
    }

    public var description: String { "\(host):\(port)" }

    /// 6 bytes: IPv4 address then port, network order ("compact peer info").
    public var compact: [UInt8] {
        [
            UInt8(ip >> 24), UInt8((ip >> 16) & 0xff), UInt8((ip >> 8) & 0xff), UInt8(ip & 0xff),
            UInt8(port >> 8), UInt8(port & 0xff),
        ]
    }

    public init?(compact bytes: ArraySlice<UInt8>) {
        guard bytes.count == 6 else { return nil }
        let b = Array(bytes)
        self.init(
            ip: UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3]),
            port: UInt16(b[4]) << 8 | UInt16(b[5]))
    }

    public var ipBytes: [UInt8] { Array(compact.prefix(4)) }
}

/// A node's id and address: 26 bytes in compact form ("compact node info").
public struct NodeInfo: Hashable, Sendable {
    public var id: NodeID
    public var address: NodeAddress

    public init(id: NodeID, address: NodeAddress) {
        self.id = id
        self.address = address
    }

    public var compact: [UInt8] { id.bytes + address.compact }

    /// Parses a run of 26-byte entries; a length that is not a multiple of 26 is invalid.
    public static func parseCompact(_ bytes: [UInt8]) -> [NodeInfo]? {
        guard bytes.count % 26 == 0 else { return nil }
        var out: [NodeInfo] = []
        var offset = 0
        while offset < bytes.count {
            guard let id = NodeID(bytes: Array(bytes[offset..<offset + 20])),
                let address = NodeAddress(compact: bytes[(offset + 20)..<(offset + 26)])
            else { return nil }
            out.append(NodeInfo(id: id, address: address))
            offset += 26
        }
        return out
    }
}
