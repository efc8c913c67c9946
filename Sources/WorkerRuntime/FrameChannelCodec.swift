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

    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        try FrameError.check(length: length, limit: maxFrameLength)
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

/// Writes frames, each into a buffer of its own. NIO's `MessageToByteHandler` keeps its
/// buffer to reuse: after one manifest-sized frame (10 MiB for a share of 100,000 files) it
/// would hold 16 MiB for the life of the channel. Used where frames that large are written
/// (the supervisor's pipes to its workers).
public final class FrameChannelWriter: ChannelOutboundHandler, Sendable {
    public typealias OutboundIn = Frame
    public typealias OutboundOut = ByteBuffer

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        context.write(wrapOutboundOut(Self.buffer(for: frame, allocator: context.channel.allocator)), promise: promise)
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
/// so a 512 KiB chunk took eight reads and decoder passes. This one grows to 1 MiB.
public enum ChunkTrafficReads {
    public static var allocator: AdaptiveRecvByteBufferAllocator {
        AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 * 1024, maximum: 256 * 1024)
    }
}
