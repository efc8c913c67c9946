import NIOCore
import NIOEmbedded
import PeerShareCore
import PeerWire
import Wire
import XCTest

@testable import TransferWorker

/// The downloading connections' reader, over a channel: a plaintext piece's chunk is copied
/// read by read into a slot of the pool; everything else comes out as the decoder gives it.
final class ArrivingFrameReaderTests: XCTestCase {
    /// Slots of `slotBytes` in memory of its own, handed out as a transfer worker's pool would.
    final class Room: ArrivingPieceRoom {
        let slotBytes = 128 << 10
        let memory: UnsafeMutableRawBufferPointer
        var free = [3, 2, 1, 0]
        var taken = 0
        var abandoned: [Int] = []
        var refuse = false
        var waiting: [ArrivingFrameReader] = []

        init() { memory = .allocate(byteCount: 4 * (128 << 10), alignment: 64) }
        deinit { memory.deallocate() }

        func slot(forArrivingPiece length: Int, peerID: Int) -> ArrivingPieceSlot {
            guard length <= slotBytes else { return .never }
            guard !refuse, let slot = free.popLast() else { return .later }
            taken += 1
            return .slot(slot, memory: bytes(slot, length))
        }

        func abandon(slot: Int) {
            abandoned.append(slot)
            free.append(slot)
        }

        func waitForSlot(_ reader: ArrivingFrameReader, peerID: Int) {
            waiting.append(reader)
        }

        func bytes(_ slot: Int, _ length: Int) -> UnsafeMutableRawBufferPointer {
            UnsafeMutableRawBufferPointer(rebasing: memory[(slot * slotBytes)..<(slot * slotBytes + length)])
        }
    }

    /// Feeds `stream` to a reader in reads of `readSize` bytes; what came out.
    private func read(_ stream: [UInt8], readSize: Int, room: Room) throws -> [ArrivingFrame] {
        let channel = EmbeddedChannel(handler: ArrivingFrameReader(room: room, peerID: 1))
        var out: [ArrivingFrame] = []
        for start in stride(from: 0, to: stream.count, by: readSize) {
            try channel.writeInbound(ByteBuffer(bytes: stream[start..<min(stream.count, start + readSize)]))
            while let frame = try channel.readInbound(as: ArrivingFrame.self) { out.append(frame) }
        }
        return out
    }

    private let chunk = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }

    func testAPieceIsCopiedIntoASlotAndOtherFramesAreDecoded() throws {
        let stream =
            PeerMessage.have(index: 3).frame().encoded() + PeerMessage.piece(index: 9, data: chunk).frame().encoded()
            + PeerMessage.request(index: 4).frame().encoded()
        for readSize in [1, 5, 13, 1000, 65_536, stream.count] {
            let room = Room()
            let frames = try read(stream, readSize: readSize, room: room)
            XCTAssertEqual(frames.count, 3, "reads of \(readSize)")
            guard case .frame(let have) = frames[0], case .pieceInSlot(9, let slot, chunk.count) = frames[1],
                case .frame(let request) = frames[2]
            else { return XCTFail("reads of \(readSize): \(frames)") }
            XCTAssertEqual(try PeerMessage(frame: have), .have(index: 3))
            XCTAssertEqual(Array(room.bytes(slot, chunk.count)), chunk, "reads of \(readSize)")
            XCTAssertEqual(try PeerMessage(frame: request), .request(index: 4))
            XCTAssertEqual(room.taken, 1)
            XCTAssertEqual(room.abandoned, [])
        }
    }

    /// Sealed frames are gathered whole. Read in reads that never end where a frame does,
    /// 200 frames of 100 KB (20 MB) must come out whole while the reader holds room for no
    /// more than a frame and a read: it grew by doubling for as long as the stream ran.
    func testSealedFramesInUnalignedReadsKeepTheReaderBounded() throws {
        let payload = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        var frame: [UInt8] = []
        let length = UInt32(2 + payload.count)
        frame += [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
        frame += [UInt8(PeerMessage.sealedFrameType >> 8), UInt8(PeerMessage.sealedFrameType & 0xFF)]
        frame += payload
        let stream = Array([[UInt8]](repeating: frame, count: 200).joined())
        let reader = ArrivingFrameReader(room: Room(), peerID: 1)
        let channel = EmbeddedChannel(handler: reader)
        var sealed = 0
        var largest = 0
        for start in stride(from: 0, to: stream.count, by: 150_001) {
            try channel.writeInbound(ByteBuffer(bytes: stream[start..<min(stream.count, start + 150_001)]))
            while let arrived = try channel.readInbound(as: ArrivingFrame.self) {
                guard case .sealed(let bytes) = arrived, Array(bytes.readableBytesView) == payload else {
                    return XCTFail("frame \(sealed): \(arrived)")
                }
                sealed += 1
            }
            largest = max(largest, reader.gatheredCapacity)
        }
        XCTAssertEqual(sealed, 200)
        XCTAssertLessThanOrEqual(largest, 512 << 10, "room held for what was gathered")
    }

    /// The chunk is in the slot as it arrives, not gathered first: half a piece read, half
    /// of it is already there.
    func testTheChunkReachesTheSlotReadByRead() throws {
        let room = Room()
        let channel = EmbeddedChannel(handler: ArrivingFrameReader(room: room, peerID: 1))
        let stream = PeerMessage.piece(index: 2, data: chunk).frame().encoded()
        let half = ArrivingFrameReader.pieceFrameHead + chunk.count / 2
        try channel.writeInbound(ByteBuffer(bytes: stream[..<half]))
        XCTAssertNil(try channel.readInbound(as: ArrivingFrame.self))
        XCTAssertEqual(room.taken, 1)
        let slot = 0
        XCTAssertEqual(Array(room.bytes(slot, chunk.count / 2)), Array(chunk[..<(chunk.count / 2)]))
        try channel.writeInbound(ByteBuffer(bytes: stream[half...]))
        guard case .pieceInSlot(2, slot, chunk.count) = try channel.readInbound(as: ArrivingFrame.self) else {
            return XCTFail("no piece")
        }
        XCTAssertEqual(Array(room.bytes(slot, chunk.count)), chunk)
    }

    /// No slot free: the reader asks to wait for one (its connection is then not read, and
    /// TCP's window holds the peer back); given one, the piece goes into it as usual.
    func testWithNoSlotTheConnectionWaitsForOne() throws {
        let room = Room()
        room.refuse = true
        let channel = EmbeddedChannel(handler: ArrivingFrameReader(room: room, peerID: 1))
        let stream =
            PeerMessage.piece(index: 5, data: chunk).frame().encoded() + PeerMessage.have(index: 8).frame().encoded()
        try channel.writeInbound(ByteBuffer(bytes: stream[..<3000]))
        XCTAssertEqual(room.waiting.count, 1)
        XCTAssertNil(try channel.readInbound(as: ArrivingFrame.self))
        XCTAssertEqual(room.waiting.first?.retry(), false, "still no slot")
        room.refuse = false
        XCTAssertEqual(room.waiting.first?.retry(), true)
        XCTAssertEqual(
            Array(room.bytes(0, 3000 - ArrivingFrameReader.pieceFrameHead)),
            Array(chunk[..<(3000 - ArrivingFrameReader.pieceFrameHead)]),
            "what was read while waiting went into the slot")
        try channel.writeInbound(ByteBuffer(bytes: stream[3000...]))
        guard case .pieceInSlot(5, let slot, chunk.count) = try channel.readInbound(as: ArrivingFrame.self),
            case .frame(let have) = try channel.readInbound(as: ArrivingFrame.self)
        else { return XCTFail("no piece") }
        XCTAssertEqual(Array(room.bytes(slot, chunk.count)), chunk)
        XCTAssertEqual(try PeerMessage(frame: have), .have(index: 8))
    }

    /// A reader waiting for a slot that is read anyway keeps what arrives; past the reads
    /// that may be under way, the piece is handed on as it lies, and the next one still
    /// waits for a slot.
    func testAWholePieceWithNoSlotIsHandedOnAsItLies() throws {
        let room = Room()
        room.refuse = true
        let stream = PeerMessage.piece(index: 5, data: chunk).frame().encoded()
        let channel = EmbeddedChannel(handler: ArrivingFrameReader(room: room, peerID: 1))
        let repeats = 2 + ArrivingFrameReader.readsUnderWay / stream.count
        let both = Array([[UInt8]](repeating: stream, count: repeats).joined())
        for start in stride(from: 0, to: both.count, by: 4096) {
            try channel.writeInbound(ByteBuffer(bytes: both[start..<min(both.count, start + 4096)]))
        }
        guard case .piece(5, let bytes) = try channel.readInbound(as: ArrivingFrame.self) else {
            return XCTFail("no piece")
        }
        XCTAssertEqual(Array(bytes.readableBytesView), chunk)
        XCTAssertNil(try channel.readInbound(as: ArrivingFrame.self))
        XCTAssertEqual(room.waiting.count, 1)
        XCTAssertEqual(room.waiting.first?.retry(), false)
        room.refuse = false
        _ = room.waiting.first?.retry()
        guard case .pieceInSlot(5, let slot, chunk.count) = try channel.readInbound(as: ArrivingFrame.self) else {
            return XCTFail("no second piece")
        }
        XCTAssertEqual(Array(room.bytes(slot, chunk.count)), chunk)
    }

    func testAConnectionClosedMidPieceGivesItsSlotBack() throws {
        let room = Room()
        let channel = EmbeddedChannel(handler: ArrivingFrameReader(room: room, peerID: 1))
        let stream = PeerMessage.piece(index: 2, data: chunk).frame().encoded()
        try channel.writeInbound(ByteBuffer(bytes: stream[..<1000]))
        XCTAssertEqual(room.taken, 1)
        XCTAssertEqual(room.abandoned, [])
        _ = try channel.finish()
        XCTAssertEqual(room.abandoned, [0])
    }

    func testMalformedPiecesAreNotReadIntoSlots() throws {
        for bytes in MalformedPieces.frames {
            let room = Room()
            let frames = try read(bytes, readSize: 3000, room: room)
            guard frames.count == 1, case .frame(let frame) = frames[0] else { return XCTFail("\(frames)") }
            XCTAssertThrowsError(try PeerMessage(frame: frame))
            XCTAssertEqual(room.taken, 0)
        }
    }

    func testTheLengthIsCheckedBeforeTheBodyArrives() throws {
        let room = Room()
        let channel = EmbeddedChannel(handler: ArrivingFrameReader(room: room, peerID: 1))
        let declared = UInt32(PeerMessage.maxFrameLength + 1)
        var header = ByteBuffer()
        header.writeInteger(declared)
        header.writeInteger(PeerMessage.Tag.piece.rawValue)
        XCTAssertThrowsError(try channel.writeInbound(header)) { error in
            XCTAssertEqual(
                error as? FrameError, .tooLarge(length: declared, limit: PeerMessage.maxFrameLength))
        }
        // Nothing more is read from a connection that broke the framing.
        try channel.writeInbound(ByteBuffer(bytes: PeerMessage.have(index: 1).frame().encoded()))
        XCTAssertNil(try channel.readInbound(as: ArrivingFrame.self))
        XCTAssertEqual(room.taken, 0)
    }

    /// A manifest is gathered outside the read buffer; the piece right behind it, in the same
    /// reads, still goes into a slot.
    func testAPieceBehindAManifestStillGoesIntoASlot() throws {
        let manifest = (0..<(2 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let stream =
            PeerMessage.manifest(bytes: manifest).frame().encoded()
            + PeerMessage.piece(index: 2, data: chunk).frame().encoded()
        let room = Room()
        let frames = try read(stream, readSize: 50_000, room: room)
        guard frames.count == 2, case .frame(let first) = frames[0], case .pieceInSlot(2, let slot, _) = frames[1]
        else { return XCTFail("\(frames)") }
        XCTAssertEqual(try PeerMessage(frame: first), .manifest(bytes: manifest))
        XCTAssertEqual(Array(room.bytes(slot, chunk.count)), chunk)
    }
}
