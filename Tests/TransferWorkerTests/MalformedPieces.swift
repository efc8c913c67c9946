import PeerShareCore
import PeerWire
import Wire

/// Piece frames whose layout is wrong, each of which a downloading connection must leave
/// for `PeerMessage` to refuse rather than take in place.
enum MalformedPieces {
    static var frames: [[UInt8]] {
        // The inner length says one byte more than the frame holds.
        var lying = ByteWriter()
        lying.u32(2 + 4 + 4 + 10)
        lying.u16(PeerMessage.Tag.piece.rawValue)
        lying.u32(1)
        lying.u32(11)
        lying.raw([UInt8](repeating: 0xAB, count: 10))
        // A piece larger than any chunk (and than any slot).
        let huge = Manifest.maxChunkSize + 1
        var oversized = ByteWriter()
        oversized.u32(UInt32(2 + 4 + 4 + huge))
        oversized.u16(PeerMessage.Tag.piece.rawValue)
        oversized.u32(1)
        oversized.u32(UInt32(huge))
        oversized.raw([UInt8](repeating: 0, count: huge))
        // Too short to hold an index and a length.
        let stub = Frame(type: PeerMessage.Tag.piece.rawValue, payload: [0, 0, 0, 1]).encoded()
        return [lying.bytes, oversized.bytes, stub]
    }
}
