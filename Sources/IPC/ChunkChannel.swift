import PeerShareCore
import Wire

/// A place in the shared chunk pool (`ChunkPool`): where a chunk's bytes lie, or may be put.
/// The transfer worker hands out slots; the hash worker only ever touches the one a request
/// names, and checks it lies inside the pool before it does.
public struct PoolSlot: Hashable, Sendable {
    /// Byte offset of the slot in the pool.
    public var offset: UInt32
    /// The slot's size in bytes: the most a read may put there, or how many bytes a write
    /// brings.
    public var length: UInt32

    public init(offset: UInt32, length: UInt32) {
        self.offset = offset
        self.length = length
    }

    func write(into w: inout ByteWriter) {
        w.u32(offset)
        w.u32(length)
    }

    static func read(from r: inout ByteReader) throws -> PoolSlot {
        let slot = PoolSlot(offset: try r.u32(), length: try r.u32())
        guard slot.length <= Manifest.maxChunkSize else {
            throw DecodeError.invalid("a pool slot of \(slot.length) bytes")
        }
        return slot
    }
}

/// The transfer worker's side of the data channel: what it asks of the hash worker. Chunk
/// bytes do not travel here: they lie in the shared chunk pool, and these messages name
/// where (slot numbers and lengths), so a chunk is never copied through a socket between the
/// two workers.
public enum ChunkRequest: ChannelMessage {
    /// A chunk a peer asked for: the hash worker reads it from the shared file into `slot`.
    case readChunk(requestID: UInt32, index: UInt32, slot: PoolSlot)
    /// A chunk a peer sent, lying in `slot` (`slot.length` bytes): the hash worker copies it
    /// out, verifies it and, if it matches, writes it.
    case writeChunk(requestID: UInt32, index: UInt32, slot: PoolSlot)

    public enum Tag: UInt16, CaseIterable, Sendable {
        case readChunk = 0x0105
        case writeChunk = 0x0109
    }

    public var tag: Tag {
        switch self {
        case .readChunk: return .readChunk
        case .writeChunk: return .writeChunk
        }
    }

    public var payloadSizeHint: Int { 16 }

    public func writePayload(into w: inout ByteWriter) {
        switch self {
        case .readChunk(let id, let index, let slot), .writeChunk(let id, let index, let slot):
            w.u32(id)
            w.u32(index)
            slot.write(into: &w)
        }
    }

    public init(type: UInt16, reader: ByteReader) throws {
        var r = reader
        switch try Self.tag(type) {
        case .readChunk:
            self = .readChunk(requestID: try r.u32(), index: try r.u32(), slot: try PoolSlot.read(from: &r))
        case .writeChunk:
            self = .writeChunk(requestID: try r.u32(), index: try r.u32(), slot: try PoolSlot.read(from: &r))
        }
        try r.expectEnd()
    }
}

/// The hash worker's side of the data channel: its answers to `ChunkRequest`s.
public enum ChunkReply: ChannelMessage {
    /// The chunk asked for by `readChunk` is in its slot: `length` bytes from the slot's start.
    case chunkRead(requestID: UInt32, index: UInt32, length: UInt32)
    /// The verdict on a `writeChunk`: accepted (it matched its hash and is on disk) or not.
    /// Either way the hash worker is done with the slot.
    case chunkWritten(requestID: UInt32, index: UInt32, accepted: Bool)
    /// A request that could not be done (a read error); the slot is the transfer worker's again.
    case failure(requestID: UInt32, code: UInt16, message: String)

    public enum Tag: UInt16, CaseIterable, Sendable {
        case failure = 0x0008
        case chunkRead = 0x0106
        case chunkWritten = 0x010A
    }

    public var tag: Tag {
        switch self {
        case .chunkRead: return .chunkRead
        case .chunkWritten: return .chunkWritten
        case .failure: return .failure
        }
    }

    public var requestID: UInt32 {
        switch self {
        case .chunkRead(let id, _, _), .chunkWritten(let id, _, _), .failure(let id, _, _): return id
        }
    }

    public var payloadSizeHint: Int { 64 }

    public func writePayload(into w: inout ByteWriter) {
        switch self {
        case .chunkRead(let id, let index, let length):
            w.u32(id)
            w.u32(index)
            w.u32(length)
        case .chunkWritten(let id, let index, let accepted):
            w.u32(id)
            w.u32(index)
            w.bool(accepted)
        case .failure(let id, let code, let text):
            w.u32(id)
            w.u16(code)
            w.text(text)
        }
    }

    public init(type: UInt16, reader: ByteReader) throws {
        var r = reader
        switch try Self.tag(type) {
        case .chunkRead:
            let id = try r.u32()
            let index = try r.u32()
            let length = try r.u32()
            guard length <= Manifest.maxChunkSize else { throw DecodeError.invalid("a chunk of \(length) bytes") }
            self = .chunkRead(requestID: id, index: index, length: length)
        case .chunkWritten: self = .chunkWritten(requestID: try r.u32(), index: try r.u32(), accepted: try r.bool())
        case .failure: self = .failure(requestID: try r.u32(), code: try r.u16(), message: try r.text())
        }
        try r.expectEnd()
    }
}
