/// A set of chunk indices as a bitfield: bit i is chunk i, most significant bit first.
public struct ChunkBitfield: Equatable, Sendable {
    public private(set) var bytes: [UInt8]
    public let count: Int
    /// Bits set, kept as bits change: asked after every chunk, and a share of 100,000 chunks
    /// cannot afford a count over all of them each time.
    public private(set) var setCount = 0

    public init(count: Int) {
        self.count = count
        self.bytes = [UInt8](repeating: 0, count: (count + 7) / 8)
    }

    public init?(bytes: [UInt8], count: Int) {
        guard bytes.count == (count + 7) / 8 else { return nil }
        self.count = count
        self.bytes = bytes
        // Spare bits past the end must be zero, so two equal sets have equal bytes.
        for index in count..<(bytes.count * 8) where self[index] { return nil }
        setCount = bytes.reduce(0) { $0 + $1.nonzeroBitCount }
    }

    public subscript(index: Int) -> Bool {
        // Inlinable: the chunk scheduler reads bits in its innermost loop, from another module.
        @inlinable get { bytes[index >> 3] & (0x80 >> UInt8(index & 7)) != 0 }
        set {
            let mask: UInt8 = 0x80 >> UInt8(index & 7)
            let wasSet = bytes[index >> 3] & mask != 0
            guard wasSet != newValue else { return }
            if newValue {
                bytes[index >> 3] |= mask
                setCount += 1
            } else {
                bytes[index >> 3] &= ~mask
                setCount -= 1
            }
        }
    }

    public var isComplete: Bool { setCount == count }
    public var missing: [Int] { (0..<count).filter { !self[$0] } }
}
