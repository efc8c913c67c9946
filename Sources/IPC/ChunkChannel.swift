import PeerShareCore
import Wire

/// The transfer worker's side of the data channel: what it asks of the hash worker. Chunk
/// bytes travel here, between the two workers, never through the supervisor.
public enum ChunkRequest: ChannelMessage, ChunkCarrying {
    /// A chunk a peer asked for: the hash worker reads it from the shared file.
    case readChunk(requestID: UInt32, index: UInt32)
    /// A chunk a peer sent: the hash worker verifies it and, if it matches, writes it.
    case writeChunk(requestID: UInt32, index: UInt32, data: [UInt8])

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

    public var payloadSizeHint: Int { chunk.map { $0.data.count + 16 } ?? 16 }

    public func writePayload(into w: inout ByteWriter) {
        switch self {
        case .readChunk(let id, let index):
            w.u32(id)
            w.u32(index)
        case .writeChunk(let id, let index, let data):
            w.u32(id)
            w.u32(index)
            w.blob(data)
        }
    }

    public init(type: UInt16, reader: ByteReader) throws {
        var r = reader
        switch try Self.tag(type) {
        case .readChunk: self = .readChunk(requestID: try r.u32(), index: try r.u32())
        case .writeChunk:
            self = .writeChunk(
                requestID: try r.u32(), index: try r.u32(),
                data: try r.blob(limit: Manifest.maxChunkSize, what: "chunk"))
        }
        try r.expectEnd()
    }

    public var chunk: (requestID: UInt32, index: UInt32, data: [UInt8])? {
        if case .writeChunk(let id, let index, let data) = self { return (id, index, data) }
        return nil
    }

    public static func chunk(type: UInt16, requestID: UInt32, index: UInt32, data: [UInt8]) -> ChunkRequest? {
        type == Tag.writeChunk.rawValue ? .writeChunk(requestID: requestID, index: index, data: data) : nil
    }
}

/// The hash worker's side of the data channel: its answers to `ChunkRequest`s.
public enum ChunkReply: ChannelMessage, ChunkCarrying {
    /// The chunk asked for by `readChunk`.
    case chunkData(requestID: UInt32, index: UInt32, data: [UInt8])
    /// The verdict on a `writeChunk`: accepted (it matched its hash and is on disk) or not.
    case chunkWritten(requestID: UInt32, index: UInt32, accepted: Bool)
    /// A request that could not be done (a read error).
    case failure(requestID: UInt32, code: UInt16, message: String)

    public enum Tag: UInt16, CaseIterable, Sendable {
        case failure = 0x0008
        case chunkData = 0x0106
        case chunkWritten = 0x010A
    }

    public var tag: Tag {
        switch self {
        case .chunkData: return .chunkData
        case .chunkWritten: return .chunkWritten
        case .failure: return .failure
        }
    }

    public var requestID: UInt32 {
        switch self {
        case .chunkData(let id, _, _), .chunkWritten(let id, _, _), .failure(let id, _, _): return id
        }
    }

    public var payloadSizeHint: Int { chunk.map { $0.data.count + 16 } ?? 64 }

    public func writePayload(into w: inout ByteWriter) {
        switch self {
        case .chunkData(let id, let index, let data):
            w.u32(id)
            w.u32(index)
            w.blob(data)
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
        case .chunkData:
            self = .chunkData(
                requestID: try r.u32(), index: try r.u32(),
                data: try r.blob(limit: Manifest.maxChunkSize, what: "chunk"))
        case .chunkWritten: self = .chunkWritten(requestID: try r.u32(), index: try r.u32(), accepted: try r.bool())
        case .failure: self = .failure(requestID: try r.u32(), code: try r.u16(), message: try r.text())
        }
        try r.expectEnd()
    }

    public var chunk: (requestID: UInt32, index: UInt32, data: [UInt8])? {
        if case .chunkData(let id, let index, let data) = self { return (id, index, data) }
        return nil
    }

    public static func chunk(type: UInt16, requestID: UInt32, index: UInt32, data: [UInt8]) -> ChunkReply? {
        type == Tag.chunkData.rawValue ? .chunkData(requestID: requestID, index: index, data: data) : nil
    }
}
