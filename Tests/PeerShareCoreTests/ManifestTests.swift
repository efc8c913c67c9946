import Foundation
import PeerShareCore
import Wire
import XCTest

final class ManifestTests: XCTestCase {
    func sampleEncoding() -> [UInt8] {
        let chunk = 64 * 1024
        let hashes = (0..<3).map { ChunkHash.of([UInt8](repeating: UInt8($0), count: 10)) }
        return Manifest.encoding(
            chunkSize: chunk,
            entries: [
                .directory("album"),
                .directory("album/empty"),
                .file("album/a.bin", size: UInt64(chunk * 2 + 5), chunkHashes: hashes),
                .file("album/zero", size: 0, chunkHashes: []),
            ])
    }

    func testRoundTripAndChunkLocations() throws {
        let bytes = sampleEncoding()
        let decoded = try Manifest.decode(bytes)
        XCTAssertEqual(decoded.encoded(), bytes)
        XCTAssertEqual(decoded.chunkCount, 3)
        XCTAssertEqual(decoded.chunkLocations[2], .init(entryIndex: 2, offset: 2 * 65536, length: 5))
        XCTAssertEqual(decoded.rootName, "album")
        XCTAssertEqual(decoded.totalBytes, 2 * 65536 + 5)
    }

    func testASummaryReadsNameAndSizeWithoutTheRulesAndNeverTraps() throws {
        let summary = try Manifest.summary(of: sampleEncoding())
        XCTAssertEqual(summary.rootName, "album")
        XCTAssertEqual(summary.totalBytes, 2 * 65536 + 5)
        // An empty name and a name with a backslash break the rules: `decode` refuses them,
        // `summary` reads them (the caller prints the name inert).
        for path in ["", "a\\b"] {
            let bytes = Manifest.encoding(chunkSize: 65536, entries: [.directory(path)])
            XCTAssertThrowsError(try Manifest.decode(bytes))
            XCTAssertNoThrow(try Manifest.summary(of: bytes))
        }
        XCTAssertEqual(
            try Manifest.summary(of: Manifest.encoding(chunkSize: 65536, entries: [.directory("")])).rootName, "")
        XCTAssertThrowsError(try Manifest.summary(of: Array(sampleEncoding().dropLast())))
    }

    func testAnEntryInAFolderTheManifestDoesNotListIsRefused() {
        let hashes = [ChunkHash.of([1, 2, 3])]
        let orphan = Manifest.encoding(
            chunkSize: 65536, entries: [.directory("r"), .file("r/a/b", size: 3, chunkHashes: hashes)])
        XCTAssertThrowsError(try Manifest.decode(orphan)) {
            XCTAssertTrue("\($0)".contains("in a folder the manifest does not list"), "\($0)")
        }
        let rootless = Manifest.encoding(chunkSize: 65536, entries: [.file("x/y", size: 3, chunkHashes: hashes)])
        XCTAssertThrowsError(try Manifest.decode(rootless))
        let underAFile = Manifest.encoding(
            chunkSize: 65536,
            entries: [.directory("r"), .file("r/a", size: 3, chunkHashes: hashes), .directory("r/a/b")])
        XCTAssertThrowsError(try Manifest.decode(underAFile))
        let whole = Manifest.encoding(
            chunkSize: 65536,
            entries: [.directory("r"), .directory("r/a"), .file("r/a/b", size: 3, chunkHashes: hashes)])
        XCTAssertNoThrow(try Manifest.decode(whole))
    }

    func testShareIDIsTheHashOfTheExactBytes() {
        let bytes = sampleEncoding()
        var changed = bytes
        changed[changed.count - 1] ^= 1
        XCTAssertNotEqual(ShareID(manifestBytes: bytes), ShareID(manifestBytes: changed))
        XCTAssertEqual(ShareID(manifestBytes: bytes).hex.count, 64)
    }

    func testChunkSizeGrowsWithTheShare() {
        XCTAssertEqual(Manifest.chunkSize(forTotalBytes: 0), 64 * 1024)
        XCTAssertEqual(Manifest.chunkSize(forTotalBytes: 200 << 20), 128 * 1024)
        XCTAssertEqual(Manifest.chunkSize(forTotalBytes: 1 << 30), 512 * 1024)
        XCTAssertEqual(Manifest.chunkSize(forTotalBytes: 1 << 40), 4 << 20)
    }

    func testEveryTruncationIsAnErrorNotACrash() {
        let bytes = sampleEncoding()
        for cut in 0..<bytes.count {
            XCTAssertThrowsError(try Manifest.decode(Array(bytes[0..<cut])), "cut at \(cut)")
        }
    }

    func testLyingCountsAreRefusedBeforeAllocating() {
        var writer = ByteWriter()
        writer.raw(Manifest.magic)
        writer.u32(65536)
        writer.u32(UInt32.max)  // a billion entries in 12 bytes
        XCTAssertThrowsError(try Manifest.decode(writer.bytes))
        var huge = ByteWriter()
        huge.raw(Manifest.magic)
        huge.u32(65536)
        huge.u32(1)
        huge.u8(0)
        huge.string("f")
        huge.u64(1 << 49)  // claims 8 million chunk hashes that are not there
        huge.raw([UInt8](repeating: 0, count: 32))
        XCTAssertThrowsError(try Manifest.decode(huge.bytes))
    }

    func testAManifestOfTheOlderFormatIsRefusedByName() {
        var bytes = sampleEncoding()
        for older in ["PSM1", "PSM2"] {
            bytes.replaceSubrange(0..<4, with: Array(older.utf8))
            XCTAssertThrowsError(try Manifest.decode(bytes)) { error in
                XCTAssertTrue("\(error)".contains("older PeerShare (format \(older))"), "\(error)")
            }
        }
        bytes.replaceSubrange(0..<4, with: Array("PSMX".utf8))
        XCTAssertThrowsError(try Manifest.decode(bytes)) { error in
            XCTAssertTrue("\(error)".contains("not a PeerShare manifest"), "\(error)")
        }
    }

    /// BLAKE3 of bytes `i % 251` (the official test vectors' input), as `b3sum` 1.2.0 (the Rust
    /// implementation, Debian's package) prints them: lengths across one 1 KiB BLAKE3 chunk,
    /// one SIMD batch, and a 512 KiB PeerShare chunk plus a byte.
    func testTheChunkHashIsBLAKE3() {
        let expected: [(Int, String)] = [
            (0, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
            (1, "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"),
            (1024, "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7"),
            (1025, "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444"),
            (65536, "68d647e619a930e7b1082f74f334b0c65a315725569bdc123f0ee11881717bfe"),
            (524_289, "7978ac1ee80f7f7c115d25551f9c54cb3a2974cfcb8f5ab93de706350d143286"),
        ]
        for (length, hex) in expected {
            let input = (0..<length).map { UInt8($0 % 251) }
            XCTAssertEqual(ChunkHash.of(input).hexString, hex, "length \(length)")
        }
    }

    func testAFileEntryIsItsPathSizeAndChunkHashesAlone() throws {
        // 3 bytes of kind and path length, the path, 8 bytes of size, 32 per chunk: nothing else.
        let data = (0..<65536 * 2 + 1).map { UInt8(truncatingIfNeeded: $0 / 65536 + 1) }
        let hashes = stride(from: 0, to: data.count, by: 65536).map {
            ChunkHash.of(Array(data[$0..<min($0 + 65536, data.count)]))
        }
        let bytes = Manifest.encoding(
            chunkSize: 65536,
            entries: [.file("f.bin", size: UInt64(data.count), chunkHashes: hashes)])
        XCTAssertEqual(bytes.count, 12 + 3 + 5 + 8 + 3 * 32)
        let manifest = try Manifest.decode(bytes)
        for index in 0..<3 {
            XCTAssertTrue(manifest.isExpected(hashes[index], ofChunk: index))
        }
        XCTAssertFalse(manifest.isExpected(hashes[0], ofChunk: 1))
    }

    func testUnsafePathsAreRefused() {
        for bad in [
            "", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a/b/", "a\\b", "a\u{0}b",
            String(repeating: "n", count: 256),
        ] {
            XCTAssertThrowsError(try SharePath.validate(bad), bad)
        }
        for good in ["a", "a/b c/d.txt", "..hidden", "ünïcødé/文件"] {
            XCTAssertNoThrow(try SharePath.validate(good), good)
        }
    }

    func testTreeRulesOneRootNoDuplicatesNoFileAsFolder() {
        XCTAssertThrowsError(try SharePath.validateTree([("a", true), ("b", false)]))
        XCTAssertThrowsError(try SharePath.validateTree([("a", true), ("a", true)]))
        XCTAssertThrowsError(try SharePath.validateTree([("a", false), ("a/b", false)]))
        XCTAssertThrowsError(try SharePath.validateTree([]))
        XCTAssertNoThrow(try SharePath.validateTree([("a", true), ("a/b", false), ("a/c", true)]))
    }

    func testFileAsFolderIsFoundPastSiblingsThatSortBetween() {
        // "r/a-b" sorts between "r/a" and "r/a/c" ('-' < '/'): the check must not look only
        // at neighbours.
        let tree = [("r", true), ("r/a", false), ("r/a-b", false), ("r/a/c", false)]
        XCTAssertThrowsError(try SharePath.validateTree(tree)) { error in
            XCTAssertEqual("\(error)", "'r/a' is both a file and a folder")
        }
        XCTAssertThrowsError(
            try SharePath.validateTree([("r", true), ("r/x", false), ("r/x.y", false), ("r/x/z", true)]))
        XCTAssertNoThrow(try SharePath.validateTree([("r", true), ("r/x", true), ("r/x-y", false), ("r/x/z", false)]))
        XCTAssertThrowsError(try SharePath.validateTree([("r", true), ("r/b", false), ("r/a", false), ("r/b", false)]))
    }

    /// Random trees whose names sort around '/' ("a", "a-b", "a.b", "a0", "b"): the sorted
    /// search finds a file used as a folder exactly when a brute-force look at every pair does.
    func testFileAsFolderAgreesWithBruteForceOnRandomTrees() {
        var random = SplitMix64(seed: 13)
        let names = ["a", "a-b", "a.b", "a0", "b", "a~"]
        for _ in 0..<500 {
            var entries: [String: Bool] = ["r": true]
            for _ in 0..<Int.random(in: 1...8, using: &random) {
                let depth = Int.random(in: 1...3, using: &random)
                let parts = (0..<depth).map { _ in names.randomElement(using: &random) ?? "a" }
                // Its folders are listed (a manifest must list them), unless one is already
                // a file: that is the case under test.
                for end in 1..<parts.count {
                    let folder = "r/" + parts[..<end].joined(separator: "/")
                    if entries[folder] == nil { entries[folder] = true }
                }
                entries["r/" + parts.joined(separator: "/")] = Bool.random(using: &random)
            }
            let tree = entries.map { (path: $0.key, isDirectory: $0.value) }
            let fileIsFolder = tree.contains { file in
                !file.isDirectory && tree.contains { $0.path.hasPrefix(file.path + "/") }
            }
            do {
                try SharePath.validateTree(tree)
                XCTAssertFalse(fileIsFolder, "\(tree)")
            } catch {
                XCTAssertTrue(fileIsFolder, "\(tree): \(error)")
                XCTAssertTrue("\(error)".hasSuffix("is both a file and a folder"), "\(error)")
            }
        }
    }

    func testPathsThatAreNotUTF8AreRefused() {
        var writer = ByteWriter()
        writer.raw(Manifest.magic)
        writer.u32(65536)
        writer.u32(1)
        writer.u8(Manifest.Kind.directory.rawValue)
        writer.u16(3)
        writer.raw([UInt8(ascii: "a"), 0xC3, 0x28])  // a lone lead byte
        XCTAssertThrowsError(try Manifest.decode(writer.bytes)) { error in
            XCTAssertEqual("\(error)", "string is not valid UTF-8")
        }
    }

    /// The manifest is read out of its own bytes: every entry, chunk location and chunk hash
    /// must be what was put in, across files of one, several and no chunks.
    func testEntriesLocationsAndHashesReadBackFromTheBytes() throws {
        let chunk = 64 * 1024
        var items: [Manifest.Item] = [.directory("r")]
        var expected: [[UInt8]] = []
        for (number, chunks) in [1, 3, 0, 2, 1].enumerated() {
            let hashes = (0..<chunks).map { ChunkHash.of([UInt8(number), UInt8($0)]) }
            expected += hashes
            let size = chunks == 0 ? 0 : UInt64((chunks - 1) * chunk + 100 + number)
            items.append(.file("r/f\(number)", size: size, chunkHashes: hashes))
        }
        let manifest = try Manifest.decode(Manifest.encoding(chunkSize: chunk, entries: items))
        XCTAssertEqual(manifest.entryCount, 6)
        XCTAssertEqual(manifest.chunkCount, 7)
        XCTAssertEqual(manifest.entries.map(\.path), ["r", "r/f0", "r/f1", "r/f2", "r/f3", "r/f4"])
        XCTAssertEqual(manifest.entries.map(\.firstChunk), [0, 0, 1, 4, 4, 6])
        XCTAssertEqual(manifest.entries.map(\.chunkCount), [0, 1, 3, 0, 2, 1])
        for index in 0..<manifest.chunkCount {
            XCTAssertEqual(Array(manifest.expectedHash(ofChunk: index)), expected[index])
            XCTAssertTrue(manifest.isExpected(expected[index], ofChunk: index))
        }
        XCTAssertFalse(manifest.isExpected(expected[0], ofChunk: 1))
        XCTAssertFalse(manifest.isExpected(expected[0], ofChunk: 7), "out of range is not expected")
        XCTAssertEqual(manifest.chunkLocations[3], .init(entryIndex: 2, offset: 2 * 65536, length: 101))
        XCTAssertEqual(manifest.chunkLocations[5], .init(entryIndex: 4, offset: 65536, length: 103))
        let sizes: [UInt64] = [100, 2 * 65536 + 101, 0, 65536 + 103, 104]
        XCTAssertEqual(manifest.totalBytes, sizes.reduce(0, +))
        XCTAssertEqual(manifest.entries.map(\.size), [0] + sizes)
    }

}

final class ShareLinkTests: XCTestCase {
    let id = ShareID(bytes: [UInt8](repeating: 0x5A, count: 32))!

    func testRoundTrip() throws {
        let link = ShareLink(
            shareID: id, peers: [PeerAddress(host: "127.0.0.1", port: 4000), PeerAddress(host: "::1", port: 5)])
        XCTAssertEqual(link.description, "peershare://\(id.hex)?peer=127.0.0.1:4000&peer=[::1]:5")
        XCTAssertEqual(try ShareLink.parse(link.description), link)
        XCTAssertEqual(try ShareLink.parse("peershare://\(id.hex)").peers, [])
    }

    func testStrictParsing() {
        for bad in [
            "", "peershare:/\(id.hex)", "peershare://\(id.hex.uppercased())", "peershare://\(id.hex)00",
            "peershare://\(id.hex)?peer=", "peershare://\(id.hex)?peer=h:99999", "peershare://\(id.hex)?peer=h:-1",
            "peershare://\(id.hex)?x=1", "peershare://\(id.hex)?peer=a b:1", "peershare://\(id.hex)?peer=h:1&",
        ] {
            XCTAssertThrowsError(try ShareLink.parse(bad), bad)
        }
    }
}

final class PipelineConfigTests: XCTestCase {
    func parse(_ json: String) throws -> PipelineConfig {
        try PipelineConfig.parse(Data(json.utf8), file: "test.json")
    }

    func testRepositoryFileEqualsBuiltInDefaults() throws {
        let repoFile = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("pipeline.json")
        XCTAssertEqual(try PipelineConfig.load(file: repoFile.path), PipelineConfig.defaults)
    }

    func testErrorsNameTheKey() {
        XCTAssertThrowsError(try parse(#"{"version": 1, "limits": {"maxPeers": "many"}}"#)) { error in
            XCTAssertEqual("\(error)", "test.json: 'limits.maxPeers': expected an integer in 1...10000")
        }
        XCTAssertThrowsError(try parse(#"{"stages": []}"#)) { error in
            XCTAssertTrue("\(error)".contains("'version': missing"))
        }
        XCTAssertThrowsError(try parse(#"{"version": 1.5}"#))
        XCTAssertThrowsError(try parse(#"[]"#))
    }

    func testLookupOrder() throws {
        XCTAssertEqual(
            PipelineConfig.userConfigPath(environment: ["XDG_CONFIG_HOME": "/x", "HOME": "/h"]),
            "/x/peershare/pipeline.json")
        XCTAssertEqual(PipelineConfig.userConfigPath(environment: ["HOME": "/h"]), "/h/.config/peershare/pipeline.json")
        let (config, source) = try PipelineConfig.load(explicitPath: nil, environment: ["HOME": "/nonexistent"])
        XCTAssertEqual(config, .defaults)
        XCTAssertEqual(source, "built-in defaults")
    }
}
