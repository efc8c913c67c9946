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
        while let (kind, payload) = readFrame() {
            var reader = ByteReader(payload)
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
                    writeFrame(.result, blob([]))
                case .close:
                    var current = try stage.unwrap()
                    current.close(connection: try reader.u32())
                    stage = current
                    writeFrame(.result, blob([]))
                case .encode:
                    let connection = try reader.u32()
                    let data = try reader.blob(limit: PluginProtocol.maxFrame)
                    var current = try stage.unwrap()
                    let out = try current.encode(connection: connection, data)
                    stage = current
                    writeFrame(.result, blob(out))
                case .decode:
                    let connection = try reader.u32()
                    let limit = Int(try reader.u32())
                    let data = try reader.blob(limit: PluginProtocol.maxFrame)
                    var current = try stage.unwrap()
                    let out = try current.decode(connection: connection, data, limit: limit)
                    stage = current
                    guard out.count <= limit else { throw StageError("decoded frame over the limit") }
                    writeFrame(.result, blob(out))
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

    /// Reads stdin into the shared frame decoder, whose length check runs before any frame
    /// is allocated; nil at EOF or on a malformed frame (the host then restarts us).
    nonisolated(unsafe) private static var decoder = FrameDecoder(maxFrameLength: PluginProtocol.maxFrame)

    static func readFrame() -> (UInt16, [UInt8])? {
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        while true {
            do {
                if let frame = try decoder.next() { return (frame.type, frame.payload) }
            } catch {
                return nil
            }
            let got = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
            if got < 0 && errno == EINTR { continue }
            if got <= 0 { return nil }
            decoder.append(buffer[0..<got])
        }
    }

    static func blob(_ data: [UInt8]) -> [UInt8] {
        var out = ByteWriter(capacity: data.count + 4)
        out.blob(data)
        return out.bytes
    }

    static func writeFrame(_ type: MessageType, _ payload: [UInt8]) {
        let bytes = Frame(type: type.rawValue, payload: payload).encoded()
        var done = 0
        while done < bytes.count {
            let written = bytes.withUnsafeBytes { write(1, $0.baseAddress.map { $0 + done }, $0.count - done) }
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
