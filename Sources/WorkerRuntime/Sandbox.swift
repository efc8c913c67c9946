import CSystemShims
import Foundation

/// How a worker (or a plugin) is confined, in the spirit of OpenSSH's privilege separation:
/// each process keeps only what its one job needs. The supervisor picks the profile from the
/// worker table and passes it on the worker's command line; the worker applies it itself,
/// first thing, before any thread exists (Landlock confines the calling thread and what it
/// starts later). Two kernel mechanisms, each covering what the other cannot:
///
/// - Landlock: which files may be opened and how, whether TCP may bind or connect, and
///   (ABI 6+) no signals or abstract unix sockets outside the sandbox.
/// - seccomp: an allowlist per profile (Sources/CSystemShims/seccomp/, one file each, as
///   OpenSSH's sandbox-seccomp-filter.c): every other system call fails with EPERM; `socket`
///   only for AF_INET/AF_INET6 in the network profile, `ioctl` only a few requests (never
///   TIOCSTI), `clone` without namespace flags.
public struct SandboxProfile: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        /// discovery, nat, transfer: sockets yes, files none, no exec.
        case networkOnly = "network-only"
        /// hash: files only beneath the given paths, no sockets, no TCP, no exec.
        case filesOnly = "files-only"
        /// plugins: read-only system libraries and the plugin's own folder, no sockets, no
        /// writes anywhere, exec allowed (the plugin is started through the sandbox).
        case plugin
        /// Nothing applied (`PEERSHARE_SANDBOX=off`, for debugging).
        case none
    }

    public var kind: Kind
    /// Paths that may be read (files or folders, recursively).
    public var readable: [String]
    /// Folders where files may be created, written, renamed and removed.
    public var writable: [String]

    public init(kind: Kind, readable: [String] = [], writable: [String] = []) {
        self.kind = kind
        self.readable = readable
        self.writable = writable
    }

    /// Command-line form, appended to `peershare worker ROLE`.
    public var arguments: [String] {
        ["--sandbox", kind.rawValue] + readable.flatMap { ["--sandbox-read", $0] }
            + writable.flatMap { ["--sandbox-write", $0] }
    }

    /// Folders a plugin may read and execute from: the system's, and those of the libraries
    /// this very binary has loaded (the Swift runtime may live in /opt or a home folder;
    /// a Swift plugin needs the same one).
    public static func pluginReadable(pluginPath: String) -> [String] {
        var folders = ["/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc/ld.so.cache"]
        folders.append(URL(fileURLWithPath: pluginPath).resolvingSymlinksInPath().deletingLastPathComponent().path)
        if let maps = try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8) {
            for line in maps.split(separator: "\n") {
                guard let slash = line.firstIndex(of: "/"), line.hasSuffix(".so") || line.contains(".so.") else {
                    continue
                }
                let folder = URL(fileURLWithPath: String(line[slash...])).deletingLastPathComponent().path
                if !folders.contains(folder) { folders.append(folder) }
            }
        }
        return folders
    }
}

public enum Sandbox {
    /// What `apply` achieved, for one log line.
    public struct Report: Sendable, CustomStringConvertible {
        public var landlockABI: Int
        public var landlockError: String?
        public var seccomp: Bool
        public var seccompError: String?

        public var description: String {
            let landlock = landlockError.map { "Landlock not applied (\($0))" } ?? "Landlock ABI \(landlockABI)"
            let filter = seccompError.map { "seccomp not applied (\($0))" } ?? "seccomp filter"
            return "\(landlock), \(filter)"
        }

        /// Both mechanisms in force.
        public var complete: Bool { landlockError == nil && seccompError == nil }
    }

    /// `PEERSHARE_SANDBOX=off` turns confinement off (a kernel without Landlock only loses
    /// that half; this switch is for debugging a worker with strace or gdb).
    public static var disabledByEnvironment: Bool {
        ProcessInfo.processInfo.environment["PEERSHARE_SANDBOX"] == "off"
    }

    /// The running kernel's Landlock ABI, 0 without Landlock.
    public static var landlockABI: Int { Int(peershare_landlock_abi()) }

    static let readRights = UInt64(PEERSHARE_FS_READ_FILE | PEERSHARE_FS_READ_DIR)
    static let writeRights =
        readRights
        | UInt64(
            PEERSHARE_FS_WRITE_FILE | PEERSHARE_FS_REMOVE_DIR | PEERSHARE_FS_REMOVE_FILE | PEERSHARE_FS_MAKE_DIR
                | PEERSHARE_FS_MAKE_REG | PEERSHARE_FS_REFER | PEERSHARE_FS_TRUNCATE)
    static let executeRights = readRights | UInt64(PEERSHARE_FS_EXECUTE)

    /// Applies the profile to this process, irrevocably.
    public static func apply(_ profile: SandboxProfile) -> Report {
        var report = Report(landlockABI: 0, landlockError: nil, seccomp: false, seccompError: nil)
        guard profile.kind != .none else {
            report.landlockError = "sandbox off"
            report.seccompError = "sandbox off"
            return report
        }
        var rules: [(String, UInt64)] = []
        switch profile.kind {
        case .networkOnly, .none: break
        case .filesOnly:
            rules = profile.readable.map { ($0, readRights) } + profile.writable.map { ($0, writeRights) }
        case .plugin:
            rules = profile.readable.map { ($0, executeRights) }
        }
        let denyTCP: Int32 = profile.kind == .networkOnly ? 0 : 1
        let abi = withCStrings(rules.map(\.0)) { paths in
            let rights = rules.map { CUnsignedLongLong($0.1) }
            return rights.withUnsafeBufferPointer { rightsPointer in
                peershare_landlock_restrict(paths, rightsPointer.baseAddress, Int32(rules.count), 1, denyTCP)
            }
        }
        if abi < 0 {
            report.landlockError = String(cString: strerror(errno))
        } else {
            report.landlockABI = Int(abi)
        }
        let filter: Int32
        switch profile.kind {
        case .networkOnly: filter = PEERSHARE_SECCOMP_NETWORK
        case .filesOnly: filter = PEERSHARE_SECCOMP_FILES
        case .plugin, .none: filter = PEERSHARE_SECCOMP_PLUGIN
        }
        if peershare_seccomp_apply(filter) == 0 {
            report.seccomp = true
        } else {
            report.seccompError = String(cString: strerror(errno))
        }
        return report
    }

    private static func withCStrings<R>(_ strings: [String], _ body: ([UnsafePointer<CChar>?]) -> R) -> R {
        let duplicates = strings.map { strdup($0) }
        defer { for pointer in duplicates { free(pointer) } }
        return body(duplicates.map { UnsafePointer($0) })
    }
}
