import Foundation
import PeerShareCore
import Supervisor
import Testing

@testable import Daemon

@Suite struct DaemonStateTests {
    static let link = "peershare://" + String(repeating: "ab", count: 32) + "?peer=127.0.0.1:4000"

    func temporaryFolder() throws -> String {
        let path = NSTemporaryDirectory() + "daemon-state-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func theSameShareOrDownloadIsNotAddedTwice() throws {
        var state = DaemonState()
        #expect(state.addShare(path: "/srv/a", encrypt: false) == .added(1))
        #expect(state.addShare(path: "/srv/a", encrypt: false) == .existing(1))
        // Encrypted and public shares of one path are different shares (different links).
        #expect(state.addShare(path: "/srv/a", encrypt: true) == .added(2))
        let link = try ShareLink.parse(Self.link)
        #expect(state.addDownload(link: link, text: Self.link, target: "/in") == .added(3))
        #expect(state.addDownload(link: link, text: Self.link + "&peer=10.0.0.1:1", target: "/in") == .existing(3))
        #expect(state.addDownload(link: link, text: Self.link, target: "/elsewhere") == .added(4))
        #expect(state.remove(1)?.path == "/srv/a")
        // Ids are never reused.
        #expect(state.addShare(path: "/srv/b", encrypt: false) == .added(5))
    }

    @Test func aDaemonHoldsABoundedNumberOfItems() {
        var state = DaemonState()
        for index in 0..<DaemonState.maxItems {
            #expect(state.addShare(path: "/srv/\(index)", encrypt: false) == .added(UInt32(index + 1)))
        }
        #expect(state.addShare(path: "/srv/more", encrypt: false) == .full)
    }

    @Test func aSavedStateLoadsBackTheSame() throws {
        let folder = try temporaryFolder()
        let file = StateFile(path: folder + "/peershare/daemon.json")
        var state = DaemonState()
        _ = state.addShare(path: "/srv/a", encrypt: true)
        state.update(1) {
            $0.port = 4321
            $0.secret = String(repeating: "0f", count: 32)
        }
        state.limits = LimitSettings(upload: 1000, download: 0, perPeer: 10)
        try file.save(state)
        let loaded = file.load()
        #expect(loaded.state == state)
        #expect(loaded.problems.isEmpty && loaded.movedAside == nil)
        // The user's alone: it holds secrets.
        let mode = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        // No temporary file is left behind.
        let names = try FileManager.default.contentsOfDirectory(atPath: folder + "/peershare")
        #expect(names == ["daemon.json"])
    }

    @Test func aFileThatIsNotJSONIsMovedAsideAndTheDaemonStartsEmpty() throws {
        let folder = try temporaryFolder()
        let file = StateFile(path: folder + "/daemon.json")
        try Data([0, 1, 2, 0x7B]).write(to: URL(fileURLWithPath: file.path))
        let loaded = file.load(now: Date(timeIntervalSince1970: 1000))
        #expect(loaded.state.items.isEmpty)
        #expect(loaded.movedAside == file.path + ".corrupt-1000")
        #expect(FileManager.default.fileExists(atPath: file.path + ".corrupt-1000"))
        #expect(!FileManager.default.fileExists(atPath: file.path))
        #expect(loaded.problems.count == 1)
    }

    @Test func badItemsAreDroppedAndTheRestKept() throws {
        let folder = try temporaryFolder()
        let file = StateFile(path: folder + "/daemon.json")
        let text = """
            {"version": 1, "nextID": 2, "items": [
              {"id": 1, "kind": "share", "path": "/srv/good", "port": 7, "encrypt": false, "paused": true},
              {"id": 2, "kind": "share", "path": "not/absolute", "port": 0, "encrypt": false, "paused": false},
              {"id": 3, "kind": "download", "path": "/in", "link": "http://evil", "port": 0, "encrypt": false, "paused": false},
              {"id": 4, "kind": "share", "path": "/srv/x", "secret": "zz", "port": 0, "encrypt": true, "paused": false},
              {"id": 1, "kind": "share", "path": "/srv/twice", "port": 0, "encrypt": false, "paused": false},
              {"id": "five"},
              42
            ]}
            """
        try Data(text.utf8).write(to: URL(fileURLWithPath: file.path))
        let loaded = file.load()
        #expect(loaded.state.items.map(\.path) == ["/srv/good"])
        #expect(loaded.state.items.first?.paused == true && loaded.state.items.first?.port == 7)
        #expect(loaded.problems.count == 6)
        #expect(loaded.movedAside != nil)
        // The next id is past every id in use, whatever nextID said.
        #expect(loaded.state.nextID == 2)
    }

    @Test func anUnknownVersionIsNotGuessedAt() throws {
        let folder = try temporaryFolder()
        let file = StateFile(path: folder + "/daemon.json")
        try Data(#"{"version": 99, "nextID": 1, "items": []}"#.utf8).write(to: URL(fileURLWithPath: file.path))
        let loaded = file.load()
        #expect(loaded.movedAside != nil)
        #expect(loaded.problems.first?.contains("version") == true)
    }
}
