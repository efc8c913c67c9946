import Foundation
import PeerShareCore
import XCTest

/// Inert text, rate ranges and the pipeline rules of issue 9.
final class HardeningTests: XCTestCase {
    func testPeerTextIsMadeInert() {
        XCTAssertEqual(InertText.make("plain name.txt"), "plain name.txt")
        XCTAssertEqual(InertText.make("é ü 漢字"), "é ü 漢字")
        let evil = "\u{1B}]0;pwned\u{07}\r\nverified and saved\u{9B}31m\u{202E}"
        let shown = InertText.make(evil)
        XCTAssertFalse(shown.unicodeScalars.contains(where: InertText.isActive), shown)
        XCTAssertEqual(shown, "\\u{1B}]0;pwned\\u{7}\\u{D}\\u{A}verified and saved\\u{9B}31m\\u{202E}")
        for value in UInt32(0)...0x2100 {
            guard let scalar = Unicode.Scalar(value) else { continue }
            let text = InertText.make("a" + String(Character(scalar)) + "b")
            XCTAssertFalse(text.unicodeScalars.contains(where: InertText.isActive), "U+\(String(value, radix: 16))")
        }
    }

    func testRatesAreBoundedSoNoConversionCanTrap() throws {
        XCTAssertEqual(try ByteRate.parse("5MB/s"), 5_000_000)
        XCTAssertEqual(try ByteRate.parse("1024"), 1024)
        XCTAssertThrowsError(try ByteRate.parse("1e30GB/s"))
        XCTAssertThrowsError(try ByteRate.parse("18446744073709551615"))
        XCTAssertEqual(UInt64(try ByteRate.parse("1024TiB/s".replacingOccurrences(of: "TiB", with: "GiB"))), 1 << 40)
        XCTAssertThrowsError(try ByteRate.parse("nan"))
    }

    func testTheEncryptionStageCannotBeOptional() {
        let json = #"{"version": 1, "stages": [{"name": "zlib"}, {"name": "sodium", "required": false}]}"#
        XCTAssertThrowsError(try PipelineConfig.parse(Data(json.utf8), file: "p.json")) { error in
            XCTAssertTrue("\(error)".contains("stages[1].required"), "\(error)")
        }
        let required = #"{"version": 1, "stages": [{"name": "sodium", "required": true}]}"#
        XCTAssertNoThrow(try PipelineConfig.parse(Data(required.utf8), file: "p.json"))
    }

    func testPluginPathsOfARelativeConfigResolveAgainstItsFolder() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ps-config-\(getpid())")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let plugin = folder.appendingPathComponent("stage.sh")
        try Data("#!/bin/sh\n".utf8).write(to: plugin)
        chmod(plugin.path, 0o755)
        let previous = FileManager.default.currentDirectoryPath
        _ = FileManager.default.changeCurrentDirectoryPath(folder.path)
        defer { _ = FileManager.default.changeCurrentDirectoryPath(previous) }
        let json = #"{"version": 1, "stages": [{"name": "mine", "plugin": "stage.sh"}]}"#
        let config = try PipelineConfig.parse(Data(json.utf8), file: "pipeline.json")
        guard case .plugin(let path, _) = config.stages.first?.kind else { return XCTFail("no plugin stage") }
        XCTAssertEqual(URL(fileURLWithPath: path).standardizedFileURL.path, plugin.standardizedFileURL.path)
    }
}
