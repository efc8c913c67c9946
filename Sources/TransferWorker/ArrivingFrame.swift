import NIOCore
import PeerWire
import Wire
import WorkerRuntime

/// A frame as it arrives on a downloading connection. Most become `Frame`s (their payload
/// copied out of the socket's buffer, as `FrameChannelDecoder` does); a plaintext piece
/// stays where the socket read it, so that its chunk bytes are copied once, straight into
/// a slot of the chunk pool, instead of into a frame, then a message, then the slot; and a
/// sealed frame long enough to be a piece stays there to be opened straight into a slot.
enum ArrivingFrame {
    case frame(Frame)
    /// A well-formed plaintext piece: `chunk` is a view of its bytes in the read buffer,
    /// valid while the frame is being handled (the decoder's buffer is reused after).
    case piece(index: UInt32, chunk: ByteBuffer)
    /// A sealed frame of at least `ArrivingFrameDecoder.smallestSealedPiece` bytes: a view
    /// of its payload, likewise.
    case sealed(payload: ByteBuffer)

    /// The same as a `Frame` (copied): for the paths that do not take pieces in place.
    var frame: Frame {
        switch self {
        case .frame(let frame): return frame
        case .piece(let index, let chunk):
            var writer = ByteWriter(capacity: 8 + chunk.readableBytes)
            writer.u32(index)
            writer.blob(chunk.readableBytesView)
            return Frame(type: PeerMessage.Tag.piece.rawValue, payload: writer.bytes)
        case .sealed(let payload):
            return Frame(type: PeerMessage.sealedFrameType, payload: Array(payload.readableBytesView))
        }
    }
}

/// `FrameChannelDecoder` for downloading connections: the same framing and the same length
/// check before anything is buffered, but a plaintext piece whose layout is exactly right
/// (`u32 index ‖ u32 length ‖ length bytes`, the length at most a chunk) comes out as
/// `ArrivingFrame.piece`, a view of the read buffer. Anything else, a malformed piece
/// included, comes out as a `Frame` for `PeerMessage` to parse and refuse in its own words.
struct ArrivingFrameDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = ArrivingFrame
    let maxFrameLength: Int
    /// Everything that is not taken in place is framed as on any other channel.
    private var frames: FrameChannelDecoder

    init(maxFrameLength: Int) {
        self.maxFrameLength = maxFrameLength
        frames = FrameChannelDecoder(maxFrameLength: maxFrameLength)
    }

    /// Sealed frames at least this long (a piece header and the smallest cipher overhead)
    /// are passed on in place, to be opened into a slot: they may be pieces. The frequent
    /// small messages (`have`, `request`, `cancel`) are shorter and decoded as they are.
    static let smallestSealedPiece = PieceHeader.bytes + 16

    mutating func decode(buffer: inout ByteBuffer) throws -> ArrivingFrame? {
        if !frames.isGathering, let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self),
            let type = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt16.self),
            type == PeerMessage.Tag.piece.rawValue || type == PeerMessage.sealedFrameType
        {
            try FrameError.check(length: length, limit: maxFrameLength)
            guard buffer.readableBytes >= 4 + Int(length) else { return nil }
            // The frame's `u16 type ‖ payload`: for a piece, exactly its message.
            let start = buffer.readerIndex + 4
            let piece = buffer.withUnsafeReadableBytes {
                PieceHeader.parse(UnsafeRawBufferPointer(rebasing: $0[4..<(4 + Int(length))]))
            }
            if let piece, let chunk = buffer.getSlice(at: start + PieceHeader.bytes, length: piece.length) {
                buffer.moveReaderIndex(forwardBy: 4 + Int(length))
                return .piece(index: piece.index, chunk: chunk)
            }
            if Int(length) - 2 >= Self.smallestSealedPiece, type == PeerMessage.sealedFrameType,
                let payload = buffer.getSlice(at: start + 2, length: Int(length) - 2)
            {
                buffer.moveReaderIndex(forwardBy: 4 + Int(length))
                return .sealed(payload: payload)
            }
        }
        return try frames.decode(buffer: &buffer).map { .frame($0) }
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> ArrivingFrame? {
        try decode(buffer: &buffer)
    }

    static func handler() -> ByteToMessageHandler<ArrivingFrameDecoder> {
        ByteToMessageHandler(
            ArrivingFrameDecoder(maxFrameLength: PeerMessage.maxFrameLength),
            maximumBufferSize: PeerMessage.maxFrameLength + Frame.headerSize)
    }
}

/// A connection that arrived with the serving side's framing (a reverse connection) hands
/// its frames to the downloader's handler as `ArrivingFrame`s.
final class FramesAsArriving: ChannelInboundHandler, Sendable {
    typealias InboundIn = Frame
    typealias InboundOut = ArrivingFrame

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(wrapInboundOut(.frame(unwrapInboundIn(data))))
    }
}
