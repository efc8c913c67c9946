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
    /// A plaintext piece whose bytes `ArrivingFrameReader` copied, read by read, into `slot`
    /// of the chunk pool (`length` bytes): whoever takes this owns the slot.
    case pieceInSlot(index: UInt32, slot: Int, length: Int)

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
        case .pieceInSlot:
            // Never asked of: the slot's bytes are taken where they are (`DownloadShell`).
            return Frame(type: PeerMessage.Tag.piece.rawValue, payload: [])
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

    /// In the middle of a large frame, gathered outside the read buffer (`LargeFrame`).
    var isGathering: Bool { frames.isGathering }

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

}

/// The answer to a reader with a piece's header in hand.
enum ArrivingPieceSlot {
    /// A slot of the chunk pool, taken now, and its memory (exactly the piece's length).
    case slot(Int, memory: UnsafeMutableRawBufferPointer)
    /// None free now: wait for one.
    case later
    /// Not into a slot (no pool yet, a piece larger than a slot, a connection whose pieces
    /// must go through its stages, half the slots already filling from peers): gathered whole
    /// as any frame, and handed on as `.piece`.
    case never
}

/// Where a downloading connection's `ArrivingFrameReader` puts a plaintext piece's bytes as
/// they arrive. Loop-confined, like the reader.
protocol ArrivingPieceRoom: AnyObject {
    /// Memory for a plaintext piece of `length` bytes arriving on connection `peerID`.
    func slot(forArrivingPiece length: Int, peerID: Int) -> ArrivingPieceSlot
    /// A slot taken for a piece that will not be completed (the connection closed mid-piece).
    func abandon(slot: Int)
    /// `reader` found no slot for the piece it has begun: stop reading its connection, and
    /// call its `retry()` once slots may be free (it is done waiting when that says so).
    func waitForSlot(_ reader: ArrivingFrameReader, peerID: Int)
}

/// The downloading connections' framing: `ArrivingFrameDecoder`'s frames, except that once a
/// plaintext piece's header has arrived its bytes are copied, read by read, straight into a
/// slot of the chunk pool. NIO's `ByteToMessageHandler` would first gather the whole frame
/// into one buffer, copying most of every chunk once more (a piece spans several reads).
/// Everything else is gathered here until it is a whole frame, bounded as before: the
/// decoder refuses a frame's length before its bytes are kept.
///
/// With no slot free for a piece, the reader stops reading its connection and waits, the
/// bytes already read kept as they are, rather than gather the piece whole and copy it to
/// wait for a slot: TCP's window then holds the peer back, and a busy hash worker costs no
/// memory here. Should more than the reads already under way arrive all the same, the piece
/// is handed on as `.piece`.
final class ArrivingFrameReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ArrivingFrame

    /// A piece frame's bytes before its chunk: `u32 frame length ‖ PieceHeader`.
    static let pieceFrameHead = 4 + PieceHeader.bytes
    /// What a connection may still deliver once it is told to stop reading: NIO's reads of
    /// one turn (4, its default) of at most `ChunkTrafficReads`' largest buffer.
    static let readsUnderWay = 4 * ChunkTrafficReads.largestRead

    private var decoder = ArrivingFrameDecoder(maxFrameLength: PeerMessage.maxFrameLength)
    /// Bytes that are not yet a whole frame (or a piece's header).
    private var gathered = ByteBuffer()
    /// The piece being copied into a slot, and how much of it has arrived.
    private var filling: (index: UInt32, slot: Int, memory: UnsafeMutableRawBufferPointer, filled: Int)?
    private weak var room: (any ArrivingPieceRoom)?
    private let peerID: Int
    /// Closed, failed or removed: nothing more is read or handed on.
    private var stopped = false
    /// A piece's header is here but no slot was: the connection is not read meanwhile.
    private(set) var waitingForSlot = false
    private var context: ChannelHandlerContext?

    init(room: any ArrivingPieceRoom, peerID: Int) {
        self.room = room
        self.peerID = peerID
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        process(&incoming, context: context)
    }

    /// Slots may be free again: a reader waiting for one tries again. False while it still
    /// waits.
    func retry() -> Bool {
        guard waitingForSlot, !stopped, let context else { return true }
        var nothing = ByteBuffer()
        process(&nothing, context: context)
        return !waitingForSlot
    }

    private func process(_ incoming: inout ByteBuffer, context: ChannelHandlerContext) {
        while !stopped {
            if filling != nil {
                // The chunk's bytes, in order: first those read with its header.
                if gathered.readableBytes > 0 {
                    fill(from: &gathered, context: context)
                } else if incoming.readableBytes > 0 {
                    fill(from: &incoming, context: context)
                } else {
                    return
                }
                continue
            }
            if gathered.readableBytes == 0 {
                guard incoming.readableBytes > 0 else { return }
                swap(&gathered, &incoming)
                incoming.clear()
            } else if gathered.readableBytes < Self.pieceFrameHead, incoming.readableBytes > 0,
                var head = incoming.readSlice(
                    length: min(Self.pieceFrameHead - gathered.readableBytes, incoming.readableBytes))
            {
                // Only what completes a piece's header: its chunk then goes straight to a slot.
                gathered.writeBuffer(&head)
            }
            switch startFilling() {
            case .started:
                waitingForSlot = false
                continue
            case .noSlot(let frameBytes)
            where gathered.readableBytes + incoming.readableBytes < frameBytes + Self.readsUnderWay:
                // Wait for a slot with what has been read, and read no more meanwhile. (The
                // reads of the event loop's turn still arrive; past that, should the
                // connection be read anyway, the piece is handed on as it lies.)
                if incoming.readableBytes > 0 { appendToGathered(&incoming) }
                if !waitingForSlot {
                    waitingForSlot = true
                    room?.waitForSlot(self, peerID: peerID)
                }
                return
            case .noSlot:
                // More here than the reads under way could bring: the piece is handed on as
                // it lies (`.piece`), to wait for a slot as bytes.
                break
            case .notAPiece:
                waitingForSlot = false
            }
            let frame: ArrivingFrame?
            do {
                frame = try decoder.decode(buffer: &gathered)
            } catch {
                stop()
                context.fireErrorCaught(error)
                return
            }
            if let frame {
                context.fireChannelRead(wrapInboundOut(frame))
            } else if incoming.readableBytes > 0 {
                appendToGathered(&incoming)
            } else {
                if gathered.readableBytes == 0 { gathered = ByteBuffer() }
                return
            }
        }
    }

    /// What `gathered` holds room for (tests: it stays bounded).
    var gatheredCapacity: Int { gathered.capacity }

    /// Adds a read behind what is gathered, first dropping the bytes already taken from its
    /// front if the read would not fit. Frames are cut from the front while reads are added
    /// at the back, so a connection whose reads never ended on a frame's end (sealed frames,
    /// which are gathered whole) grew the buffer by doubling for as long as it ran: to 32 MiB
    /// within one encrypted 1 GiB download, each growth into fresh pages (90 % of the
    /// downloader's transfer worker's page faults), and without bound for a peer that kept
    /// it so. Now it holds at most a frame and a read.
    private func appendToGathered(_ incoming: inout ByteBuffer) {
        if gathered.readerIndex > 0, gathered.writableBytes < incoming.readableBytes {
            gathered.discardReadBytes()
        }
        gathered.writeBuffer(&incoming)
    }

    private enum Start {
        case started
        case notAPiece
        /// A well-formed piece of `frameBytes` (its length field included), and no slot.
        case noSlot(frameBytes: Int)
    }

    /// A plaintext piece's header at the front of `gathered`, its layout exactly right, and
    /// a slot for its chunk: the header is consumed and the chunk starts filling the slot.
    private func startFilling() -> Start {
        guard !decoder.isGathering, gathered.readableBytes >= Self.pieceFrameHead,
            let frameLength = gathered.getInteger(at: gathered.readerIndex, as: UInt32.self),
            Int(frameLength) <= decoder.maxFrameLength, Int(frameLength) > PieceHeader.bytes,
            let piece = gathered.withUnsafeReadableBytes({ bytes -> (index: UInt32, length: Int)? in
                let header = UnsafeRawBufferPointer(rebasing: bytes[4..<Self.pieceFrameHead])
                guard
                    UInt16(bigEndian: header.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
                        == PeerMessage.Tag.piece.rawValue
                else { return nil }
                return (
                    UInt32(bigEndian: header.loadUnaligned(fromByteOffset: 2, as: UInt32.self)),
                    Int(UInt32(bigEndian: header.loadUnaligned(fromByteOffset: 6, as: UInt32.self)))
                )
            }),
            piece.length == Int(frameLength) - PieceHeader.bytes
        else { return .notAPiece }
        switch room?.slot(forArrivingPiece: piece.length, peerID: peerID) ?? .never {
        case .never: return .notAPiece
        case .later: return .noSlot(frameBytes: 4 + Int(frameLength))
        case .slot(let slot, let memory):
            guard memory.count == piece.length else {
                room?.abandon(slot: slot)
                return .notAPiece
            }
            gathered.moveReaderIndex(forwardBy: Self.pieceFrameHead)
            filling = (piece.index, slot, memory, 0)
            return .started
        }
    }

    /// Copies what `buffer` holds of the filling piece into its slot; a complete piece is
    /// handed on, and its slot with it.
    private func fill(from buffer: inout ByteBuffer, context: ChannelHandlerContext) {
        guard var piece = filling, let base = piece.memory.baseAddress else { return }
        let count = min(piece.memory.count - piece.filled, buffer.readableBytes)
        buffer.readWithUnsafeReadableBytes { bytes in
            if let from = bytes.baseAddress { (base + piece.filled).copyMemory(from: from, byteCount: count) }
            return count
        }
        piece.filled += count
        guard piece.filled == piece.memory.count else {
            filling = piece
            return
        }
        filling = nil
        context.fireChannelRead(
            wrapInboundOut(.pieceInSlot(index: piece.index, slot: piece.slot, length: piece.filled)))
    }

    private func stop() {
        stopped = true
        waitingForSlot = false
        gathered = ByteBuffer()
        if let piece = filling {
            filling = nil
            room?.abandon(slot: piece.slot)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        stop()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        stop()
        self.context = nil
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
