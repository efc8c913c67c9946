import PeerWire
import XCTest

/// The host reads a plugin's `result` in two steps, its blob's bytes straight into their own
/// array; `resultBlobCount` is the rule between the steps. A plugin is any program, so each
/// way its answer can lie must be refused before anything is sized.
final class PluginReplyTests: XCTestCase {
    func testAResultBlobFillsTheRestOfItsFrame() throws {
        XCTAssertEqual(try PluginReply.resultBlobCount(frameLength: 6 + 524_288, blobLength: [0, 8, 0, 0]), 524_288)
        XCTAssertEqual(try PluginReply.resultBlobCount(frameLength: 6, blobLength: [0, 0, 0, 0]), 0)
    }

    func testABlobClaimingMoreOrLessThanItsFrameIsRefused() {
        // 1 GiB claimed in a frame of 4 bytes: refused by the count, with nothing allocated.
        XCTAssertThrowsError(try PluginReply.resultBlobCount(frameLength: 10, blobLength: [0x40, 0, 0, 0])) {
            XCTAssertEqual("\($0)", "a result blob of 1073741824 bytes in a frame of 4")
        }
        // Fewer bytes than the frame holds would leave the rest to be taken as the next answer.
        XCTAssertThrowsError(try PluginReply.resultBlobCount(frameLength: 10, blobLength: [0, 0, 0, 3]))
    }

    func testAResultTooShortForABlobIsRefused() {
        for frameLength in 2..<6 {
            XCTAssertThrowsError(try PluginReply.resultBlobCount(frameLength: frameLength, blobLength: [])) {
                XCTAssertEqual("\($0)", "a result of \(frameLength - 2) bytes has no blob")
            }
        }
    }
}
