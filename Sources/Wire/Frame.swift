/// One frame on a PeerShare pipe or peer connection:
///
///     +----------------+--------------+-------------------+
///     | length: u32 BE | type: u16 BE | payload           |
///     +----------------+--------------+-------------------+
///
/// `length` counts the type and the payload (so it is at least 2). It is checked against
/// the channel's limit as soon as the 4 length bytes arrive, before any buffer is sized
/// for the frame — the same rule as OpenSSH's MONITOR_MAX_MSGLEN.
public struct Frame: Equatable, Sendable {
    public static let headerSize = 6
    public var type: UInt16
    public var payload: [UInt8]

    public init(type: UInt16, payload: [UInt8]) {
        self.type = type
        self.payload = payload
    }

    public func encoded() -> [UInt8] {
        var writer = ByteWriter(capacity: Frame.headerSize + payload.count)
        writer.u32(UInt32(payload.count + 2))
        writer.u16(type)
        writer.raw(payload)
        return writer.bytes
    }
}

public enum FrameError: Error, Equatable, CustomStringConvertible {
    case tooShort(length: UInt32)
    case tooLarge(length: UInt32, limit: Int)

    public var description: String {
        switch self {
        case .tooShort(let length): return "frame length \(length) is shorter than its type field"
        case .tooLarge(let length, let limit): return "frame length \(length) exceeds the limit of \(limit) bytes"
        }
    }

    /// Validates a length prefix; the single place every reader of frames goes through.
    public static func check(length: UInt32, limit: Int) throws {
        if length < 2 { throw FrameError.tooShort(length: length) }
        if Int(length) > limit { throw FrameError.tooLarge(length: length, limit: limit) }
    }
}

/// An incremental frame decoder with no IO: feed it bytes as they arrive, take frames out.
/// Its whole state is the unread bytes; it allocates a frame only after the length check.
public struct FrameDecoder {
    public let maxFrameLength: Int
    private var buffer: [UInt8] = []
    private var start = 0

    public init(maxFrameLength: Int) {
        self.maxFrameLength = maxFrameLength
    }

    public mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// Bytes received but not yet returned as frames.
    public var bufferedCount: Int { buffer.count - start }

    /// Takes the unread bytes out (a channel that stops framing hands them on unparsed).
    public mutating func takeRemaining() -> [UInt8] {
        defer {
            buffer = []
            start = 0
        }
        return Array(buffer[start...])
    }

    /// The next complete frame, nil if more bytes are needed, or an error (the channel must close).
    public mutating func next() throws -> Frame? {
        guard bufferedCount >= 4 else { return nil }
        var length: UInt32 = 0
        for index in 0..<4 { length = length << 8 | UInt32(buffer[start + index]) }
        try FrameError.check(length: length, limit: maxFrameLength)
        guard bufferedCount >= 4 + Int(length) else { return nil }
        let type = UInt16(buffer[start + 4]) << 8 | UInt16(buffer[start + 5])
        let payload = Array(buffer[(start + 6)..<(start + 4 + Int(length))])
        start += 4 + Int(length)
        return Frame(type: type, payload: payload)
    }
}
