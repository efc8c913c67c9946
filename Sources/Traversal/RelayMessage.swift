import PeerShareCore
import Wire

/// The relay protocol (docs/PROTOCOL.md §4): framed like every PeerShare channel (`Frame`:
/// u32 length ‖ u16 type ‖ payload), small control frames until `bridged`, then the relay
/// copies bytes between the two ends of a circuit and reads none of them.
///
///     seeder ── register(key) ──────────▶ relay          (kept open: the relay's way back)
///     seeder ◀───────── registered(addr) ─ relay
///     downloader ── connect(key) ───────▶ relay
///     seeder ◀── incoming(circuit, addr) ─ relay
///     seeder ── attach(circuit) ────────▶ relay          (a second connection)
///     both   ◀───────────────── bridged ── relay         then: the peer protocol, end to end
///
/// With `punch` in `connect`, the relay first introduces the two ends instead of bridging:
///
///     downloader ◀── peer(circuit, seeder's addr) ── relay ── peer(circuit, downloader's
///                                                              addr, listen port) ──▶ seeder
///     both dial each other at once from the ports the relay saw (TCP simultaneous open),
///     and the seeder also dials the downloader's listening port (a reverse connection);
///     the downloader keeps the first connection that works and closes the relay connection,
///     or, after the punch window, says `relay` and the relay bridges as above.
///
/// `key` is the share's DHT key (20 bytes, public already); `circuit` 16 random bytes the
/// relay chose, so only the registrant it told can attach.
public enum RelayMessage: Equatable, Sendable {
    case register(key: [UInt8])
    case registered(observed: WireAddress)
    /// `listenPort`: where the downloader accepts peers (0: nowhere); `punch`: introduce
    /// before bridging.
    case connect(key: [UInt8], listenPort: UInt16, punch: Bool)
    case peer(circuit: [UInt8], observed: WireAddress, listenPort: UInt16)
    case relay
    case incoming(circuit: [UInt8], from: WireAddress)
    case attach(circuit: [UInt8])
    case bridged
    case refused(code: RefusalCode, text: String)

    public enum Tag: UInt16, CaseIterable, Sendable {
        case register = 0x6001, registered, connect, incoming, attach, bridged, refused, peer, relay
    }

    public enum RefusalCode: UInt16, Sendable {
        case unknownKey = 1
        case full = 2
        case badRequest = 3
        case timeout = 4
    }

    /// "PSRELAY1": opens register, connect and attach, so a stray client is refused at once.
    public static let magic: [UInt8] = Array("PSRELAY1".utf8)
    public static let keyBytes = 20
    public static let circuitBytes = 16
    /// No control frame is longer (the refusal text is cut to 200 bytes).
    public static let maxFrameLength = 256
    static let maxText = 200

    /// A refusal's text as it travels: at most `maxText` bytes of UTF-8, cut between scalars.
    /// Decoding goes through here too, because a relay's invalid UTF-8 becomes U+FFFD (three
    /// bytes each), so the text we decode can be longer than the bytes that carried it; cutting
    /// it the same way on both sides means what we decode we can send again unchanged.
    static func wireText(_ text: String) -> [UInt8] {
        let utf8 = Array(text.utf8)
        guard utf8.count > maxText else { return utf8 }
        var end = maxText
        while end > 0, utf8[end] & 0xC0 == 0x80 { end -= 1 }  // never split a scalar
        return Array(utf8[..<end])
    }

    public var tag: Tag {
        switch self {
        case .register: return .register
        case .registered: return .registered
        case .connect: return .connect
        case .incoming: return .incoming
        case .attach: return .attach
        case .bridged: return .bridged
        case .refused: return .refused
        case .peer: return .peer
        case .relay: return .relay
        }
    }

    public func frame() -> Frame {
        var w = ByteWriter(capacity: 48)
        switch self {
        case .register(let key):
            w.raw(RelayMessage.magic)
            w.raw(key)
        case .connect(let key, let listenPort, let punch):
            w.raw(RelayMessage.magic)
            w.raw(key)
            w.u16(listenPort)
            w.u8(punch ? 1 : 0)
        case .peer(let circuit, let observed, let listenPort):
            w.raw(circuit)
            observed.write(into: &w)
            w.u16(listenPort)
        case .relay: break
        case .registered(let observed): observed.write(into: &w)
        case .incoming(let circuit, let from):
            w.raw(circuit)
            from.write(into: &w)
        case .attach(let circuit):
            w.raw(RelayMessage.magic)
            w.raw(circuit)
        case .bridged: break
        case .refused(let code, let text):
            w.u16(code.rawValue)
            w.blob(RelayMessage.wireText(text))
        }
        return Frame(type: tag.rawValue, payload: w.bytes)
    }

    public init(frame: Frame) throws {
        guard let tag = Tag(rawValue: frame.type) else {
            throw DecodeError.invalid(String(format: "unknown relay message 0x%04x", frame.type))
        }
        var r = ByteReader(frame.payload)
        func magic() throws {
            guard try r.raw(RelayMessage.magic.count) == RelayMessage.magic else {
                throw DecodeError.invalid("not a PeerShare relay request")
            }
        }
        switch tag {
        case .register:
            try magic()
            self = .register(key: try r.raw(RelayMessage.keyBytes))
        case .connect:
            try magic()
            let key = try r.raw(RelayMessage.keyBytes)
            let port = try r.u16()
            let flags = try r.u8()
            guard flags <= 1 else { throw DecodeError.invalid("unknown connect flags") }
            self = .connect(key: key, listenPort: port, punch: flags == 1)
        case .peer:
            self = .peer(
                circuit: try r.raw(RelayMessage.circuitBytes), observed: try WireAddress(reader: &r),
                listenPort: try r.u16())
        case .relay: self = .relay
        case .registered: self = .registered(observed: try WireAddress(reader: &r))
        case .incoming:
            self = .incoming(circuit: try r.raw(RelayMessage.circuitBytes), from: try WireAddress(reader: &r))
        case .attach:
            try magic()
            self = .attach(circuit: try r.raw(RelayMessage.circuitBytes))
        case .bridged: self = .bridged
        case .refused:
            guard let code = RefusalCode(rawValue: try r.u16()) else { throw DecodeError.invalid("unknown refusal") }
            let text = try r.blob(limit: RelayMessage.maxText, what: "refusal text")
            let wire = RelayMessage.wireText(String(decoding: text, as: UTF8.self))
            self = .refused(code: code, text: String(decoding: wire, as: UTF8.self))
        }
        try r.expectEnd()
    }
}
