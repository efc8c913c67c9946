import Foundation

/// The path the supervisor starts its workers (and `sandbox exec`) from: this very binary.
///
/// `/proc/self/exe` always names the file this process runs, even after the file on disk was
/// replaced (an upgrade, a rebuild), so a restarted worker never speaks another version's
/// pipe protocol. But when a tool runs the supervisor under it, executing `/proc/self/exe`
/// starts the tool's own binary: valgrind, which the instruction counts in BENCHMARKS.md need,
/// then fails to start any worker. Such tools do answer `readlink` and `open` of
/// `/proc/self/exe` with the program's file. So a worker is started from the path
/// `/proc/self/exe` links to while that path names the same file (device and inode) as
/// `/proc/self/exe` opened; once it names another, from `/proc/self/exe` itself.
enum OwnExecutable {
    static let procSelf = "/proc/self/exe"

    /// The path to execute now.
    static func path() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink(procSelf, &buffer, buffer.count - 1)
        guard length > 0 else { return procSelf }
        let descriptor = open(procSelf, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return procSelf }
        defer { close(descriptor) }
        var running = stat()
        var named = stat()
        let path = String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard fstat(descriptor, &running) == 0, stat(path, &named) == 0, running.st_dev == named.st_dev,
            running.st_ino == named.st_ino
        else { return procSelf }
        return path
    }
}
