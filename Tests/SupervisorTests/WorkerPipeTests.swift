import Foundation
import IPC
import PeerShareCore
import Wire
import WorkerRuntime
import XCTest

/// The blocking pipe workers use, over a real socketpair, and the shared chunk pool whose
/// slots the data channel names: each end reads only its own direction's messages, and no
/// slot reaches outside the pool.
final class WorkerPipeTests: XCTestCase {
    private func pair<Out, In>(_: Out.Type, _: In.Type) -> (MessagePipe<Out, In>, MessagePipe<In, Out>, Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        // Room for a 4 MiB chunk, so one thread can write it before reading it back.
        var size: Int32 = 8 << 20
        for fd in fds { setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        for fd in fds { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        return (MessagePipe(descriptor: fds[0]), MessagePipe(descriptor: fds[1]), fds[0], fds[1])
    }

    func testChunkAndOtherMessagesRoundTrip() throws {
        let (transfer, hash, ft, fh) = pair(ChunkRequest.self, ChunkReply.self)
        defer {
            close(ft)
            close(fh)
        }
        let requests: [ChunkRequest] = [
            .writeChunk(requestID: 7, index: 3, slot: PoolSlot(offset: 0, length: 70_000)),
            .readChunk(requestID: 9, index: 5, slot: PoolSlot(offset: 1 << 20, length: 1 << 20)),
            .writeChunk(requestID: 8, index: 4, slot: PoolSlot(offset: 0, length: 0)),
        ]
        let replies: [ChunkReply] = [
            .chunkRead(requestID: 8, index: 4, length: 0),
            .chunkRead(requestID: 10, index: 6, length: 100_000),
            .failure(requestID: 2, code: 74, message: "fourteen bytes or more of failure"),
            .chunkWritten(requestID: 7, index: 3, accepted: true),
        ]
        for request in requests { try transfer.send(request) }
        for reply in replies { try hash.send(reply) }
        for request in requests { XCTAssertEqual(try hash.receive(), request) }
        for reply in replies { XCTAssertEqual(try transfer.receive(), reply) }
        close(ft)
        XCTAssertNil(try hash.receive(), "EOF between frames is the end, not an error")
    }

    /// A burst sent in one write comes out whole, in order, in one `receiveAvailable`; a
    /// frame larger than the reader's buffer is read into an array of its own (and the frame
    /// behind it still comes out), and one split over writes waits.
    func testBurstsAndLargeFramesThroughTheBufferedReader() throws {
        let (supervisor, worker, fs, fw) = pair(WorkerCommand.self, WorkerReport.self)
        defer {
            close(fs)
            close(fw)
        }
        let burst: [WorkerReport] = (0..<50).map {
            .chunkStored(index: UInt32($0), accepted: true, bytes: 10, peer: "p")
        }
        try worker.send(burst)
        XCTAssertEqual(try supervisor.receiveAvailable(), burst)
        let manifest = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        try worker.send(.manifestBuilt(requestID: 1, manifest: manifest))
        try worker.send(.status(requestID: 2, text: "after the large one"))
        XCTAssertEqual(try supervisor.receive(), .manifestBuilt(requestID: 1, manifest: manifest))
        XCTAssertEqual(try supervisor.receive(), .status(requestID: 2, text: "after the large one"))
        // Half a frame, then the rest: the reader waits for it.
        let frame = WorkerReport.status(requestID: 3, text: "split").encoded()
        _ = frame.prefix(7).withUnsafeBytes { write(fw, $0.baseAddress, $0.count) }
        let rest = Array(frame.dropFirst(7))
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.1) {
            _ = rest.withUnsafeBytes { write(fw, $0.baseAddress, $0.count) }
        }
        XCTAssertEqual(try supervisor.receiveAvailable(), [.status(requestID: 3, text: "split")])
        shutdown(fw, Int32(SHUT_WR))
        XCTAssertNil(try supervisor.receive())
    }

    /// Manifests of a megabyte or more are written from where they lie (not copied into the
    /// frame): a burst with two of them between small reports arrives whole and in order.
    func testLargeBlobsAreWrittenInPlaceAndInOrder() throws {
        let (supervisor, worker, fs, fw) = pair(WorkerCommand.self, WorkerReport.self)
        defer {
            close(fs)
            close(fw)
        }
        let first = (0..<(3 << 19)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let second = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 11 &+ 1) }
        let burst: [WorkerReport] = [
            .peerCount(count: 1), .manifestBuilt(requestID: 2, manifest: first), .peerCount(count: 3),
            .manifestReceived(manifest: second), .status(requestID: 5, text: "last"),
        ]
        try worker.send(burst)
        var received: [WorkerReport] = []
        while received.count < burst.count, let more = try supervisor.receiveAvailable() { received += more }
        XCTAssertEqual(received, burst)
    }

    func testCommandsAndReportsCrossTheSupervisorPipe() throws {
        let (supervisor, worker, fs, fw) = pair(WorkerCommand.self, WorkerReport.self)
        defer {
            close(fs)
            close(fw)
        }
        try supervisor.send(.ping(nonce: 1))
        try worker.send(.status(requestID: 2, text: "fourteen bytes or more of status"))
        XCTAssertEqual(try worker.receive(), .ping(nonce: 1))
        XCTAssertEqual(try supervisor.receive(), .status(requestID: 2, text: "fourteen bytes or more of status"))
    }

    /// A frame of the other direction does not decode: the hash worker cannot be sent a chunk
    /// reply, nor the supervisor a command, whatever the bytes say.
    func testAMessageOfTheOtherDirectionIsRefused() throws {
        let (transfer, hash, ft, fh) = pair(ChunkRequest.self, ChunkReply.self)
        defer {
            close(ft)
            close(fh)
        }
        _ = ChunkReply.chunkRead(requestID: 1, index: 0, length: 3).encoded().withUnsafeBytes {
            write(ft, $0.baseAddress, $0.count)
        }
        XCTAssertThrowsError(try hash.receive())
        _ = WorkerCommand.shutdown.encoded().withUnsafeBytes { write(fh, $0.baseAddress, $0.count) }
        XCTAssertThrowsError(try transfer.receive())
    }

    func testASlotClaimingMoreThanAChunkIsRefused() throws {
        let (_, b, fa, fb) = pair(ChunkRequest.self, ChunkReply.self)
        defer {
            close(fa)
            close(fb)
        }
        var frame = ByteWriter()
        frame.u32(2 + 16)
        frame.u16(ChunkRequest.Tag.writeChunk.rawValue)
        frame.u32(1)
        frame.u32(0)
        frame.u32(0)
        frame.u32(UInt32(Manifest.maxChunkSize) + 1)
        _ = frame.bytes.withUnsafeBytes { write(fa, $0.baseAddress, $0.count) }
        XCTAssertThrowsError(try b.receive())
    }

    /// Two mappings of one pool (as the transfer and hash workers have) see each other's
    /// bytes; a slot that runs past the pool's end is no slot at all.
    func testThePoolIsSharedAndItsSlotsBounded() throws {
        let fd = try XCTUnwrap(ChunkPool.makeDescriptor(bytes: 1 << 20))
        let second = dup(fd)
        defer {
            close(fd)
            close(second)
        }
        let transfer = try XCTUnwrap(ChunkPool.inherited(descriptor: fd))
        let hash = try XCTUnwrap(ChunkPool.inherited(descriptor: second))
        XCTAssertEqual(transfer.byteCount, 1 << 20)
        let slot = PoolSlot(offset: 512 * 1024, length: 4)
        let written = try XCTUnwrap(transfer.bytes(of: slot))
        written.copyBytes(from: [1, 2, 3, 4])
        XCTAssertEqual([UInt8](try XCTUnwrap(hash.bytes(of: slot))), [1, 2, 3, 4])
        XCTAssertNotNil(hash.bytes(of: PoolSlot(offset: 512 * 1024, length: 512 * 1024)))
        XCTAssertNil(hash.bytes(of: PoolSlot(offset: 512 * 1024, length: 512 * 1024 + 1)))
        XCTAssertNil(hash.bytes(of: PoolSlot(offset: UInt32.max, length: 1)))
        // Not a pool: a socket is no memory to map.
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        XCTAssertNil(ChunkPool.inherited(descriptor: fds[0]))
        for fd in fds { close(fd) }
    }
}
