import Foundation
import IPC
import NIOCore
import NIOPosix
import Wire
import WorkerRuntime
import XCTest

/// Frames the size of a manifest (10 MB for 100,000 files) on the supervisor's NIO channels:
/// gathered outside the read buffer, written a slice at a time, in order with the frames
/// around them, over a real socketpair to a worker's blocking pipe.
final class LargeFrameTests: XCTestCase {
    private let manifest = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 11) }

    /// Fed in small parts, as reads bring them: a large frame's bytes leave the read buffer as
    /// they come (it never holds more than one read), and the frames around it come out whole.
    func testALargeFrameIsGatheredOutsideTheReadBuffer() throws {
        let reports: [WorkerReport] = [
            .peerCount(count: 3), .manifestReceived(manifest: manifest), .peerCount(count: 4),
        ]
        let stream = reports.flatMap { $0.encoded() }
        var decoder = ChannelMessageDecoder<WorkerReport>(maxFrameLength: IPCLimits.maxFrameLength)
        var buffer = ByteBuffer()
        var decoded: [WorkerReport] = []
        let read = 64 * 1024
        var largestHeld = 0
        for start in stride(from: 0, to: stream.count, by: read) {
            buffer.writeBytes(stream[start..<min(stream.count, start + read)])
            while let out = try decoder.decode(buffer: &buffer) {
                guard case .message(let report) = out else { return XCTFail("\(out)") }
                decoded.append(report)
            }
            largestHeld = max(largestHeld, buffer.readableBytes)
        }
        XCTAssertEqual(decoded, reports)
        XCTAssertLessThan(largestHeld, read, "the manifest never piled up in the read buffer")
        // Cut short: nothing comes out, and nothing is thrown until the channel says why.
        var cut = ChannelMessageDecoder<WorkerReport>(maxFrameLength: IPCLimits.maxFrameLength)
        var partial = ByteBuffer(bytes: reports[1].encoded().prefix(2 << 20))
        XCTAssertNil(try cut.decode(buffer: &partial))
        XCTAssertEqual(partial.readableBytes, 0)
    }

    /// A frame that is no report is said to be one, with why; the next frame still decodes.
    func testAFrameThatIsNoReportIsUndecodable() throws {
        var decoder = ChannelMessageDecoder<WorkerReport>(maxFrameLength: IPCLimits.maxFrameLength)
        var buffer = ByteBuffer(bytes: Frame(type: 0x7777, payload: [1, 2]).encoded())
        buffer.writeBytes(WorkerReport.peerCount(count: 9).encoded())
        guard case .undecodable(let why) = try decoder.decode(buffer: &buffer) else { return XCTFail() }
        XCTAssertTrue(why.contains("unknown"), why)
        guard case .message(let next) = try decoder.decode(buffer: &buffer) else { return XCTFail() }
        XCTAssertEqual(next, .peerCount(count: 9))
    }

    /// Records the largest buffer that reaches the socket.
    private final class LargestWrite: ChannelOutboundHandler, @unchecked Sendable {
        typealias OutboundIn = ByteBuffer
        var largest = 0
        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            largest = max(largest, unwrapOutboundIn(data).readableBytes)
            context.write(data, promise: promise)
        }
    }

    /// The supervisor's writer, on a real channel to a worker reading with its blocking pipe:
    /// small frames before, between and after two large ones arrive in the order written,
    /// every one whole, and no buffer handed to the socket is larger than a slice.
    func testLargeFramesAreWrittenASliceAtATimeInOrder() throws {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let largest = LargestWrite()
        let channel = try ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([largest, FrameChannelWriter()])
                }
            }
            .withConnectedSocket(fds[0]).wait()
        let worker = MessagePipe<WorkerReport, WorkerCommand>(descriptor: fds[1])
        defer { close(fds[1]) }
        let commands: [WorkerCommand] = [
            .setLimits(upload: 1, download: 2, perPeerUpload: 3),
            .serve(shareID: Array(repeating: 1, count: 32), manifest: manifest, host: "::", port: 1, partial: true),
            .setLimits(upload: 4, download: 5, perPeerUpload: 6),
            .serve(
                shareID: Array(repeating: 2, count: 32), manifest: manifest.reversed(), host: "::", port: 2,
                partial: false),
            .setLimits(upload: 7, download: 8, perPeerUpload: 9),
        ]
        // All written at once from the event loop, as the supervisor does; the worker reads
        // meanwhile (the socket holds far less than a manifest).
        let written = channel.eventLoop.submit {
            EventLoopFuture.andAllSucceed(
                commands.map { channel.writeAndFlush(OutgoingFrame.frame($0.frame())) }, on: channel.eventLoop)
        }.flatMap { $0 }
        var received: [WorkerCommand] = []
        while received.count < commands.count, let command = try worker.receive() { received.append(command) }
        try written.wait()
        XCTAssertEqual(received, commands)
        let sliced = try channel.eventLoop.submit { largest.largest }.wait()
        XCTAssertLessThanOrEqual(sliced, 256 * 1024, "a large frame went out in slices")
        XCTAssertGreaterThan(sliced, 64 * 1024)
        try channel.close().wait()
    }
}
