import IPC
import PeerShareCore
import Supervisor
import XCTest

/// The supervisor's restart, backoff and replay engine, with no processes: a worker's life is
/// a sequence of calls, and what the supervisor would do is the directives.
final class WorkerLifecycleTests: XCTestCase {
    typealias Directive = WorkerLifecycle.Directive

    func transferSpec() throws -> WorkerSpec {
        var spec = try XCTUnwrap(
            WorkerTable.standard(config: .defaults, logLevel: "info").first { $0.role == .transfer })
        spec.restart = RestartPolicy(maxRestarts: 2, windowMs: 10_000, initialBackoffMs: 100, maxBackoffMs: 1000)
        return spec
    }

    static let hello = WorkerReport.hello(version: IPCLimits.protocolVersion, role: .transfer, pid: 42)

    static func writes(_ out: [Directive]) -> [WorkerCommand] {
        out.compactMap {
            if case .write(let message) = $0 { return message }
            return nil
        }
    }

    func testTheTableRowsSettingsComeFirstThenTheSessionsSetupThenUnansweredRequests() throws {
        var life = WorkerLifecycle(spec: try transferSpec())
        XCTAssertEqual(
            life.send(.fetch(shareID: [1], peers: []), tracking: .setup(key: "fetch")), [], "not ready: kept")
        let out = life.received(Self.hello)
        let written = Self.writes(out)
        XCTAssertEqual(written.first, .welcome(version: IPCLimits.protocolVersion))
        guard case .transferSettings? = written.dropFirst().first else { return XCTFail("\(written)") }
        XCTAssertEqual(written.last, .fetch(shareID: [1], peers: []))
        XCTAssertFalse(out.contains { if case .restarted = $0 { return true } else { return false } }, "a first start")
        XCTAssertEqual(
            life.send(.addPeers(peers: ["a:1"], nearby: false), tracking: .none),
            [.write(.addPeers(peers: ["a:1"], nearby: false))])
    }

    func testARestartedWorkerIsToldEverythingAgainAndRequestsAnsweredAreNotReplayed() throws {
        var life = WorkerLifecycle(spec: try transferSpec())
        _ = life.received(Self.hello)
        _ = life.send(
            .serve(shareID: [2], manifest: [], host: "h", port: 1, partial: false), tracking: .setup(key: "serve"))
        _ = life.send(
            .serve(shareID: [3], manifest: [], host: "h", port: 1, partial: false), tracking: .setup(key: "serve"))
        XCTAssertEqual(life.exited(status: "killed by signal 9", nowMs: 0), [.respawn(afterMs: 100)])
        let out = life.received(Self.hello)
        let serves = Self.writes(out).filter { $0.tag == .serve }
        XCTAssertEqual(
            serves, [.serve(shareID: [3], manifest: [], host: "h", port: 1, partial: false)], "the latest only")
        XCTAssertTrue(out.contains(.restarted(setup: 1, requests: 0)))
    }

    func testBackoffGrowsAndTheSupervisorGivesUp() throws {
        var life = WorkerLifecycle(spec: try transferSpec())
        XCTAssertEqual(life.exited(status: "exited with status 1", nowMs: 0), [.respawn(afterMs: 100)])
        XCTAssertEqual(life.exited(status: "exited with status 1", nowMs: 10), [.respawn(afterMs: 200)])
        guard case .giveUp(let reason)? = life.exited(status: "exited with status 1", nowMs: 20).first else {
            return XCTFail("three crashes in the window, two allowed")
        }
        XCTAssertEqual(reason, "the transfer worker failed 3 times within 10 s (last: exited with status 1); giving up")
    }

    func testAPartnersRestartIsNoCrash() throws {
        var life = WorkerLifecycle(spec: try transferSpec())
        for _ in 0..<5 {
            XCTAssertEqual(life.exited(status: "killed", nowMs: 0, partnerRestart: true), [.respawn(afterMs: 0)])
        }
        XCTAssertEqual(life.exited(status: "exited", nowMs: 0), [.respawn(afterMs: 100)], "the first real crash")
    }

    func testAWorkerMaySendOnlyWhatItsRoleMaySendAndHelloOnce() throws {
        var life = WorkerLifecycle(spec: try transferSpec())
        XCTAssertEqual(
            life.received(.peerCount(count: 1)),
            [.violation("expected hello from transfer speaking version \(IPCLimits.protocolVersion)")])
        _ = life.received(Self.hello)
        XCTAssertEqual(life.received(Self.hello), [.violation("hello sent twice")])
        XCTAssertEqual(
            life.received(.manifestBuilt(requestID: 1, manifest: [])),
            [.violation("transfer may not send manifestBuilt")])
        XCTAssertEqual(life.received(.peerCount(count: 2)), [.deliver(.peerCount(count: 2))])
    }
}
