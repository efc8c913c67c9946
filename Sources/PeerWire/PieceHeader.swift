import PeerShareCore

/// What precedes a chunk in a piece message: `u16 type ‖ u32 index ‖ u32 length`. A
/// plaintext piece frame's type and payload begin so, and so does a sealed piece's
/// plaintext (the inner message). Read and written where the bytes lie, for the paths that
/// keep a chunk in place: the socket's read buffer, a slot of the chunk pool.
public enum PieceHeader {
    public static let bytes = 10

    /// Writes the header for chunk `index` of `length` bytes into the first `bytes` of
    /// `memory` (which must hold them).
    public static func write(index: UInt32, length: Int, into memory: UnsafeMutableRawBufferPointer) {
        guard memory.count >= bytes else { return }
        memory.storeBytes(of: PeerMessage.Tag.piece.rawValue.bigEndian, toByteOffset: 0, as: UInt16.self)
        memory.storeBytes(of: index.bigEndian, toByteOffset: 2, as: UInt32.self)
        memory.storeBytes(of: UInt32(truncatingIfNeeded: length).bigEndian, toByteOffset: 6, as: UInt32.self)
    }

    /// The chunk's index and length when `message` is a whole piece message (header, then
    /// exactly as many bytes as its length field says, at most a chunk); nil for anything else.
    public static func parse(_ message: UnsafeRawBufferPointer) -> (index: UInt32, length: Int)? {
        guard message.count >= bytes,
            UInt16(bigEndian: message.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
                == PeerMessage.Tag.piece.rawValue
        else { return nil }
        let index = UInt32(bigEndian: message.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        let length = Int(UInt32(bigEndian: message.loadUnaligned(fromByteOffset: 6, as: UInt32.self)))
        guard length == message.count - bytes, length <= Manifest.maxChunkSize else { return nil }
        return (index, length)
    }
}
