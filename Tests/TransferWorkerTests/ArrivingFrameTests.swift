import NIOCore
import PeerShareCore
import PeerWire
import Wire
import XCTest

@testable import TransferWorker

/// The downloading connections' decoder: a well-formed plaintext piece stays where it was
/// read; anything else is a `Frame`, exactly as `FrameChannelDecoder` would give it.
final class ArrivingFrameTests: XCTestCase {
    private func decodeAll(_ bytes: [UInt8], in pieces: Int = 1) throws -> [ArrivingFrame] {
        var decoder = ArrivingFrameDecoder(maxFrameLength: PeerMessage.maxFrameLength)
        var buffer = ByteBuffer()
        var out: [ArrivingFrame] = []
        // Fed in `pieces` parts, as reads from a socket would bring them.
        let step = max(1, bytes.count / pieces)
        var start = 0
        while start < bytes.count {
            buffer.writeBytes(bytes[start..<min(bytes.count, start + step)])
            start += step
            while let frame = try decoder.decode(buffer: &buffer) { out.append(frame) }
        }
        XCTAssertEqual(buffer.readableBytes, 0, "every byte was consumed")
        return out
    }

    func testAPieceStaysInTheReadBufferAndOtherFramesAreDecoded() throws {
        let chunk = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let stream =
            PeerMessage.have(index: 3).frame().encoded() + PeerMessage.piece(index: 9, data: chunk).frame().encoded()
            + PeerMessage.request(index: 4).frame().encoded()
        for parts in [1, 3, 1000] {
            let frames = try decodeAll(stream, in: parts)
            XCTAssertEqual(frames.count, 3)
            guard case .frame(let have) = frames[0], case .piece(let index, let bytes) = frames[1],
                case .frame(let request) = frames[2]
            else { return XCTFail("wrong kinds: \(frames)") }
            XCTAssertEqual(try PeerMessage(frame: have), .have(index: 3))
            XCTAssertEqual(index, 9)
            XCTAssertEqual(Array(bytes.readableBytesView), chunk)
            XCTAssertEqual(try PeerMessage(frame: request), .request(index: 4))
            // The copy back into a Frame is the frame the peer sent.
            XCTAssertEqual(try PeerMessage(frame: frames[1].frame), .piece(index: 9, data: chunk))
        }
    }

    func testSealedFramesLongEnoughToBePiecesStayInTheReadBuffer() throws {
        let long = Frame(type: PeerMessage.sealedFrameType, payload: Array(repeating: 7, count: 5000))
        let short = Frame(type: PeerMessage.sealedFrameType, payload: Array(repeating: 8, count: 22))
        let frames = try decodeAll(long.encoded() + short.encoded(), in: 7)
        XCTAssertEqual(frames.count, 2)
        guard case .sealed(let payload) = frames[0], case .frame(let small) = frames[1] else {
            return XCTFail("\(frames)")
        }
        XCTAssertEqual(Array(payload.readableBytesView), long.payload)
        XCTAssertEqual(frames[0].frame, long)
        XCTAssertEqual(small, short, "a have or a request, sealed, is decoded as it is")
    }

    func testAMalformedPieceIsLeftForTheParserToRefuse() throws {
        for bytes in MalformedPieces.frames {
            let frames = try decodeAll(bytes)
            guard frames.count == 1, case .frame(let frame) = frames[0] else { return XCTFail("\(frames)") }
            XCTAssertThrowsError(try PeerMessage(frame: frame))
        }
    }

    func testTheLengthIsCheckedBeforeTheBodyArrives() {
        var decoder = ArrivingFrameDecoder(maxFrameLength: 1024)
        var buffer = ByteBuffer(bytes: [0, 0, 0x10, 0, 0x50, 0x06])
        XCTAssertThrowsError(try decoder.decode(buffer: &buffer)) { error in
            XCTAssertEqual(error as? FrameError, .tooLarge(length: 0x1000, limit: 1024))
        }
    }

    /// A manifest (10 MB for 100,000 files) is gathered outside the read buffer as it
    /// arrives, not piled up there; a piece right behind it is still taken in place.
    func testAManifestIsGatheredOutsideTheReadBuffer() throws {
        let manifest = (0..<(2 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let chunk = [UInt8](repeating: 5, count: 70_000)
        let stream =
            PeerMessage.manifest(bytes: manifest).frame().encoded()
            + PeerMessage.piece(index: 2, data: chunk).frame().encoded()
        var decoder = ArrivingFrameDecoder(maxFrameLength: PeerMessage.maxFrameLength)
        var buffer = ByteBuffer()
        var frames: [ArrivingFrame] = []
        var largestHeld = 0
        for start in stride(from: 0, to: stream.count, by: 50_000) {
            buffer.writeBytes(stream[start..<min(stream.count, start + 50_000)])
            while let frame = try decoder.decode(buffer: &buffer) { frames.append(frame) }
            if frames.isEmpty { largestHeld = max(largestHeld, buffer.readableBytes) }
        }
        XCTAssertLessThan(largestHeld, 50_000)
        guard frames.count == 2, case .frame(let first) = frames[0], case .piece(2, let bytes) = frames[1] else {
            return XCTFail("\(frames)")
        }
        XCTAssertEqual(try PeerMessage(frame: first), .manifest(bytes: manifest))
        XCTAssertEqual(Array(bytes.readableBytesView), chunk)
    }
}
