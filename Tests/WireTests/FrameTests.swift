import Wire
import XCTest

/// The one framing every channel uses: the length is checked before anything is sized for it.
final class FrameTests: XCTestCase {
    func testHugeLengthPrefixIsRefusedBeforeAllocating() {
        var decoder = FrameDecoder(maxFrameLength: 1024)
        decoder.append([0xFF, 0xFF, 0xFF, 0xFF])
        XCTAssertThrowsError(try decoder.next()) { error in
            XCTAssertEqual(error as? FrameError, .tooLarge(length: 0xFFFF_FFFF, limit: 1024))
        }
        var tiny = FrameDecoder(maxFrameLength: 1024)
        tiny.append([0, 0, 0, 1, 0])
        XCTAssertThrowsError(try tiny.next())
    }

    func testFramesSplitAtEveryByteBoundaryReassemble() throws {
        let frames = (0..<20).map { Frame(type: UInt16($0), payload: [UInt8](repeating: UInt8($0), count: $0 * 7)) }
        let stream = frames.flatMap { $0.encoded() }
        var decoder = FrameDecoder(maxFrameLength: 1024)
        var decoded: [Frame] = []
        for byte in stream {
            decoder.append([byte])
            while let frame = try decoder.next() { decoded.append(frame) }
        }
        XCTAssertEqual(decoded, frames)
        XCTAssertEqual(decoder.bufferedCount, 0)
    }

    func testReadersNeverReadPastTheEnd() {
        var reader = ByteReader([0, 0, 0, 9, 1])
        XCTAssertThrowsError(try reader.blob(limit: 100), "a blob claiming 9 bytes with 1 left")
        var big = ByteReader([0, 0, 1, 0] + [UInt8](repeating: 0, count: 256))
        XCTAssertThrowsError(try big.blob(limit: 100), "a blob over its limit")
    }

    func testBitfield() {
        var bits = ChunkBitfield(count: 10)
        bits[0] = true
        bits[9] = true
        XCTAssertEqual(bits.bytes, [0x80, 0x40])
        XCTAssertEqual(bits.missing, [1, 2, 3, 4, 5, 6, 7, 8])
        XCTAssertNil(ChunkBitfield(bytes: [0xFF, 0xFF], count: 10), "spare bits must be zero")
        XCTAssertNil(ChunkBitfield(bytes: [0xFF], count: 10), "wrong length")
    }

    /// A writer that keeps large blobs aside gives, part by part, exactly the bytes a plain
    /// writer gives; small blobs are copied as usual.
    func testKeptBlobsComeOutInTheirPlaces() {
        let large = (0..<5000).map { UInt8(truncatingIfNeeded: $0) }
        let small: [UInt8] = [1, 2, 3]
        var plain = ByteWriter()
        var keeping = ByteWriter(capacity: 16, keepingBlobsFrom: 1000)
        func fill(_ w: inout ByteWriter) {
            w.u16(7)
            w.blob(large)
            w.blob(small)
            w.u32(9)
            w.blob(Array(large.reversed()))
            w.u8(1)
        }
        fill(&plain)
        fill(&keeping)
        var parts: [UInt8] = []
        keeping.forEachPart { parts += $0 }
        XCTAssertEqual(parts, plain.bytes)
        XCTAssertEqual(keeping.count, plain.bytes.count)
        XCTAssertEqual(keeping.bytes.count, plain.bytes.count - 2 * large.count, "the large blobs were not copied")
    }
}
