import Foundation
import IPC
import Logging
import PeerShareCore
import Synchronization

/// Blocking frame IO over a worker's end of its supervisor socketpair (fd 3). Reads happen
/// on one thread (the worker's reader loop); writes may come from any thread and are
/// serialised by a lock so frames never interleave.
public final class WorkerPipe: Sendable {
    public let descriptor: Int32
    private let writeLock = Mutex<Void>(())

    public init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    /// Sends, or exits the worker if the supervisor is gone: a worker has no one else to
    /// answer to, and PR_SET_PDEATHSIG may not have fired yet.
    public func sendOrExit(_ message: IPCMessage, logger: Logger) {
        do {
            try send(message)
        } catch {
            logger.error("lost the supervisor: \(error)")
            exit(70)
        }
    }

    public func send(_ message: IPCMessage) throws {
        let bytes = message.encoded()
        try writeLock.withLock { _ in try WorkerPipe.writeAll(descriptor, bytes) }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw WorkerError.pipe("write failed: \(String(cString: strerror(errno)))")
                }
                offset += written
            }
        }
    }

    /// Reads the next message; nil at EOF (the supervisor is gone). A malformed or oversized
    /// frame throws: the caller exits, and the supervisor sees the pipe close.
    public func receive() throws -> IPCMessage? {
        var header = [UInt8](repeating: 0, count: 4)
        let complete = try header.withUnsafeMutableBytes { try readExactly(into: $0, eofAllowed: true) }
        guard complete else { return nil }
        var reader = ByteReader(header)
        let length = try reader.u32()
        try FrameError.check(length: length, limit: IPCMessage.maxFrameLength)
        // Read straight into an uninitialised buffer: no zero-fill, no second copy for decoding.
        var failure: Error?
        let body = [UInt8](unsafeUninitializedCapacity: Int(length)) { buffer, initialized in
            do {
                _ = try readExactly(into: UnsafeMutableRawBufferPointer(buffer), eofAllowed: false)
                initialized = Int(length)
            } catch {
                failure = error
                initialized = 0
            }
        }
        if let failure { throw failure }
        return try IPCMessage(body: body)
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
