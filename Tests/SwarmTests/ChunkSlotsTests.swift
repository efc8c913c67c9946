import Swarm
import XCTest

/// Who holds which slot of the shared chunk pool: slots are lent once, come back once, and
/// verified chunks stay cached only while no request needs their room.
final class ChunkSlotsTests: XCTestCase {
    func testAPoolIsCutIntoChunkSizedSlots() throws {
        let slots = try XCTUnwrap(ChunkSlots(poolBytes: 32 << 20, slotBytes: 512 << 10))
        XCTAssertEqual(slots.count, 64)
        XCTAssertEqual(slots.offset(of: 3), 3 * 512 * 1024)
        XCTAssertEqual(slots.cacheLimit, 16)
        // Small chunks: the bookkeeping stays bounded.
        XCTAssertEqual(ChunkSlots(poolBytes: 32 << 20, slotBytes: 16 << 10)?.count, ChunkSlots.maxSlots)
        XCTAssertNil(ChunkSlots(poolBytes: 4 << 20, slotBytes: 4 << 20), "one slot is no pool")
    }

    func testEachSlotHasItsLeadRoomBeforeItAndNoSlotOverlapsAnother() throws {
        // The pool the supervisor makes: as many 1 MiB slots as without the room.
        let slots = try XCTUnwrap(ChunkSlots(poolBytes: (16 << 20) + 256 * 64, slotBytes: 1 << 20, leadBytes: 64))
        XCTAssertEqual(slots.count, 16)
        XCTAssertEqual(slots.offset(of: 0), 64)
        for slot in 1..<slots.count {
            let previousEnd = slots.offset(of: slot - 1) + slots.slotBytes
            XCTAssertEqual(slots.offset(of: slot) - slots.leadBytes, previousEnd, "room, then slot, then the next room")
        }
        XCTAssertLessThanOrEqual(slots.offset(of: slots.count - 1) + slots.slotBytes, (16 << 20) + 256 * 64)
    }

    func testEverySlotIsLentOnceAndTheLastFreedIsReusedFirst() throws {
        var slots = try XCTUnwrap(ChunkSlots(poolBytes: 4, slotBytes: 1))
        let taken = (0..<4).compactMap { _ in slots.take() }
        XCTAssertEqual(Set(taken).count, 4)
        XCTAssertNil(slots.take(), "all four are out")
        slots.give(taken[2])
        slots.give(taken[2])  // a second give of the same slot changes nothing
        XCTAssertEqual(slots.freeCount, 1)
        XCTAssertEqual(slots.take(), taken[2])
        slots.give(taken[0])
        slots.give(taken[1])
        XCTAssertEqual(slots.take(), taken[1], "the pages touched last are reused first")
    }

    func testAVerifiedChunkIsServedFromItsSlotUntilItsRoomIsNeeded() throws {
        var slots = try XCTUnwrap(ChunkSlots(poolBytes: 8, slotBytes: 1))
        let a = try XCTUnwrap(slots.take())
        let b = try XCTUnwrap(slots.take())
        slots.keep(a, holding: 10, length: 1)
        slots.keep(b, holding: 11, length: 1)
        XCTAssertEqual(slots.cachedCount, 2)
        let pinned = try XCTUnwrap(slots.pin(10))
        XCTAssertEqual(pinned.slot, a)
        XCTAssertNil(slots.pin(12), "never verified here")
        // Six free slots, then the one unpinned cached chunk (11), then none: 10 is being sent.
        for _ in 0..<6 { XCTAssertNotNil(slots.take()) }
        XCTAssertEqual(slots.take(), b)
        XCTAssertNil(slots.pin(11), "evicted")
        XCTAssertNil(slots.take(), "the pinned chunk keeps its slot")
        slots.unpin(a)
        XCTAssertEqual(slots.take(), a)
    }

    func testTheCacheHoldsAtMostAQuarterOfThePoolAndForgetsTheLeastRecentlyUsed() throws {
        var slots = try XCTUnwrap(ChunkSlots(poolBytes: 8, slotBytes: 1))
        XCTAssertEqual(slots.cacheLimit, 2)
        for index in 0..<3 {
            let slot = try XCTUnwrap(slots.take())
            slots.keep(slot, holding: index, length: 1)
            if index == 0 { _ = slots.pin(0).map { slots.unpin($0.slot) } }
        }
        XCTAssertEqual(slots.cachedCount, 2)
        XCTAssertNil(slots.pin(0), "the oldest made room for the newest")
        XCTAssertNotNil(slots.pin(1))
        XCTAssertNotNil(slots.pin(2))
        // A chunk cached twice keeps one slot.
        let again = try XCTUnwrap(slots.take())
        slots.keep(again, holding: 2, length: 1)
        XCTAssertEqual(slots.cachedCount, 2)
        XCTAssertEqual(slots.freeCount, 6)
    }
}
