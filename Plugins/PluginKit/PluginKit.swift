import Foundation

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
    enum MessageType: UInt16 {
        case hello = 0x7001, ready, open, close, encode, decode, result, error, handshake, handshakeReply
    }

    static let protocolVersion: UInt16 = 1
    /// Frames larger than this are refused before anything is allocated.
    static let maxFrame = 17 * 1024 * 1024 + 64 * 1024

    public static func run<Stage: PipelineStage>(_ type: Stage.Type) -> Never {
        var stage: Stage?
        while let (kind, payload) = readFrame() {
            var reader = Reader(payload)
            do {
                switch MessageType(rawValue: kind) {
                case .hello:
                    let version = try reader.u16()
                    guard version == protocolVersion else { throw StageError("protocol \(version) not supported") }
                    _ = try reader.string()  // the stage name pipeline.json gave us
                    var options: [String: String] = [:]
                    for _ in 0..<(try reader.u16()) { options[try reader.string()] = try reader.string() }
                    stage = try Stage(options: options)
                    var out = Writer()
                    out.u16(protocolVersion)
                    out.u16(Stage.version)
                    out.u8(Stage.takesPartInHandshake ? 1 : 0)
                    writeFrame(.ready, out.bytes)
                case .open:
                    var current = try stage.unwrap()
                    try current.open(connection: try reader.u32(), server: try reader.u8() != 0)
                    stage = current
                    writeFrame(.result, Writer.blob([]))
                case .close:
                    var current = try stage.unwrap()
                    current.close(connection: try reader.u32())
                    stage = current
                    writeFrame(.result, Writer.blob([]))
                case .encode:
                    let connection = try reader.u32()
                    let data = try reader.blob()
                    var current = try stage.unwrap()
                    let out = try current.encode(connection: connection, data)
                    stage = current
                    writeFrame(.result, Writer.blob(out))
                case .decode:
                    let connection = try reader.u32()
                    let limit = Int(try reader.u32())
                    let data = try reader.blob()
                    var current = try stage.unwrap()
                    let out = try current.decode(connection: connection, data, limit: limit)
                    stage = current
                    guard out.count <= limit else { throw StageError("decoded frame over the limit") }
                    writeFrame(.result, Writer.blob(out))
                case .handshake:
                    let connection = try reader.u32()
                    let received = try reader.blob()
                    var current = try stage.unwrap()
                    let (done, send) = try current.handshake(connection: connection, received: received)
                    stage = current
                    var out = Writer()
                    out.u8(done ? 1 : 0)
                    out.bytes += Writer.blob(send)
                    writeFrame(.handshakeReply, out.bytes)
                default:
                    throw StageError("unknown message type 0x\(String(kind, radix: 16))")
                }
            } catch {
                var out = Writer()
                out.string("\(error)")
                writeFrame(.error, out.bytes)
            }
        }
        exit(0)
    }

    private static func readExactly(_ count: Int) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress! + done, count - done) }
            if got < 0 && errno == EINTR { continue }
            if got <= 0 { return nil }
            done += got
        }
        return buffer
    }

    static func readFrame() -> (UInt16, [UInt8])? {
        guard let header = readExactly(4) else { return nil }
        let length = header.reduce(0) { $0 << 8 | Int($1) }
        guard length >= 2, length <= maxFrame, let body = readExactly(length) else { return nil }
        return (UInt16(body[0]) << 8 | UInt16(body[1]), Array(body[2...]))
    }

    static func writeFrame(_ type: MessageType, _ payload: [UInt8]) {
        var out = Writer()
        out.u32(UInt32(payload.count + 2))
        out.u16(type.rawValue)
        out.bytes += payload
        var done = 0
        while done < out.bytes.count {
            let written = out.bytes.withUnsafeBytes { write(1, $0.baseAddress! + done, $0.count - done) }
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

/// Big-endian reading and writing, as everywhere in PeerShare.
public struct Reader {
    let bytes: [UInt8]
    var offset = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func take(_ count: Int) throws -> ArraySlice<UInt8> {
        guard count >= 0, bytes.count - offset >= count else { throw StageError("truncated message") }
        defer { offset += count }
        return bytes[offset..<(offset + count)]
    }
    public mutating func u8() throws -> UInt8 { try take(1).first ?? 0 }
    public mutating func u16() throws -> UInt16 { try take(2).reduce(0) { $0 << 8 | UInt16($1) } }
    public mutating func u32() throws -> UInt32 { try take(4).reduce(0) { $0 << 8 | UInt32($1) } }
    public mutating func blob() throws -> [UInt8] { Array(try take(Int(try u32()))) }
    public mutating func string() throws -> String {
        String(decoding: try take(Int(try u16())), as: UTF8.self)
    }
}

public struct Writer {
    public var bytes: [UInt8] = []
    public init() {}
    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func u16(_ value: UInt16) { bytes += [UInt8(value >> 8), UInt8(value & 0xff)] }
    public mutating func u32(_ value: UInt32) {
        bytes += [UInt8(value >> 24), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff), UInt8(value & 0xff)]
    }
    public mutating func string(_ text: String) {
        let utf8 = Array(text.utf8.prefix(65535))
        u16(UInt16(utf8.count))
        bytes += utf8
    }
    static func blob(_ data: [UInt8]) -> [UInt8] {
        var out = Writer()
        out.u32(UInt32(data.count))
        out.bytes += data
        return out.bytes
    }
}
