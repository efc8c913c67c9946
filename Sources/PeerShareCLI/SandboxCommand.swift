import ArgumentParser
import CSystemShims
import Foundation
import PeerShareCore
import WorkerRuntime

/// `peershare sandbox`: what confinement this kernel gives the workers, a probe that shows it
/// at work, and the launcher that starts plugins inside it.
struct SandboxCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandbox",
        abstract: "Show how workers and plugins are confined, and try it out.",
        discussion: """
            Every worker confines itself when it starts (Landlock and seccomp): discovery, nat and transfer may use sockets but open no file; hash may open only the shared path or the download folder, and no socket; plugins may read system libraries and their own folder, write nothing and open no socket. None of them may execute programs (plugins only their own), trace other processes or signal processes outside the sandbox. PEERSHARE_SANDBOX=off turns this off for debugging. See docs/SECURITY.md.
            """,
        subcommands: [Status.self, Probe.self, Exec.self], defaultSubcommand: Status.self)

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status", abstract: "Print what this kernel enforces and each worker's profile.")

        func run() {
            let abi = Sandbox.landlockABI
            print(abi > 0 ? "Landlock: ABI \(abi)" : "Landlock: not available (workers get seccomp only)")
            if abi > 0 && abi < 4 {
                print("  TCP bind/connect rules need ABI 4: the hash worker relies on seccomp for sockets")
            }
            if abi > 0 && abi < 6 { print("  signal scoping needs ABI 6") }
            print("seccomp: an allowlist per profile, installed by every worker (see /proc/PID/status, Seccomp: 2);")
            print("  anything else fails with EPERM: no Unix or netlink sockets, no TIOCSTI, no namespaces")
            if Sandbox.disabledByEnvironment { print("PEERSHARE_SANDBOX=off: nothing is applied in this environment") }
            print("")
            print("process     profile        files                          sockets  exec")
            print("discovery   network-only   none                           TCP/UDP  no")
            print("nat         network-only   none                           TCP/UDP  no")
            print("transfer    network-only   none                           TCP/UDP  no")
            print("hash        files-only     the shared path / target dir   no       no")
            print("plugins     plugin         read: system libs, own folder  no       itself")
        }
    }

    /// Applies a profile to this process, then tries things and reports what happened.
    struct Probe: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "probe",
            abstract: "Apply a profile to this process, then try the given operations and print the outcome.",
            discussion: "Each attempt prints one line: 'read PATH: allowed' or 'read PATH: denied (reason)'.")

        @Argument(help: "network-only, files-only or plugin") var profile: String
        @Option(name: .customLong("read"), help: "A path the profile lets us read.") var readable: [String] = []
        @Option(name: .customLong("write"), help: "A folder the profile lets us write.") var writable: [String] = []
        @Option(name: .customLong("try-read"), help: "Open this file for reading.") var tryRead: [String] = []
        @Option(name: .customLong("try-write"), help: "Create this file.") var tryWrite: [String] = []
        @Option(name: .customLong("try-connect"), help: "Connect over TCP to this IPv4 HOST:PORT.")
        var tryConnect: [String] = []
        @Option(name: .customLong("try-exec"), help: "Run this program.") var tryExec: [String] = []
        @Option(name: .customLong("try-signal"), help: "Send signal 0 to this process id.") var trySignal: [Int32] = []
        @Option(name: .customLong("try-unix"), help: "Connect to this Unix socket (an ssh-agent, say).")
        var tryUnix: [String] = []
        @Option(name: .customLong("try-tiocsti"), help: "Push a byte into this descriptor's terminal input (TIOCSTI).")
        var tryTIOCSTI: [Int32] = []
        @Flag(name: .customLong("try-userns"), help: "Start a child in a new user namespace.") var tryUserNamespace =
            false

        func run() throws {
            guard let kind = SandboxProfile.Kind(rawValue: profile), kind != .none else {
                throw ValidationError("profile must be network-only, files-only or plugin")
            }
            print("applied: \(Sandbox.apply(SandboxProfile(kind: kind, readable: readable, writable: writable)))")
            func report(_ what: String, _ ok: Bool) {
                print("\(what): " + (ok ? "allowed" : "denied (\(String(cString: strerror(errno))))"))
            }
            for path in tryRead {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                report("read \(path)", fd >= 0)
                if fd >= 0 { close(fd) }
            }
            for path in tryWrite {
                let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
                report("write \(path)", fd >= 0)
                if fd >= 0 { close(fd) }
            }
            for target in tryConnect { report("connect \(target)", connectTCP(target)) }
            for path in tryExec {
                var pid: pid_t = 0
                let argv: [UnsafeMutablePointer<CChar>?] = [strdup(path), nil]
                defer { for pointer in argv { free(pointer) } }
                let rc = posix_spawn(&pid, path, nil, nil, argv, environ)
                if rc == 0 {
                    var status: Int32 = 0
                    waitpid(pid, &status, 0)
                } else {
                    errno = rc
                }
                report("exec \(path)", rc == 0)
            }
            for pid in trySignal { report("signal \(pid)", kill(pid, 0) == 0) }
            for path in tryUnix { report("unix \(path)", connectUnix(path)) }
            for fd in tryTIOCSTI { report("tiocsti \(fd)", peershare_probe_tiocsti(fd) == 0) }
            if tryUserNamespace { report("userns", peershare_probe_clone_newuser() == 0) }
        }

        private func connectUnix(_ path: String) -> Bool {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8.prefix(107))
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (index, byte) in bytes.enumerated() { raw[index] = byte }
            }
            return withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
                }
            }
        }

        private func connectTCP(_ target: String) -> Bool {
            let parts = target.split(separator: ":")
            guard parts.count == 2, let port = UInt16(parts[1]) else {
                errno = EINVAL
                return false
            }
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            guard inet_pton(AF_INET, String(parts[0]), &address.sin_addr) == 1 else {
                errno = EINVAL
                return false
            }
            return withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
        }
    }

    /// How the supervisor starts a plugin: confine this process, then become the plugin.
    struct Exec: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "exec", abstract: "Start a plugin inside the plugin sandbox (used by the supervisor).",
            shouldDisplay: false)

        @Option(name: .customLong("read"), help: "A path the plugin may read.") var readable: [String] = []
        @Argument(help: "The plugin executable.") var path: String

        func run() throws {
            let report = Sandbox.apply(SandboxProfile(kind: .plugin, readable: readable))
            if report.seccompError != nil {
                StandardStream.write("peershare: plugin sandbox: \(report)\n", to: StandardStream.error)
            }
            let argv: [UnsafeMutablePointer<CChar>?] = [strdup(path), nil]
            execv(path, argv)
            StandardStream.write(
                "peershare: cannot start plugin \(path): \(String(cString: strerror(errno)))\n",
                to: StandardStream.error)
            throw ExitCode(127)
        }
    }
}
