import Foundation
import IPC
import Logging
import PeerShareCore
import Synchronization
import Wire

/// A worker's end of its supervisor socketpair (fd 3): reports out, commands in.
public typealias WorkerPipe = MessagePipe<WorkerReport, WorkerCommand>

/// Blocking frame IO over one end of a socketpair, typed by what this end sends and what it
/// receives: a worker cannot even write a message of the wrong direction, and a frame of the
/// wrong direction does not decode. Reads happen on one thread (the reader loop); writes may
/// come from any thread and are serialised by a lock so frames never interleave.
public final class MessagePipe<Outgoing: ChannelMessage, Incoming: ChannelMessage>: Sendable {
    public let descriptor: Int32
    private let writeLock = Mutex<Void>(())

    public init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    /// Sends, or exits the worker if the supervisor is gone: a worker has no one else to
    /// answer to, and PR_SET_PDEATHSIG may not have fired yet.
    public func sendOrExit(_ message: Outgoing, logger: Logger) {
        do {
            try send(message)
        } catch {
            logger.error("lost the supervisor: \(error)")
            exit(70)
        }
    }

    public func send(_ message: Outgoing) throws {
        if let chunk = (message as? any ChunkCarrying)?.chunk {
            // Chunk data is written from where it lies (writev), not copied into a frame:
            // the frame's 18 header bytes go first, in the same system call.
            var header = ByteWriter()
            header.u32(UInt32(2 + 12 + chunk.data.count))
            header.u16(message.tag.rawValue)
            header.u32(chunk.requestID)
            header.u32(chunk.index)
            header.u32(UInt32(chunk.data.count))
            try writeLock.withLock { _ in try Self.writeAll(descriptor, header.bytes, chunk.data) }
        } else {
            let bytes = message.encoded()
            try writeLock.withLock { _ in try Self.writeAll(descriptor, bytes, []) }
        }
    }

    /// Writes `first` then `second` completely, with as few system calls as the socket allows.
    static func writeAll(_ fd: Int32, _ first: [UInt8], _ second: [UInt8]) throws {
        try first.withUnsafeBytes { one in
            try second.withUnsafeBytes { two in
                let total = one.count + two.count
                var done = 0
                while done < total {
                    var vectors: [iovec] = []
                    if done < one.count {
                        vectors.append(
                            iovec(
                                iov_base: UnsafeMutableRawPointer(mutating: one.baseAddress! + done),
                                iov_len: one.count - done))
                    }
                    let intoSecond = max(0, done - one.count)
                    if intoSecond < two.count {
                        vectors.append(
                            iovec(
                                iov_base: UnsafeMutableRawPointer(mutating: two.baseAddress! + intoSecond),
                                iov_len: two.count - intoSecond))
                    }
                    let written = writev(fd, vectors, Int32(vectors.count))
                    if written < 0 {
                        if errno == EINTR { continue }
                        throw WorkerError.pipe("write failed: \(String(cString: strerror(errno)))")
                    }
                    done += written
                }
            }
        }
    }

    /// Reads the next message, which must be an `Incoming` (what this end of the channel
    /// receives); nil at EOF (the peer process is gone). A malformed or oversized
    /// frame, or one of another type, throws: the caller exits, and its partner sees the
    /// pipe close.
    public func receive() throws -> Incoming? {
        var header = [UInt8](repeating: 0, count: 4)
        let complete = try header.withUnsafeMutableBytes { try readExactly(into: $0, eofAllowed: true) }
        guard complete else { return nil }
        var reader = ByteReader(header)
        let length = try reader.u32()
        try FrameError.check(length: length, limit: IPCLimits.maxFrameLength)
        guard let chunked = Incoming.self as? any ChunkCarrying.Type, length >= 14 else {
            return try Incoming(body: try readBody(Int(length)))
        }
        // Type and the first 12 bytes. Chunk messages (`writeChunk`, `chunkData`) are then
        // read field by field, the data straight into its own array, so it is not copied out
        // of a frame buffer; every other message is read whole and decoded as usual.
        let fixed = try readBody(14)
        var fields = ByteReader(fixed)
        let type = try fields.u16()
        let id = try fields.u32()
        let index = try fields.u32()
        let dataLength = Int(try fields.u32())
        guard chunked.carriesChunk(type: type) else {
            return try Incoming(body: fixed + (try readBody(Int(length) - 14)))
        }
        guard dataLength == Int(length) - 14, dataLength <= Manifest.maxChunkSize else {
            throw DecodeError.invalid("a chunk of \(dataLength) bytes in a frame of \(length)")
        }
        let data = try readBody(dataLength)
        guard let message = chunked.chunk(type: type, requestID: id, index: index, data: data) as? Incoming else {
            throw DecodeError.invalid("not a chunk message")
        }
        return message
    }

    /// Reads `count` bytes straight into an uninitialised array (no zero-fill).
    private func readBody(_ count: Int) throws -> [UInt8] {
        var failure: Error?
        let body = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            do {
                _ = try readExactly(into: UnsafeMutableRawBufferPointer(buffer), eofAllowed: false)
                initialized = count
            } catch {
                failure = error
                initialized = 0
            }
        }
        if let failure { throw failure }
        return body
    }

    /// Fills `buffer`; false only for EOF before the first byte when `eofAllowed`.
    private func readExactly(into buffer: UnsafeMutableRawBufferPointer, eofAllowed: Bool) throws -> Bool {
        var offset = 0
        while offset < buffer.count {
            let got = read(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
            if got < 0 {
                if errno == EINTR { continue }
                throw WorkerError.pipe("read failed: \(String(cString: strerror(errno)))")
            }
            if got == 0 {
                if offset == 0 && eofAllowed { return false }
                throw WorkerError.pipe("pipe closed in the middle of a frame")
            }
            offset += got
        }
        return true
    }
}

public enum WorkerError: Error, CustomStringConvertible {
    case pipe(String)
    case handshake(String)

    public var description: String {
        switch self {
        case .pipe(let text): return "pipe: \(text)"
        case .handshake(let text): return "handshake: \(text)"
        }
    }
}
