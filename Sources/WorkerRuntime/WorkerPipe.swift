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
        let bytes = message.encoded()
        try writeLock.withLock { _ in try Self.writeAll(descriptor, bytes) }
    }

    /// Writes every byte, however many system calls the socket needs.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { buffer in
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
        return try Incoming(body: try readBody(Int(length)))
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
