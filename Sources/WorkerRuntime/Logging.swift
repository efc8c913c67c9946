import Foundation
import Logging
import PeerShareCore

/// One log line per event on stderr, with the process's name on every line:
///
///     2026-11-25T08:30:00.123Z info  hash: built manifest for 'photos' (12 files)
///
/// Workers inherit the supervisor's stderr, so a terminal shows every process's lines
/// interleaved, each one saying who wrote it. A line is written with one write(2) call so
/// lines from different processes never mix mid-line. Messages are made inert (`InertText`):
/// peers' words end up in log lines, and a log line must not drive the terminal.
public struct LineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let name: String

    public init(name: String, level: Logger.Level) {
        self.name = name
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var text =
            "\(LineLogHandler.timestamp()) \(event.level.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0)) \(name): \(InertText.make(event.message.description))"
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        if !merged.isEmpty {
            text +=
                " "
                + merged.sorted { $0.key < $1.key }.map { InertText.make("\($0.key)=\($0.value)") }.joined(
                    separator: " ")
        }
        StandardStream.write(text + "\n", to: StandardStream.error)
    }

    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
            Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), now.tv_nsec / 1_000_000)
    }

    /// Installs this handler for the whole process; call once, first thing in main.
    public static func bootstrap(name: String, level: Logger.Level) {
        LoggingSystem.bootstrap { _ in LineLogHandler(name: name, level: level) }
    }
}
