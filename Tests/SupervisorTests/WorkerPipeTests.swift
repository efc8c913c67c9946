import Foundation
import IPC
import PeerShareCore
import Wire
import WorkerRuntime
import XCTest

/// The blocking pipe workers use, over a real socketpair: chunk messages take their own
/// path (writev out, field-by-field in), so they are checked beside ordinary ones.
final class WorkerPipeTests: XCTestCase {
    private func pair() -> (WorkerPipe, WorkerPipe, Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        // Room for a 4 MiB chunk, so one thread can write it before reading it back.
        var size: Int32 = 8 << 20
        for fd in fds { setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        for fd in fds { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        return (WorkerPipe(descriptor: fds[0]), WorkerPipe(descriptor: fds[1]), fds[0], fds[1])
    }

    func testChunkAndOtherMessagesRoundTrip() throws {
        let (a, b, fa, fb) = pair()
        defer {
            close(fa)
            close(fb)
        }
        let messages: [IPCMessage] = [
            .writeChunk(requestID: 7, index: 3, data: (0..<70_000).map { UInt8(truncatingIfNeeded: $0) }),
            .chunkData(requestID: 8, index: 4, data: []),
            .readChunk(requestID: 9, index: 5),
            .ping(nonce: 1),
            .status(requestID: 2, text: "fourteen bytes or more of status"),
            .chunkWritten(requestID: 7, index: 3, accepted: true),
        ]
        for message in messages { try a.send(message) }
        for message in messages { XCTAssertEqual(try b.receive(), message) }
        close(fa)
        XCTAssertNil(try b.receive(), "EOF between frames is the end, not an error")
    }

    func testChunkWhoseLengthDisagreesWithItsFrameIsRefused() throws {
        let (_, b, fa, fb) = pair()
        defer {
            close(fa)
            close(fb)
        }
        var frame = ByteWriter()
        frame.u32(2 + 12 + 10)
        frame.u16(IPCMessage.Tag.writeChunk.rawValue)
        frame.u32(1)
        frame.u32(0)
        frame.u32(4_000_000)  // claims far more than the frame holds
        frame.raw([UInt8](repeating: 0, count: 10))
        _ = frame.bytes.withUnsafeBytes { write(fa, $0.baseAddress, $0.count) }
        XCTAssertThrowsError(try b.receive())
    }
}
