import IPC
import NIOCore
import Wire

/// `Frame` framing for SwiftNIO channels, used by the supervisor's worker pipes and by the
/// transfer worker's peer connections. The length is checked against the channel's limit
/// as soon as the 4 length bytes are in, before waiting for (or buffering) the body.
public struct FrameChannelDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = Frame
    public let limit: FrameLimit
    public var maxFrameLength: Int { limit.bytes }

    public init(maxFrameLength: Int) {
        self.limit = FrameLimit(maxFrameLength)
    }

    /// A limit the channel's owner may change later (a peer connection allows a few KiB
    /// until its hello is accepted, then whole chunks).
    public init(limit: FrameLimit) {
        self.limit = limit
    }

    /// A frame of `LargeFrame.threshold` bytes or more being gathered outside the read buffer.
    private var large: LargeFrame?
    /// In the middle of a large frame: what comes next is more of its payload.
    public var isGathering: Bool { large != nil }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        if large != nil {
            guard let frame = large?.gather(from: &buffer) else { return nil }
            large = nil
            return frame
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        try FrameError.check(length: length, limit: maxFrameLength)
        if let started = LargeFrame(startingIn: &buffer, length: length) {
            large = started
            return try decode(buffer: &buffer)
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        guard let type = buffer.readInteger(as: UInt16.self),
            let payload = buffer.readBytes(length: Int(length) - 2)
        else { throw FrameError.tooShort(length: length) }
        return Frame(type: type, payload: payload)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Frame? {
        try decode(buffer: &buffer)
    }

    /// The decoder as a channel handler; the buffer cap is a second guard on the same limit.
    public static func handler(maxFrameLength: Int) -> ByteToMessageHandler<FrameChannelDecoder> {
        ByteToMessageHandler(
            FrameChannelDecoder(maxFrameLength: maxFrameLength), maximumBufferSize: maxFrameLength + Frame.headerSize)
    }

    /// The same with a changeable limit; `largest` is the most it will ever be.
    public static func handler(limit: FrameLimit, largest: Int) -> ByteToMessageHandler<FrameChannelDecoder> {
        ByteToMessageHandler(FrameChannelDecoder(limit: limit), maximumBufferSize: largest + Frame.headerSize)
    }
}

/// A channel's messages, each decoded as its frame comes out of the read buffer, so that the
/// frame's payload is gone before anyone handles the message: a 6.5 MB manifest passing
/// through the supervisor is then in memory as the message's field, not also as the frame's
/// payload for as long as the message is handled.
public enum DecodedMessage<Message: ChannelMessage>: Sendable {
    case message(Message)
    /// A frame that is not a `Message`: the sender broke the protocol (why, in words).
    case undecodable(String)
}

public struct ChannelMessageDecoder<Message: ChannelMessage>: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = DecodedMessage<Message>
    private var frames: FrameChannelDecoder

    public init(maxFrameLength: Int) {
        frames = FrameChannelDecoder(maxFrameLength: maxFrameLength)
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> DecodedMessage<Message>? {
        guard let frame = try frames.decode(buffer: &buffer) else { return nil }
        do {
            return .message(try Message(frame: frame))
        } catch {
            return .undecodable("\(error)")
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodedMessage<Message>? {
        try decode(buffer: &buffer)
    }

    public static func handler(maxFrameLength: Int) -> ByteToMessageHandler<ChannelMessageDecoder> {
        ByteToMessageHandler(
            ChannelMessageDecoder(maxFrameLength: maxFrameLength), maximumBufferSize: maxFrameLength + Frame.headerSize)
    }
}

/// A frame too large to gather in the channel's read buffer (a manifest: 6.5 MB for a share
/// of 100,000 files). Waiting for all of it there grows the buffer to the next power of two
/// and copies the payload out at the end, so a manifest passing through a process was in
/// memory two or three times at once; gathered here, its bytes are copied once, into the
/// array that becomes the frame's payload, and the read buffer stays the size of a read.
/// The length was checked against the channel's limit before this starts. The array is
/// reserved whole (so it is never copied to grow) but its pages are touched only as bytes
/// arrive: a peer that announces a large frame and stalls costs address space, not memory.
struct LargeFrame {
    /// Frames from this length on are gathered here: more than the 1 MiB a read brings
    /// at most, smaller than any manifest worth the trouble.
    static let threshold = 1 << 20

    let type: UInt16
    private var payload: [UInt8] = []
    private let payloadLength: Int

    /// Takes the header of a frame of `length` (type included) off `buffer`, if it is
    /// large and its type has arrived; nil leaves the buffer as it was.
    init?(startingIn buffer: inout ByteBuffer, length: UInt32) {
        guard Int(length) >= Self.threshold, buffer.readableBytes >= Frame.headerSize,
            let type = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt16.self)
        else { return nil }
        buffer.moveReaderIndex(forwardBy: Frame.headerSize)
        self.type = type
        self.payloadLength = Int(length) - 2
        payload.reserveCapacity(payloadLength)
    }

    /// Moves what `buffer` holds of the payload into it; the frame once it is whole.
    mutating func gather(from buffer: inout ByteBuffer) -> Frame? {
        let wanted = min(payloadLength - payload.count, buffer.readableBytes)
        if wanted > 0, let view = buffer.readSlice(length: wanted) {
            payload.append(contentsOf: view.readableBytesView)
        }
        guard payload.count == payloadLength else { return nil }
        defer { payload = [] }
        return Frame(type: type, payload: payload)
    }
}

/// The largest frame a channel accepts right now. Confined to the channel's event loop.
public final class FrameLimit: @unchecked Sendable {
    public var bytes: Int
    public init(_ bytes: Int) { self.bytes = bytes }
}

public struct FrameChannelEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame

    public init() {}

    public func encode(data: Frame, out: inout ByteBuffer) throws {
        out.reserveCapacity(minimumWritableBytes: Frame.headerSize + data.payload.count)
        out.writeInteger(UInt32(data.payload.count + 2))
        out.writeInteger(data.type)
        out.writeBytes(data.payload)
    }
}

/// What `FrameChannelWriter` writes: a frame, or one already laid out in a buffer (a piece
/// built around its chunk's bytes in the pool: `ServeHandler.sendPiece`).
public enum OutgoingFrame: Sendable {
    case frame(Frame)
    case encoded(ByteBuffer)
}

/// Writes frames, each into a buffer of its own. NIO's `MessageToByteHandler` keeps its
/// buffer to reuse: after one manifest-sized frame (10 MiB for a share of 100,000 files) it
/// would hold 16 MiB for the life of the channel. Used where frames that large are written
/// (the supervisor's pipes to its workers, serving connections that send manifests).
///
/// A frame of `LargeFrame.threshold` bytes or more is written a slice at a time, the next
/// slice once the last is in the kernel, so that its bytes are in memory once (the frame's
/// payload) rather than twice (the payload and a buffer as large). What is written
/// meanwhile waits its turn behind it, in order. Confined to the channel's event loop.
public final class FrameChannelWriter: ChannelOutboundHandler, RemovableChannelHandler {
    public typealias OutboundIn = OutgoingFrame
    public typealias OutboundOut = ByteBuffer

    /// How much of a large frame is copied out at a time: about what a socket's send
    /// buffer takes in one write.
    static let sliceBytes = 256 * 1024

    private struct Pending {
        var frame: Frame
        var promise: EventLoopPromise<Void>?
        /// How much of the frame (header included) is written.
        var written = 0
        var total: Int { Frame.headerSize + frame.payload.count }
    }

    /// The large frame being written, and what waits behind it.
    private var current: Pending?
    private var waiting = CircularBuffer<(OutgoingFrame, EventLoopPromise<Void>?)>()

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let outgoing = unwrapOutboundIn(data)
        guard current == nil else { return waiting.append((outgoing, promise)) }
        begin(outgoing, promise: promise, context: context)
        if current != nil { writeSlice(context: context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        fail(ChannelError.ioOnClosedChannel)
    }

    /// Writes `outgoing` at once, or, a large frame, makes it the one written in slices.
    private func begin(_ outgoing: OutgoingFrame, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        switch outgoing {
        case .encoded(let buffer):
            context.write(wrapOutboundOut(buffer), promise: promise)
        case .frame(let frame) where frame.payload.count < LargeFrame.threshold:
            context.write(
                wrapOutboundOut(Self.buffer(for: frame, allocator: context.channel.allocator)), promise: promise)
        case .frame(let frame):
            current = Pending(frame: frame, promise: promise)
        }
    }

    /// Writes what waits, up to and including the first slice of the next large frame.
    private func writeWaiting(context: ChannelHandlerContext) {
        while current == nil, let (next, promise) = waiting.popFirst() {
            begin(next, promise: promise, context: context)
        }
        guard current != nil else { return context.flush() }
        writeSlice(context: context)
    }

    private func writeSlice(context: ChannelHandlerContext) {
        guard var sending = current else { return }
        let end = min(sending.written + Self.sliceBytes, sending.total)
        var slice = context.channel.allocator.buffer(capacity: end - sending.written)
        if sending.written == 0 {
            slice.writeInteger(UInt32(sending.frame.payload.count + 2))
            slice.writeInteger(sending.frame.type)
        }
        let from = max(0, sending.written - Frame.headerSize)
        slice.writeBytes(sending.frame.payload[from..<(end - Frame.headerSize)])
        sending.written = end
        current = sending
        context.writeAndFlush(wrapOutboundOut(slice)).assumeIsolated().whenComplete { [self] result in
            switch result {
            case .failure(let error):
                fail(error)
            case .success where end == sending.total:
                current = nil
                sending.promise?.succeed()
                writeWaiting(context: context)
            case .success:
                writeSlice(context: context)
            }
        }
    }

    /// The channel is gone: nothing waiting will be written.
    private func fail(_ error: Error) {
        let promises = [current?.promise] + waiting.map { $0.1 }
        current = nil
        waiting.removeAll()
        for promise in promises { promise?.fail(error) }
    }

    /// The frame's bytes (length, type, payload) in a buffer of exactly their size.
    public static func buffer(for frame: Frame, allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: Frame.headerSize + frame.payload.count)
        buffer.writeInteger(UInt32(frame.payload.count + 2))
        buffer.writeInteger(frame.type)
        buffer.writeBytes(frame.payload)
        return buffer
    }
}

/// Channel reads sized for chunk traffic: NIO's default adaptive allocator stops at 64 KiB,
/// so a 512 KiB chunk took eight reads and decoder passes. This one grows to 256 KiB.
public enum ChunkTrafficReads {
    /// The largest buffer one read fills.
    public static let largestRead = 256 * 1024

    public static var allocator: AdaptiveRecvByteBufferAllocator {
        AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 * 1024, maximum: largestRead)
    }
}
