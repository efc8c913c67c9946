import PeerShareCore
import Swarm
import XCTest

final class TokenBucketTests: XCTestCase {
    func testLongRunRateHoldsWithChunksLargerThanTheBurst() {
        var bucket = TokenBucket(rate: 1_000_000, now: 0)
        var now = 0.0
        var sent = 0
        // Keep asking for 256 KiB chunks for 10 virtual seconds.
        while now < 10 {
            let wait = bucket.take(262_144, now: now)
            if wait == 0 { sent += 262_144 } else { now += wait }
        }
        let rate = Double(sent) / 10
        XCTAssertEqual(rate, 1_000_000, accuracy: 1_000_000 * 0.05, "within 5 % over a 10 s window")
    }

    func testUnlimitedNeverWaitsAndRefundsReturnTokens() {
        var free = TokenBucket(rate: 0, now: 0)
        XCTAssertEqual(free.take(1 << 30, now: 0), 0)
        var bucket = TokenBucket(rate: 100, now: 0)
        XCTAssertEqual(bucket.take(1000, now: 0), 0, "positive balance: goes into debt")
        XCTAssertGreaterThan(bucket.take(1, now: 0), 9, "then waits for the debt to be paid")
        bucket.refund(1000)
        XCTAssertEqual(bucket.take(1, now: 0), 0)
    }

    func testRateParsing() throws {
        XCTAssertEqual(try ByteRate.parse("5MB/s"), 5_000_000)
        XCTAssertEqual(try ByteRate.parse("512KiB/s"), 524_288)
        XCTAssertEqual(try ByteRate.parse("1.5 MiB"), 1_572_864)
        XCTAssertEqual(try ByteRate.parse("800000"), 800_000)
        XCTAssertEqual(try ByteRate.parse("0"), 0)
        XCTAssertEqual(try ByteRate.parse("unlimited"), 0)
        for bad in ["fast", "-1MB/s", "5 parsecs", "", "MB/s"] {
            XCTAssertThrowsError(try ByteRate.parse(bad), bad)
        }
    }
}
