import PeerShareCore
import Wire

/// What every message enum on a framed local channel has in common. There is one enum per
/// direction and channel, so a process can only say what its end of a channel may say, and
/// a frame from the wrong direction does not even decode (`DecodeError` "unknown message"):
///
/// | channel | → | ← |
/// |---|---|---|
/// | supervisor pipe (fd 3) | `WorkerCommand` (supervisor → worker) | `WorkerReport` (worker → supervisor) |
/// | data channel (fd 4) | `ChunkRequest` (transfer → hash) | `ChunkReply` (hash → transfer) |
/// | control socket | `ControlRequest` (client → supervisor) | `ControlReply` (supervisor → client) |
///
/// Every tag is an explicit number, fixed forever (docs/PROTOCOL.md §1). The supervisor pipe's
/// and the data channel's tags share one numbering, so a frame captured on either reads the
/// same way; which role may send or receive which of them is `WorkerRole`'s table.
public protocol ChannelMessage: Equatable, Sendable {
    associatedtype Tag: RawRepresentable, Hashable, Sendable, CaseIterable where Tag.RawValue == UInt16
    var tag: Tag { get }
    /// Decodes a payload (the bytes after the type). Unknown tags, short or long payloads and
    /// bad fields all throw.
    init(type: UInt16, reader: ByteReader) throws
    func writePayload(into w: inout ByteWriter)
    /// How many payload bytes to reserve (a chunk or a manifest is large).
    var payloadSizeHint: Int { get }
}

extension ChannelMessage {
    public var payloadSizeHint: Int { 64 }

    public func frame() -> Frame {
        var w = ByteWriter(capacity: payloadSizeHint)
        writePayload(into: &w)
        return Frame(type: tag.rawValue, payload: w.bytes)
    }

    /// The whole frame, header included, built with a single copy of any chunk data.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Frame.headerSize + payloadSizeHint)
        w.u32(0)
        w.u16(tag.rawValue)
        writePayload(into: &w)
        w.patchU32(at: 0, UInt32(w.bytes.count - 4))
        return w.bytes
    }

    public init(frame: Frame) throws {
        try self.init(type: frame.type, reader: ByteReader(frame.payload))
    }

    /// Decodes a frame body (type and payload, the bytes after the length) without copying it.
    public init(body: [UInt8]) throws {
        var reader = ByteReader(body)
        let type = try reader.u16()
        try self.init(type: type, reader: reader)
    }

    static func tag(_ type: UInt16) throws -> Tag {
        guard let tag = Tag(rawValue: type) else {
            throw DecodeError.invalid("unknown \(Self.self) type 0x\(String(type, radix: 16))")
        }
        return tag
    }
}

/// The limits and field readers every channel shares.
public enum IPCLimits {
    /// 2: chunk data moves on the transfer⇄hash data channel, not through the supervisor.
    /// 3: no secret reaches the transfer worker (tag key and public key in
    /// configurePipeline; sessionKeysRequest/sessionKeys for each encryption handshake).
    /// 4: NAT traversal (useRelays, relayRegistered, natProbe, natReport, relayStart,
    /// relayListening, mapPorts, portMapped, publicListenPort).
    /// 5: listenFailed (a failed listen is its own message, not a `failure` told apart by
    /// text); transferSettings (the transfer worker's settings come over the pipe, not as
    /// command-line arguments).
    /// 6: one message enum per direction and channel; the control socket has its own
    /// messages (`ControlRequest`, `ControlReply`) instead of borrowing the workers'.
    /// 7: `openShare` carries when its manifest was made (`hashedAt`).
    /// 8: chunk bytes lie in the shared chunk pool; the data channel names slots
    /// (`readChunk`, `writeChunk`, `chunkRead` carry no bytes).
    public static let protocolVersion: UInt16 = 8
    /// The largest frame on a supervisor pipe or the data channel: a full manifest plus headers.
    public static let maxFrameLength = Manifest.maxEncodedSize + 64 * 1024
    static let maxText = 64 * 1024
    static let maxList = 256
    static let maxData = Manifest.maxEncodedSize
}

extension ByteReader {
    /// Text in a 32-bit blob, at most 64 KiB, valid UTF-8.
    mutating func text() throws -> String {
        let bytes = try blob(limit: IPCLimits.maxText, what: "text")
        guard let string = String(validating: bytes, as: UTF8.self) else {
            throw DecodeError.invalid("text is not UTF-8")
        }
        return string
    }

    /// A counted list of strings, at most 256.
    mutating func list(what: String = "list") throws -> [String] {
        let count = Int(try u16())
        guard count <= IPCLimits.maxList else {
            throw DecodeError.tooLarge(what: what, length: count, limit: IPCLimits.maxList)
        }
        var items: [String] = []
        for _ in 0..<count { items.append(try string()) }
        return items
    }
}

extension ByteWriter {
    mutating func text(_ text: String) { blob(Array(text.utf8)) }
    mutating func list(_ items: [String]) {
        let kept = items.prefix(IPCLimits.maxList)
        u16(UInt16(kept.count))
        for item in kept { string(item) }
    }
}
