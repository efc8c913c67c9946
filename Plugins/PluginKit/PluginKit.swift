import Foundation
@_exported import Wire

/// The whole plugin protocol (docs/PLUGINS.md) for stages written in Swift: conform to
/// `PipelineStage`, call `PluginMain.run(YourStage.self)`, and the loop below reads frames
/// on stdin, calls you, and writes answers on stdout. This file is the template: copy
/// Plugins/pad to start a new stage.
public protocol PipelineStage {
    /// Your stage's version; peers must run the same one when the stage is required.
    static var version: UInt16 { get }
    /// Called once with the options from pipeline.json; throw to refuse them.
    init(options: [String: String]) throws
    /// A connection opened (`server`: we accepted it) or closed; keep per-connection state here.
    mutating func open(connection: UInt32, server: Bool) throws
    mutating func close(connection: UInt32)
    /// Every frame sent on the connection passes through here, in order.
    mutating func encode(connection: UInt32, _ data: [UInt8]) throws -> [UInt8]
    /// Every frame received, in order; the result must not exceed `limit` bytes.
    mutating func decode(connection: UInt32, _ data: [UInt8], limit: Int) throws -> [UInt8]
    /// True if the stage exchanges messages with the peer's instance when a connection
    /// opens (to agree on parameters); then `handshake` is called until it says done.
    static var takesPartInHandshake: Bool { get }
    /// One handshake step: `received` is what the peer's instance sent (empty: we start, on
    /// the connecting side). Return whether this side is done, and what to send (may be empty).
    mutating func handshake(connection: UInt32, received: [UInt8]) throws -> (done: Bool, send: [UInt8])
}

extension PipelineStage {
    public mutating func open(connection: UInt32, server: Bool) throws {}
    public mutating func close(connection: UInt32) {}
    public static var takesPartInHandshake: Bool { false }
    public mutating func handshake(connection: UInt32, received: [UInt8]) throws -> (done: Bool, send: [UInt8]) {
        (true, [])
    }
}

public struct StageError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

public enum PluginMain {
    typealias MessageType = PluginProtocol.MessageType

    public static func run<Stage: PipelineStage>(_ type: Stage.Type) -> Never {
        var stage: Stage?
        while let (kind, fields, frame) = readMessage() {
            var reader = ByteReader(fields)
            do {
                switch MessageType(rawValue: kind) {
                case .hello:
                    let version = try reader.u16()
                    guard version == PluginProtocol.version else {
                        throw StageError("protocol \(version) not supported")
                    }
                    _ = try reader.string()  // the stage name pipeline.json gave us
                    var options: [String: String] = [:]
                    for _ in 0..<(try reader.u16()) { options[try reader.string()] = try reader.string() }
                    stage = try Stage(options: options)
                    var out = ByteWriter()
                    out.u16(PluginProtocol.version)
                    out.u16(Stage.version)
                    out.u8(Stage.takesPartInHandshake ? 1 : 0)
                    writeFrame(.ready, out.bytes)
                case .open:
                    var current = try stage.unwrap()
                    try current.open(connection: try reader.u32(), server: try reader.u8() != 0)
                    stage = current
                    writeResult([])
                case .close:
                    var current = try stage.unwrap()
                    current.close(connection: try reader.u32())
                    stage = current
                    writeResult([])
                case .encode:
                    let connection = try reader.u32()
                    let data = try frame ?? reader.blob(limit: PluginProtocol.maxFrame)
                    var current = try stage.unwrap()
                    let out = try current.encode(connection: connection, data)
                    stage = current
                    writeResult(out)
                case .decode:
                    let connection = try reader.u32()
                    let limit = Int(try reader.u32())
                    let data = try frame ?? reader.blob(limit: PluginProtocol.maxFrame)
                    var current = try stage.unwrap()
                    let out = try current.decode(connection: connection, data, limit: limit)
                    stage = current
                    guard out.count <= limit else { throw StageError("decoded frame over the limit") }
                    writeResult(out)
                case .handshake:
                    let connection = try reader.u32()
                    let received = try reader.blob(limit: PluginProtocol.maxFrame)
                    var current = try stage.unwrap()
                    let (done, send) = try current.handshake(connection: connection, received: received)
                    stage = current
                    var out = ByteWriter()
                    out.u8(done ? 1 : 0)
                    out.blob(send)
                    writeFrame(.handshakeReply, out.bytes)
                default:
                    throw StageError("unknown message type 0x\(String(kind, radix: 16))")
                }
            } catch {
                var out = ByteWriter()
                out.string("\(error)")
                writeFrame(.error, out.bytes)
            }
        }
        exit(0)
    }

    /// The next message from the host; nil at EOF or on a frame whose length fails the check
    /// (the host then restarts us). The length is checked before anything is sized for it.
    /// `encode` and `decode` end in the frame to transform (u32 length ‖ bytes): those bytes
    /// are read straight into an array of their own, `frame`, and `fields` is what comes
    /// before them. A chunk then crosses this process with no copy but the stage's own.
    static func readMessage() -> (type: UInt16, fields: [UInt8], frame: [UInt8]?)? {
        guard let header = readArray(count: Frame.headerSize) else { return nil }
        let length = header[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        guard (try? FrameError.check(length: length, limit: PluginProtocol.maxFrame)) != nil else { return nil }
        let type = UInt16(header[4]) << 8 | UInt16(header[5])
        let payloadCount = Int(length) - 2
        let fieldCount: Int? =
            switch MessageType(rawValue: type) {
            case .encode: 4  // connection
            case .decode: 8  // connection, limit
            default: nil
            }
        guard let fieldCount, payloadCount >= fieldCount + 4 else {
            guard let payload = readArray(count: payloadCount) else { return nil }
            return (type, payload, nil)
        }
        guard let fields = readArray(count: fieldCount + 4) else { return nil }
        let declared = fields[fieldCount...].reduce(0) { $0 << 8 | Int($1) }
        guard declared == payloadCount - fieldCount - 4 else {
            // Not exactly one frame after the fields: the parser gets the whole payload and
            // says what is wrong with it.
            guard let rest = readArray(count: payloadCount - fieldCount - 4) else { return nil }
            return (type, fields + rest, nil)
        }
        guard let frame = readArray(count: declared) else { return nil }
        return (type, Array(fields[..<fieldCount]), frame)
    }

    /// `count` bytes from stdin into a new array; nil at EOF or on an error.
    static func readArray(count: Int) -> [UInt8]? {
        var complete = false
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            var filled = 0
            while filled < count, let base = buffer.baseAddress {
                let got = read(0, base + filled, count - filled)
                if got < 0 && errno == EINTR { continue }
                if got <= 0 { break }
                filled += got
            }
            initialized = filled
            complete = filled == count
        }
        return complete ? bytes : nil
    }

    /// A `result` holding one blob: the header and `data` go out in one `writev`, so the
    /// frame is not copied into a message first.
    static func writeResult(_ data: [UInt8]) {
        var header = ByteWriter(capacity: Frame.headerSize + 4)
        header.u32(UInt32(2 + 4 + data.count))
        header.u16(MessageType.result.rawValue)
        header.u32(UInt32(data.count))
        writeAll(header.bytes, data)
    }

    static func writeFrame(_ type: MessageType, _ payload: [UInt8]) {
        var header = ByteWriter(capacity: Frame.headerSize)
        header.u32(UInt32(payload.count + 2))
        header.u16(type.rawValue)
        writeAll(header.bytes, payload)
    }

    /// Writes `head` ‖ `body` to stdout; exits if the host is gone.
    static func writeAll(_ head: [UInt8], _ body: [UInt8]) {
        let total = head.count + body.count
        var done = 0
        while done < total {
            let written = head.withUnsafeBytes { headBytes in
                body.withUnsafeBytes { bodyBytes -> Int in
                    var parts: [iovec] = []
                    if done < headBytes.count, let base = headBytes.baseAddress {
                        parts.append(
                            iovec(
                                iov_base: UnsafeMutableRawPointer(mutating: base + done),
                                iov_len: headBytes.count - done))
                    }
                    let bodyDone = max(0, done - headBytes.count)
                    if bodyDone < bodyBytes.count, let base = bodyBytes.baseAddress {
                        parts.append(
                            iovec(
                                iov_base: UnsafeMutableRawPointer(mutating: base + bodyDone),
                                iov_len: bodyBytes.count - bodyDone))
                    }
                    return parts.withUnsafeBufferPointer { writev(1, $0.baseAddress, Int32($0.count)) }
                }
            }
            if written < 0 && errno == EINTR { continue }
            if written <= 0 { exit(1) }
            done += written
        }
    }
}

extension Optional {
    func unwrap() throws -> Wrapped {
        guard let self else { throw StageError("no hello yet") }
        return self
    }
}
