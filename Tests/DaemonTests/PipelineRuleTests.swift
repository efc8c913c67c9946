import PeerShareCore
import Sessions
import Testing

/// The one rule `share`, `get` and the daemon all follow for encryption (`PeerPipeline`).
@Suite struct PipelineRuleTests {
    static let id = String(repeating: "cd", count: 32)
    let zlib = StageSpec(name: "zlib", kind: .zlib(level: 6), required: false)

    @Test func anEncryptedShareGetsARequiredSodiumStageAndAKeyOrKeepsItsOwn() throws {
        let public_ = try PeerPipeline.forShare(stages: [zlib], encrypt: false)
        #expect(public_.secret == nil && !public_.encrypts)
        let fresh = try PeerPipeline.forShare(stages: [zlib], encrypt: true)
        #expect(fresh.stages.map(\.name) == ["zlib", "sodium"] && fresh.stages.last?.required == true)
        #expect(fresh.secret?.count == ShareLink.secretBytes)
        let kept = try PeerPipeline.forShare(stages: [zlib], encrypt: true, secret: fresh.secret)
        #expect(kept.secret == fresh.secret)
        // pipeline.json's own sodium stage is not doubled.
        let configured = try PeerPipeline.forShare(stages: fresh.stages, encrypt: true)
        #expect(configured.stages.count == 2)
    }

    @Test func aLinkWithAKeyTurnsEncryptionOnAndAnEncryptingPipelineRefusesALinkWithout() throws {
        let keyed = try ShareLink.parse(
            "peershare://\(Self.id)?key=" + String(repeating: "ef", count: ShareLink.secretBytes))
        let bare = try ShareLink.parse("peershare://\(Self.id)")
        #expect(try PeerPipeline.forDownload(stages: [zlib], link: keyed).encrypts)
        #expect(try !PeerPipeline.forDownload(stages: [zlib], link: bare).encrypts)
        let encrypting = try PeerPipeline.forShare(stages: [], encrypt: true).stages
        #expect(throws: PeerPipeline.MissingKey.self) { try PeerPipeline.forDownload(stages: encrypting, link: bare) }
    }
}
