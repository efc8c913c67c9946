/// The plugin protocol's constants (docs/PLUGINS.md), shared by its two ends: the transfer
/// worker's `PluginChannel` and the Swift template `PluginKit`. Messages are ordinary
/// `Frame`s; the payloads are written with `ByteWriter` and read with `ByteReader`.
public enum PluginProtocol {
    public static let version: UInt16 = 1
    /// A plugin frame carries at most one peer frame (16 MiB + headers) plus growth.
    public static let maxFrame = 17 * 1024 * 1024 + 64 * 1024

    /// Frame types. Host to plugin: hello, open, close, encode, decode, handshake.
    /// Plugin to host: ready, result, error, handshakeReply.
    public enum MessageType: UInt16, Sendable, CaseIterable {
        case hello = 0x7001
        case ready = 0x7002
        case open = 0x7003
        case close = 0x7004
        case encode = 0x7005
        case decode = 0x7006
        case result = 0x7007
        case error = 0x7008
        case handshake = 0x7009
        case handshakeReply = 0x700A
    }
}
