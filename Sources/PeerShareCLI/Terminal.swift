import Foundation
import PeerShareCore
import Sessions
import Supervisor

/// User-facing output. stdout carries results (the link, the saved path, progress); stderr
/// carries errors and logs. On a terminal progress is one redrawn bar; otherwise it is a
/// plain line every second, which is what scripts and CI logs want. Every line goes through
/// `InertText`: much of what is printed (names, errors, reasons) comes from peers.
enum Terminal {
    static let isTTY = isatty(1) == 1

    static func line(_ text: String) {
        StandardStream.write(InertText.make(text) + "\n", to: StandardStream.output)
    }

    /// A status line on stderr (not part of a session's output).
    static func status(_ text: String) {
        StandardStream.write("peershare: \(InertText.make(text))\n", to: StandardStream.error)
    }

    static func warning(_ text: String) {
        StandardStream.write("peershare: warning: \(InertText.make(text))\n", to: StandardStream.error)
    }

    static func error(_ text: String) {
        StandardStream.write("peershare: error: \(InertText.make(text))\n", to: StandardStream.error)
    }

    /// Machine-readable output for scripts: one JSON object per line on stdout.
    static func jsonOutput() -> SessionOutput {
        let events = JSONEvents()
        return SessionOutput(
            link: { events.emit(["event": "result", "message": $0]) },
            status: { events.emit(["event": "status", "message": $0]) },
            error: { events.emit(["event": "error", "message": $0]) },
            progress: { done, total, label, peers in
                events.progress(done: done, total: total, phase: label, peers: peers)
            },
            finishProgress: {})
    }

    /// `progressToStderr` keeps stdout for the link alone (`share`).
    static func sessionOutput(quiet: Bool = false, progressToStderr: Bool = false) -> SessionOutput {
        let meter = ProgressMeter(descriptor: progressToStderr ? StandardStream.error : StandardStream.output)
        return SessionOutput(
            link: { line($0) },
            status: { text in
                if !quiet { status(text) }
            },
            error: { error($0) },
            progress: { done, total, label, peers in meter.update(done: done, total: total, label: label, peers: peers)
            },
            finishProgress: { meter.finish() })
    }
}

/// Percent, rate and ETA, from a monotonic clock; thread-safe since output comes from the loop.
final class ProgressMeter: @unchecked Sendable {
    private let lock = NSLock()
    private let descriptor: Int32
    private let isTTY: Bool

    init(descriptor: Int32) {
        self.descriptor = descriptor
        self.isTTY = isatty(descriptor) == 1
    }

    private var startNs: UInt64 = 0
    private var lastPrintNs: UInt64 = 0
    private var startBytes: UInt64 = 0
    private var drawn = false
    /// What the last line said, so that the end, which may be reported more than once, is
    /// printed once.
    private var lastPrinted: (done: UInt64, total: UInt64, label: String)?

    func update(done: UInt64, total: UInt64, label: String, peers: Int?) {
        lock.lock()
        defer { lock.unlock() }
        let now = DispatchTime.now().uptimeNanoseconds
        if startNs == 0 {
            startNs = now
            startBytes = done
        }
        let interval: UInt64 = isTTY ? 100_000_000 : 1_000_000_000
        guard now - lastPrintNs >= interval || done == total else { return }
        if let lastPrinted, lastPrinted == (done, total, label) { return }
        lastPrintNs = now
        lastPrinted = (done, total, label)
        let seconds = max(Double(now - startNs) / 1e9, 0.001)
        // The rate counts what moved since the meter's first report: bytes a download had
        // before it resumed are not this run's speed. When the first report is already the
        // last (a small file hashed between two reports), there is no rate to tell.
        let moved = done - min(done, startBytes)
        let rate = Double(moved) / seconds
        let percent = total == 0 ? 100 : Double(done) * 100 / Double(total)
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let rateText = moved > 0 ? String(format: "%.1f MB/s", rate / 1e6) : "-- MB/s"
        var etaText = done == total ? "done" : moved > 0 ? String(format: "ETA %.0fs", eta) : "ETA --"
        if let peers { etaText += "  \(peers) peer\(peers == 1 ? "" : "s")" }
        if isTTY {
            let width = 30
            let filled = Int(Double(width) * percent / 100)
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            let text = String(format: "\r%@ [%@] %5.1f%%  %@  %@  ", label, bar, percent, rateText, etaText)
            StandardStream.write(text, to: descriptor)
            drawn = true
        } else {
            let text = String(
                format: "%@ %.1f%% (%@ of %@) %@ %@\n", label, percent, formatBytes(done), formatBytes(total), rateText,
                etaText)
            StandardStream.write(text, to: descriptor)
        }
    }

    func finish() {
        lock.lock()
        defer { lock.unlock() }
        if drawn {
            StandardStream.write("\n", to: descriptor)
            drawn = false
        }
        startNs = 0
        lastPrintNs = 0
        lastPrinted = nil
    }
}

/// JSON lines on stdout, progress at most four times a second. Thread-safe.
final class JSONEvents: @unchecked Sendable {
    private let lock = NSLock()
    private let started = DispatchTime.now().uptimeNanoseconds
    private var lastProgress: UInt64 = 0

    func emit(_ object: [String: Any]) {
        // JSON escapes C0 controls but not C1 ones or bidi overrides; a script may print
        // the message as it is.
        let object = object.mapValues { value -> Any in (value as? String).map(InertText.make) ?? value }
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        lock.lock()
        defer { lock.unlock() }
        StandardStream.write([UInt8](data) + [10], to: StandardStream.output)
    }

    func progress(done: UInt64, total: UInt64, phase: String, peers: Int?) {
        let now = DispatchTime.now().uptimeNanoseconds
        lock.lock()
        let due = now - lastProgress >= 250_000_000 || done == total
        if due { lastProgress = now }
        lock.unlock()
        guard due else { return }
        let rate = Double(done) / max(Double(now - started) / 1e9, 0.001)
        var event: [String: Any] = [
            "event": "progress", "phase": phase, "bytes": done, "total": total, "rate": Int(rate),
            "eta": rate > 0 ? Double(total - done) / rate : 0,
            "elapsed": (Double(now - started) / 1e6).rounded() / 1000,
        ]
        if let peers { event["peers"] = peers }
        emit(event)
    }
}
