import PeerShareCore
import PeerWire
import Wire
import XCTest

final class PeerMessageTests: XCTestCase {
    static let shareID = [UInt8](repeating: 0xAB, count: 32)

    func testPeerMessagesRoundTripAndRejectStrangers() throws {
        let messages: [PeerMessage] = [
            .hello(
                version: 1, shareID: Self.shareID, stages: [StageDescriptor(name: "zlib", version: 1, required: true)]),
            .helloAccepted(version: 1, chunkCount: 9, stages: []),
            .helloAccepted(
                version: 2, chunkCount: 9, stages: [], observed: WireAddress(ip: [11, 0, 113, 50], port: 4000)),
            .hello(version: 2, shareID: Self.shareID, stages: [], observed: WireAddress(ip: [1, 2, 3, 4], port: 5)),
            .getManifest, .stageHandshake(stage: 1, data: [9]),
            .manifest(bytes: [1, 2, 3]), .request(index: 4), .piece(index: 4, data: [7, 7]),
            .reject(index: 4, reason: "no"), .error(code: 3, message: "bye"), .bitfield(bits: [0xF0]),
            .have(index: 5), .cancel(index: 6),
        ]
        XCTAssertEqual(Set(messages.map(\.tag)), Set(PeerMessage.Tag.allCases))
        for message in messages {
            XCTAssertEqual(try PeerMessage(frame: message.frame()), message)
        }
        let oversized = Frame(
            type: PeerMessage.Tag.bitfield.rawValue,
            payload: [0, 1, 0, 1] + [UInt8](repeating: 0xFF, count: 65537))
        XCTAssertThrowsError(try PeerMessage(frame: oversized), "a bitfield longer than any manifest allows")
        var bad = PeerMessage.hello(version: 1, shareID: Self.shareID, stages: []).frame()
        bad.payload[0] = UInt8(ascii: "X")
        XCTAssertThrowsError(try PeerMessage(frame: bad))
    }
}
