import CSystemShims
import Foundation
import IPC
import Logging
import NIOCore
import WorkerRuntime

/// A custom pipeline stage as the supervisor runs it: an executable from pipeline.json.
public struct PluginSpec: Sendable, Equatable {
    public var name: String
    public var path: String

    public init(name: String, path: String) {
        self.name = name
        self.path = path
    }
}

/// Runs the plugin stages: each is one more isolated process, started by the supervisor,
/// with its stdin and stdout on a socketpair whose other end the transfer worker inherits
/// (plugin k on descriptor 6 + k), so chunk data goes straight from the transfer worker to
/// the plugin and back. A plugin that exits is restarted, and so is the transfer worker,
/// which then inherits the new pipe (descriptors cannot be swapped under a running worker
/// without descriptor passing). Each plugin starts inside the `plugin` sandbox (read-only
/// system libraries and its own folder, no writes, no sockets): `peershare sandbox exec`
/// confines itself and then executes the plugin, which inherits the confinement.
/// Loop-confined.
final class PluginHost: @unchecked Sendable {
    struct Running {
        var pid: pid_t
        /// Our end of the socketpair, inherited by the transfer worker.
        var hostDescriptor: Int32
        var generation: Int
        /// Given to a transfer worker, which said hello to it.
        var handedOut = false
    }

    static let firstDescriptor: Int32 = WorkerDescriptor.firstPlugin
    static let maxRestarts = 5

    let specs: [PluginSpec]
    let logger: Logger
    let loop: EventLoop
    private(set) var running: [Running?]
    private var generation = 0
    private var restarts = 0
    /// How many times each plugin has been started, told to it in PEERSHARE_PLUGIN_START.
    private var starts: [Int] = []
    var stopping = false
    /// Called when a plugin was restarted: the transfer worker must be restarted too.
    var onRestart: ((String) -> Void)?
    /// Called when a plugin keeps failing.
    var onGiveUp: ((String) -> Void)?

    init(specs: [PluginSpec], loop: EventLoop, logger: Logger) {
        self.specs = specs
        self.loop = loop
        self.logger = logger
        self.running = Array(repeating: nil, count: specs.count)
        self.starts = Array(repeating: 0, count: specs.count)
    }

    /// Descriptor mappings for a transfer worker about to be spawned: (our end, 5 + k).
    /// Every transfer worker gets plugins of its own: a plugin that already served an earlier
    /// transfer worker is replaced first, so a plugin process sees exactly one hello
    /// (docs/PLUGINS.md).
    func descriptorsForNewTransferWorker() -> [(Int32, Int32)] {
        for index in running.indices where running[index]?.handedOut == true {
            guard let old = running[index] else { continue }
            kill(old.pid, SIGTERM)
            do {
                try start(index)
            } catch {
                logger.error("\(error)")
                running[index] = nil
            }
        }
        for index in running.indices { running[index]?.handedOut = true }
        return running.enumerated().compactMap { index, plugin in
            plugin.map { ($0.hostDescriptor, PluginHost.firstDescriptor + Int32(index)) }
        }
    }

    func startAll() throws {
        for index in specs.indices { try start(index) }
    }

    private func start(_ index: Int) throws {
        let spec = specs[index]
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw PluginHostError("plugin '\(spec.name)': socketpair failed: \(String(cString: strerror(errno)))")
        }
        starts[index] += 1
        let variables = StderrRelay.childEnvironment(
            ProcessInfo.processInfo.environment, extra: ["PEERSHARE_PLUGIN_START": String(starts[index])])
        let (executable, arguments) = PluginHost.command(for: spec.path)
        // stdin and stdout: the socketpair; stderr: a pipe we read and log, never the terminal.
        let stderrPipe = StderrRelay.makePipe()
        let pid = withCStrings(arguments) { argv in
            withCStrings(variables) { envp in
                var from: [Int32] = [pair[1], pair[1]]
                var to: [Int32] = [0, 1]
                if let stderrPipe {
                    from.append(stderrPipe.write)
                    to.append(2)
                }
                return peershare_spawn_fds(executable, argv, envp, &from, &to, Int32(from.count))
            }
        }
        close(pair[1])
        if let stderrPipe {
            close(stderrPipe.write)
            if pid > 0 {
                StderrRelay.start(reading: stderrPipe.read, prefix: "plugin '\(spec.name)': ")
            } else {
                close(stderrPipe.read)
            }
        }
        guard pid > 0 else {
            close(pair[0])
            throw PluginHostError(
                "plugin '\(spec.name)': cannot start \(spec.path): \(String(cString: strerror(errno)))")
        }
        if let old = running[index] { close(old.hostDescriptor) }
        generation += 1
        running[index] = Running(pid: pid, hostDescriptor: pair[0], generation: generation)
        logger.info("started plugin '\(spec.name)' (pid \(pid))")
        reap(index: index, pid: pid, generation: generation)
    }

    /// The plugin itself, or this binary's `sandbox exec` confining itself and then executing
    /// the plugin (unless PEERSHARE_SANDBOX=off).
    static func command(for path: String) -> (String, [String]) {
        guard !Sandbox.disabledByEnvironment else { return (path, [path]) }
        let readable = SandboxProfile.pluginReadable(pluginPath: path)
        return (
            OwnExecutable.path(),
            ["peershare", "sandbox", "exec"] + readable.flatMap { ["--read", $0] } + ["--", path]
        )
    }

    private func reap(index: Int, pid: pid_t, generation: Int) {
        Thread.detachNewThread { [self] in
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            let text =
                status & 0x7f == 0
                ? "exited with status \((status >> 8) & 0xff)" : "was killed by signal \(status & 0x7f)"
            loop.execute { [self] in exited(index: index, generation: generation, status: text) }
        }
    }

    private func exited(index: Int, generation: Int, status: String) {
        guard running[index]?.generation == generation, !stopping else { return }
        let name = specs[index].name
        restarts += 1
        guard restarts <= PluginHost.maxRestarts else {
            onGiveUp?("plugin '\(name)' failed \(restarts) times (last: \(status)); giving up")
            return
        }
        logger.warning("plugin '\(name)' \(status); restarting it, and the transfer worker with it")
        do {
            try start(index)
            onRestart?(name)
        } catch {
            onGiveUp?("\(error)")
        }
    }

    /// The transfer worker reported the plugin hung or answered garbage: kill it; the
    /// reaper restarts it.
    func failed(name: String, reason: String) {
        guard let index = specs.firstIndex(where: { $0.name == name }), let pid = running[index]?.pid else { return }
        logger.warning("plugin '\(name)': \(reason); killing it")
        kill(pid, SIGKILL)
    }

    func stopAll() {
        stopping = true
        for plugin in running.compactMap({ $0 }) {
            kill(plugin.pid, SIGTERM)
            close(plugin.hostDescriptor)
        }
    }
}

struct PluginHostError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
