import PeerShareCore
import Wire

/// Messages between two peers over TCP, framed exactly like the IPC pipes (`Frame`), with
/// their own tag space. docs/PROTOCOL.md §2 lists them byte by byte.
public enum PeerMessage: Equatable, Sendable {
    /// First message from the connecting side: which protocol, which version, which share
    /// (for an encrypted share, a tag only link holders can compute), and its pipeline.
    /// `observed`: the address it dialled the server at (absent through a relay), so a
    /// server behind a router learns how others reach it — libp2p identify's observedAddr.
    case hello(version: UInt16, shareID: [UInt8], stages: [StageDescriptor], observed: WireAddress? = nil)
    /// The serving side accepts; it has the share with `chunkCount` chunks; its pipeline;
    /// `observed`: the address it sees the downloader at (absent through a relay).
    case helloAccepted(version: UInt16, chunkCount: UInt32, stages: [StageDescriptor], observed: WireAddress? = nil)
    case getManifest
    case manifest(bytes: [UInt8])
    case request(index: UInt32)
    case piece(index: UInt32, data: [UInt8])
    /// The serving side will not send this chunk (it does not have it, or the index is bad).
    case reject(index: UInt32, reason: String)
    /// A fatal error; the sender closes the connection after it.
    case error(code: UInt16, message: String)
    /// The serving side's verified chunks, sent once right after `helloAccepted`: one bit per
    /// chunk, most significant bit first (`ChunkBitfield`). A seeder sends all ones.
    case bitfield(bits: [UInt8])
    /// The serving side has verified one more chunk since its bitfield.
    case have(index: UInt32)
    /// The downloader no longer wants a chunk it asked for (an endgame copy arrived elsewhere).
    case cancel(index: UInt32)
    /// A message of a pipeline stage's handshake (the encryption stage's key exchange).
    case stageHandshake(stage: UInt8, data: [UInt8])

    public enum Tag: UInt16, CaseIterable, Sendable {
        case hello = 0x5001
        case helloAccepted = 0x5002
        case getManifest = 0x5003
        case manifest = 0x5004
        case request = 0x5005
        case piece = 0x5006
        case reject = 0x5007
        case error = 0x5008
        case bitfield = 0x5009
        case have = 0x500A
        case cancel = 0x500B
        case stageHandshake = 0x500C
    }

    public enum ErrorCode: UInt16, Sendable {
        case unknownShare = 1
        case versionMismatch = 2
        case protocolViolation = 3
        case busy = 4
        case internalError = 5
        case pipelineMismatch = 6
        case handshakeFailed = 7
    }

    /// 4: chunk hashes are BLAKE3 ("PSM3"; docs/PROTOCOL.md §3). 3 had SHA-256 chunk hashes
    /// in "PSM2" manifests, 2 per-file Merkle roots in "PSM1": a peer of an older version
    /// would send a manifest this one cannot read, so it is refused at the hello instead.
    public static let version: UInt16 = 4
    /// After the handshake, with any stages agreed, every frame travels inside one of these:
    /// the inner frame's `u16 type ‖ payload`, passed through every stage's encode in order.
    public static let sealedFrameType: UInt16 = 0x5100
    /// "PeerShare" in ASCII; opens every hello so a stray client is refused at once.
    public static let magic: [UInt8] = Array("PeerShare".utf8)
    /// A piece frame holds at most one maximum-size chunk plus its header; a manifest frame
    /// at most a maximum-size manifest.
    public static let maxFrameLength = Manifest.maxEncodedSize + 64
    /// A bitfield has one bit per chunk, and a manifest holds a 32-byte hash per chunk: no
    /// valid bitfield is longer than this.
    public static let maxBitfieldBytes = (Manifest.maxEncodedSize / 32 + 7) / 8

    public var tag: Tag {
        switch self {
        case .hello: return .hello
        case .helloAccepted: return .helloAccepted
        case .getManifest: return .getManifest
        case .manifest: return .manifest
        case .request: return .request
        case .piece: return .piece
        case .reject: return .reject
        case .error: return .error
        case .bitfield: return .bitfield
        case .have: return .have
        case .cancel: return .cancel
        case .stageHandshake: return .stageHandshake
        }
    }

    public func frame() -> Frame {
        var w = ByteWriter(capacity: payloadSizeHint)
        writePayload(into: &w)
        return Frame(type: tag.rawValue, payload: w.bytes)
    }

    /// `u16 type ‖ payload` in one buffer: what the pipeline's stages encode.
    public func innerBytes(reserving extra: Int = 0) -> [UInt8] {
        var w = ByteWriter(capacity: payloadSizeHint + 2 + extra)
        w.u16(tag.rawValue)
        writePayload(into: &w)
        return w.bytes
    }

    private var payloadSizeHint: Int {
        switch self {
        case .manifest(let bytes): return bytes.count + 8
        case .piece(_, let data): return data.count + 8
        case .bitfield(let bits): return bits.count + 8
        default: return 64
        }
    }

    private func writePayload(into w: inout ByteWriter) {
        switch self {
        case .hello(let version, let shareID, let stages, let observed):
            w.raw(PeerMessage.magic)
            w.u16(version)
            w.raw(shareID)
            StageDescriptor.encode(stages, into: &w)
            observed?.write(into: &w)
        case .helloAccepted(let version, let count, let stages, let observed):
            w.u16(version)
            w.u32(count)
            StageDescriptor.encode(stages, into: &w)
            observed?.write(into: &w)
        case .stageHandshake(let stage, let data):
            w.u8(stage)
            w.blob(data)
        case .getManifest: break
        case .manifest(let bytes):
            w.blob(bytes)
        case .request(let index), .have(let index), .cancel(let index): w.u32(index)
        case .bitfield(let bits): w.blob(bits)
        case .piece(let index, let data):
            w.u32(index)
            w.blob(data)
        case .reject(let index, let reason):
            w.u32(index)
            w.string(reason)
        case .error(let code, let message):
            w.u16(code)
            w.string(message)
        }
    }

    public init(frame: Frame) throws {
        var r = ByteReader(frame.payload)
        try self.init(type: frame.type, reader: &r)
    }

    /// Parses `u16 type ‖ payload` (a sealed frame's content) without copying the payload out first.
    public init(innerBytes: [UInt8]) throws {
        var r = ByteReader(innerBytes)
        let type = try r.u16()
        try self.init(type: type, reader: &r)
    }

    init(type: UInt16, reader r: inout ByteReader) throws {
        guard let tag = Tag(rawValue: type) else {
            throw DecodeError.invalid("unknown peer message type 0x\(String(type, radix: 16))")
        }
        switch tag {
        case .hello:
            guard try r.raw(PeerMessage.magic.count) == PeerMessage.magic else {
                throw DecodeError.invalid("not a PeerShare peer")
            }
            let version = try r.u16()
            let shareID = try r.raw(ShareID.byteCount)
            let stages = try StageDescriptor.decode(from: &r)
            // The observed address is optional: a peer may not know or say it.
            let observed = r.remaining > 0 ? try WireAddress(reader: &r) : nil
            self = .hello(version: version, shareID: shareID, stages: stages, observed: observed)
        case .helloAccepted:
            let version = try r.u16()
            let count = try r.u32()
            let stages = try StageDescriptor.decode(from: &r)
            let observed = r.remaining > 0 ? try WireAddress(reader: &r) : nil
            self = .helloAccepted(version: version, chunkCount: count, stages: stages, observed: observed)
        case .getManifest: self = .getManifest
        case .manifest: self = .manifest(bytes: try r.blob(limit: Manifest.maxEncodedSize, what: "manifest"))
        case .request: self = .request(index: try r.u32())
        case .piece:
            self = .piece(index: try r.u32(), data: try r.blob(limit: Manifest.maxChunkSize, what: "piece"))
        case .reject: self = .reject(index: try r.u32(), reason: try r.string())
        case .error: self = .error(code: try r.u16(), message: try r.string())
        case .bitfield: self = .bitfield(bits: try r.blob(limit: PeerMessage.maxBitfieldBytes, what: "bitfield"))
        case .have: self = .have(index: try r.u32())
        case .cancel: self = .cancel(index: try r.u32())
        case .stageHandshake:
            self = .stageHandshake(stage: try r.u8(), data: try r.blob(limit: 4096, what: "handshake"))
        }
        try r.expectEnd()
    }
}
