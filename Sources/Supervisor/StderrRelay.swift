import Foundation
import PeerShareCore

/// A child's standard error, read by the supervisor and passed on line by line, made inert.
/// Workers and plugins never get the user's terminal: a sandboxed process holding a terminal
/// descriptor could push keystrokes into the user's shell (TIOCSTI) or drive the screen with
/// escape sequences. Their stderr is a pipe; what arrives is cut into lines of at most
/// `maxLine` bytes, every control character escaped (`InertText`), and written to our own
/// stderr with one write(2) per line, so lines of different processes never interleave.
enum StderrRelay {
    static let maxLine = 4096

    /// Makes the pipe: returns (read end for us, write end for the child). Both close-on-exec;
    /// the spawn places the write end on the child's descriptor 2.
    static func makePipe() -> (read: Int32, write: Int32)? {
        var ends: [Int32] = [-1, -1]
        // A socketpair, as for the other channels: made close-on-exec atomically.
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            return nil
        }
        return (ends[0], ends[1])
    }

    /// Reads `descriptor` until end of file on a thread of its own, then closes it.
    /// `prefix` goes before every line (a plugin's lines are not log lines of ours).
    static func start(reading descriptor: Int32, prefix: String = "") {
        Thread.detachNewThread {
            var pending: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 8192)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                pending += buffer[0..<count]
                while let newline = pending.firstIndex(of: 10) {
                    emit(pending[..<newline], prefix: prefix)
                    pending.removeSubrange(...newline)
                }
                // A line longer than the cap is cut, not buffered without end.
                while pending.count >= maxLine {
                    emit(pending[..<maxLine], prefix: prefix)
                    pending.removeSubrange(..<maxLine)
                }
            }
            if !pending.isEmpty { emit(pending[...], prefix: prefix) }
            close(descriptor)
        }
    }

    private static func emit(_ bytes: ArraySlice<UInt8>, prefix: String) {
        StandardStream.write(
            prefix + InertText.make(String(decoding: bytes, as: UTF8.self)) + "\n", to: StandardStream.error)
    }

    /// What a worker or plugin may see of the supervisor's environment: enough to find
    /// programs and speak the user's language, and PeerShare's own switches. Everything
    /// else (SSH_AUTH_SOCK, DBUS_SESSION_BUS_ADDRESS, tokens in variables, ...) stays here.
    static func childEnvironment(_ environment: [String: String], extra: [String: String]) -> [String] {
        let kept = environment.filter { key, _ in
            ["PATH", "LANG", "TZ", "TMPDIR"].contains(key) || key.hasPrefix("LC_")
                || key == "PEERSHARE_SANDBOX" || key == "PEERSHARE_CIPHERS"
        }
        return kept.merging(extra) { $1 }.map { "\($0.key)=\($0.value)" }.sorted()
    }
}
