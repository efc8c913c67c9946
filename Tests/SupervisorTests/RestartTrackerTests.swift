import Supervisor
import WorkerRuntime
import XCTest

final class RestartTrackerTests: XCTestCase {
    func testBackoffDoublesUpToTheCapThenGivesUp() {
        let policy = RestartPolicy(maxRestarts: 4, windowMs: 60_000, initialBackoffMs: 100, maxBackoffMs: 300)
        var tracker = RestartTracker(policy: policy)
        XCTAssertEqual(tracker.crashed(atMs: 0), .restart(afterMs: 100))
        XCTAssertEqual(tracker.crashed(atMs: 10), .restart(afterMs: 200))
        XCTAssertEqual(tracker.crashed(atMs: 20), .restart(afterMs: 300))
        XCTAssertEqual(tracker.crashed(atMs: 30), .restart(afterMs: 300))
        XCTAssertEqual(tracker.crashed(atMs: 40), .giveUp(crashes: 5))
    }

    func testOldCrashesAreForgotten() {
        let policy = RestartPolicy(maxRestarts: 1, windowMs: 1000, initialBackoffMs: 50, maxBackoffMs: 1000)
        var tracker = RestartTracker(policy: policy)
        XCTAssertEqual(tracker.crashed(atMs: 0), .restart(afterMs: 50))
        XCTAssertEqual(tracker.crashed(atMs: 5000), .restart(afterMs: 50))
        XCTAssertEqual(tracker.crashed(atMs: 5100), .giveUp(crashes: 2))
    }

    func testWorkerTableDeclaresTheFourWorkers() {
        let table = WorkerTable.standard(config: .defaults, logLevel: "info")
        XCTAssertEqual(Set(table.map(\.role.rawValue)), ["discovery", "nat", "transfer", "hash"])
        XCTAssertEqual(table.first { $0.role == .hash }?.sandbox.kind, .filesOnly)
        XCTAssertTrue(table.allSatisfy { $0.arguments.starts(with: ["worker", $0.role.rawValue]) })
    }
}
