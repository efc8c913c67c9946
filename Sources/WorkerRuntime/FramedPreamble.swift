import IPC
import NIOCore
import Wire

/// The first handler of a connection that opens with a few control frames and then carries
/// other bytes: a relay connection (frames until `bridged`, then a circuit). It parses frames
/// with a small limit and gives each to `onFrame`; once that returns `.pass`, it forwards the
/// bytes that came after the frame, and every later read, untouched to the next handler.
public final class FramedPreamble: ChannelInboundHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer

    public enum Next {
        case more
        /// Stop framing: everything after this frame belongs to the handlers behind.
        case pass
        case close
    }

    private var decoder: FrameDecoder
    private var passing = false
    private let onFrame: (Frame, ChannelHandlerContext) -> Next
    private var context: ChannelHandlerContext?

    public init(maxFrameLength: Int, onFrame: @escaping (Frame, ChannelHandlerContext) -> Next) {
        self.decoder = FrameDecoder(maxFrameLength: maxFrameLength)
        self.onFrame = onFrame
    }

    public func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    public func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Stops framing from outside (the relay bridges a circuit when the *other* end's frame
    /// arrives): bytes already buffered go on to the next handler.
    public func pass() {
        guard !passing else { return }
        passing = true
        let rest = decoder.takeRemaining()
        if let context, !rest.isEmpty {
            context.fireChannelRead(wrapInboundOut(context.channel.allocator.buffer(bytes: rest)))
        }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if passing { return context.fireChannelRead(data) }
        decoder.append(buffer.readBytes(length: buffer.readableBytes) ?? [])
        do {
            while !passing, let frame = try decoder.next() {
                switch onFrame(frame, context) {
                case .more: continue
                case .close:
                    context.close(promise: nil)
                    return
                case .pass:
                    passing = true
                    let rest = decoder.takeRemaining()
                    if !rest.isEmpty {
                        context.fireChannelRead(wrapInboundOut(context.channel.allocator.buffer(bytes: rest)))
                    }
                }
            }
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }
}
