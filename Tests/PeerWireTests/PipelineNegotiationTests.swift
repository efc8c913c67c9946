import PeerWire
import XCTest

final class PipelineNegotiationTests: XCTestCase {
    private func stage(_ name: String, version: UInt16 = 1, required: Bool = true) -> StageDescriptor {
        StageDescriptor(name: name, version: version, required: required)
    }

    private func reason(_ result: Result<[String], PipelineNegotiation.Mismatch>) -> String? {
        if case .failure(let mismatch) = result { return mismatch.description }
        return nil
    }

    func testEachSideNamesTheStageInItsOwnWords() {
        XCTAssertEqual(
            reason(PipelineNegotiation.agree(local: [stage("zlib")], remote: [])),
            "we require stage 'zlib', which the peer does not run")
        XCTAssertEqual(
            reason(PipelineNegotiation.agree(local: [], remote: [stage("zlib")])),
            "the peer requires stage 'zlib', which we do not run")
        XCTAssertEqual(
            reason(PipelineNegotiation.agree(local: [stage("pad", version: 2)], remote: [stage("pad", version: 1)])),
            "stage 'pad': we run version 2, the peer version 1")
        XCTAssertEqual(
            reason(
                PipelineNegotiation.agree(
                    local: [stage("pad", version: 1, required: false)], remote: [stage("pad", version: 3)])),
            "stage 'pad': the peer runs version 3, we run version 1")
    }

    func testOptionalStagesOnOneSideAreSkipped() throws {
        let result = PipelineNegotiation.agree(
            local: [stage("zlib", required: false), stage("sodium")], remote: [stage("sodium")])
        XCTAssertEqual(try result.get(), ["sodium"])
    }
}
