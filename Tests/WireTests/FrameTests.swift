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
}
