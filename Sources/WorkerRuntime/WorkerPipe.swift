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
        try send([message])
    }

    /// Sends several messages in one write (a manifest among them is written from where it
    /// lies, not copied into the frame: `ByteWriter(keepingBlobsFrom:)`).
    public func send(_ messages: [Outgoing]) throws {
        let hint = messages.reduce(0) { $0 + Frame.headerSize + min($1.payloadSizeHint, LargeFrame.threshold) }
        var frames = ByteWriter(capacity: hint, keepingBlobsFrom: LargeFrame.threshold)
        for message in messages {
            let start = frames.count
            let header = frames.bytes.count
            frames.u32(0)
            frames.u16(message.tag.rawValue)
            message.writePayload(into: &frames)
            frames.patchU32(at: header, UInt32(frames.count - start - 4))
        }
        try writeLock.withLock { _ in try frames.forEachPart { try Self.writeAll(descriptor, $0) } }
    }

    /// Writes every byte, however many system calls the socket needs.
    static func writeAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) throws {
        guard let base = buffer.baseAddress else { return }
        var done = 0
        while done < buffer.count {
            let written = write(fd, base + done, buffer.count - done)
            if written < 0 {
                if errno == EINTR { continue }
                throw WorkerError.pipe("write failed: \(String(cString: strerror(errno)))")
            }
            done += written
        }
    }

    /// Reads the next message, which must be an `Incoming` (what this end of the channel
    /// receives); nil at EOF (the peer process is gone). A malformed or oversized
    /// frame, or one of another type, throws: the caller exits, and its partner sees the
    /// pipe close. Only one thread may receive (the reader loop).
    public func receive() throws -> Incoming? {
        guard let body = try reader.nextFrame(descriptor: descriptor, wait: true) else { return nil }
        return try Incoming(body: body)
    }

    /// The next message (waiting for it, as `receive`) and every other one that is already
    /// buffered, so a burst is handled in one go — one wake-up of the consumer, not one per
    /// message. Nil at EOF.
    public func receiveAvailable() throws -> [Incoming]? {
        guard let first = try receive() else { return nil }
        var messages = [first]
        while let body = try reader.nextFrame(descriptor: descriptor, wait: false) {
            messages.append(try Incoming(body: body))
        }
        return messages
    }

    private let reader = FrameReader()
}

/// The receiving side's buffer: reads as much as the socket has (up to 64 KiB at a time)
/// and cuts frames out of it, so a burst of small messages costs one system call rather
/// than two per message. Confined to the one thread that receives.
final class FrameReader: @unchecked Sendable {
    private static let readSize = 64 * 1024
    private var buffer = [UInt8](repeating: 0, count: FrameReader.readSize)
    private var start = 0
    private var end = 0

    /// Moves the unread bytes to the start of the buffer.
    private func moveToFront() {
        guard start > 0 else { return }
        buffer.withUnsafeMutableBytes { raw in
            guard let base = raw.baseAddress else { return }
            memmove(base, base + start, end - start)
        }
        end -= start
        start = 0
    }

    /// A frame larger than the buffer (a manifest): read straight into an array of its own,
    /// so that it is in memory once, not in a grown buffer and then copied out of it.
    private func readLargeFrame(descriptor: Int32, length: Int) throws -> [UInt8] {
        var body = [UInt8](repeating: 0, count: length)
        var filled = end - start - 4
        body.withUnsafeMutableBytes { to in
            buffer.withUnsafeBytes { from in
                guard let target = to.baseAddress, let source = from.baseAddress else { return }
                memcpy(target, source + start + 4, filled)
            }
        }
        start = 0
        end = 0
        while filled < length {
            let got = body.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return -1 }
                return read(descriptor, base + filled, length - filled)
            }
            if got < 0 {
                if errno == EINTR { continue }
                throw WorkerError.pipe("read failed: \(String(cString: strerror(errno)))")
            }
            if got == 0 { throw WorkerError.pipe("pipe closed in the middle of a frame") }
            filled += got
        }
        return body
    }

    /// The body of the next frame (its length checked before anything is sized); nil at EOF
    /// between frames, or — when not `wait`ing — when no whole frame is buffered.
    func nextFrame(descriptor: Int32, wait: Bool) throws -> [UInt8]? {
        while true {
            if end - start >= 4 {
                var header = ByteReader(Array(buffer[start..<start + 4]))
                let length = try header.u32()
                try FrameError.check(length: length, limit: IPCLimits.maxFrameLength)
                let total = 4 + Int(length)
                if end - start >= total {
                    let body = Array(buffer[start + 4..<start + total])
                    start += total
                    if start == end {
                        start = 0
                        end = 0
                        // A manifest-sized frame does not keep its buffer for life.
                        if buffer.count > 2 * FrameReader.readSize {
                            buffer = [UInt8](repeating: 0, count: FrameReader.readSize)
                        }
                    }
                    return body
                }
                if total > buffer.count {
                    guard wait else { return nil }
                    return try readLargeFrame(descriptor: descriptor, length: Int(length))
                }
                // Room for the whole frame, the partial one moved to the front.
                if buffer.count - start < total {
                    moveToFront()
                    if buffer.count < total { buffer += [UInt8](repeating: 0, count: total - buffer.count) }
                }
            }
            guard wait else { return nil }
            if end == buffer.count {
                if start > 0 {
                    moveToFront()
                } else {
                    buffer += [UInt8](repeating: 0, count: FrameReader.readSize)
                }
            }
            let got = buffer.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return -1 }
                return read(descriptor, base + end, raw.count - end)
            }
            if got < 0 {
                if errno == EINTR { continue }
                throw WorkerError.pipe("read failed: \(String(cString: strerror(errno)))")
            }
            if got == 0 {
                if end == start { return nil }
                throw WorkerError.pipe("pipe closed in the middle of a frame")
            }
            end += got
        }
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
