import PeerShareCore
import Wire

/// The plugin protocol's replies as the host reads them (docs/PLUGINS.md): pure decoders,
/// so that what a plugin (any program, maybe hostile) answers is parsed in one place, with
/// every length checked, and can be fuzzed without a process.
public enum PluginReply {
    /// `ready`: the plugin's protocol version, its stage version, and whether it takes part
    /// in connection handshakes (flag bit 0; the flags byte is optional).
    public static func ready(_ payload: [UInt8]) throws -> (
        protocolVersion: UInt16, stageVersion: UInt16, handshake: Bool
    ) {
        var r = ByteReader(payload)
        let protocolVersion = try r.u16()
        let stageVersion = try r.u16()
        var handshake = false
        if r.remaining > 0 { handshake = try r.u8() & 1 != 0 }
        try r.expectEnd()
        return (protocolVersion, stageVersion, handshake)
    }

    /// `handshakeReply`: done, and at most 4 KiB to send to the peer's instance.
    public static func handshakeReply(_ payload: [UInt8]) throws -> (done: Bool, data: [UInt8]) {
        var r = ByteReader(payload)
        let done = try r.bool()
        let data = try r.blob(limit: maxHandshakeData, what: "handshake data")
        try r.expectEnd()
        return (done, data)
    }

    public static let maxHandshakeData = 4096

    /// `result`: one blob (u32 length ‖ bytes) that fills the rest of the frame. The host
    /// reads the blob's bytes straight into an array of their own, so it parses the frame
    /// as it arrives: given the frame's length field (already checked against the limit) and
    /// the first four bytes of its payload, how many bytes the blob holds: exactly the rest.
    public static func resultBlobCount(frameLength: Int, blobLength: [UInt8]) throws -> Int {
        guard frameLength >= 6, blobLength.count == 4 else {
            throw Malformed(description: "a result of \(max(0, frameLength - 2)) bytes has no blob")
        }
        let declared = blobLength.reduce(0) { $0 << 8 | Int($1) }
        guard declared == frameLength - 6 else {
            throw Malformed(description: "a result blob of \(declared) bytes in a frame of \(frameLength - 6)")
        }
        return declared
    }

    public struct Malformed: Error, CustomStringConvertible {
        public var description: String
    }

    /// `error`: the plugin's message, made inert (it is shown to the user).
    public static func error(_ payload: [UInt8]) -> String {
        var r = ByteReader(payload)
        return InertText.make((try? r.string()) ?? "?")
    }
}
