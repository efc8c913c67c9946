import Foundation
import IPC
import Logging
import PeerShareCore
import Supervisor

/// Where and how the session's DHT node runs. Router names are resolved here, in the
/// supervisor, so the discovery worker needs neither DNS nor files.
public struct DHTSettings: Sendable {
    public var host: String
    public var port: Int
    /// Bootstrap routers as IPv4 "A.B.C.D:PORT".
    public var routers: [String]
    /// Where the routing table is saved on shutdown and loaded on start (nil: not kept).
    public var statePath: String?

    public init(host: String, port: Int, routers: [String], statePath: String?) {
        self.host = host
        self.port = port
        self.routers = routers
        self.statePath = statePath
    }

    /// Resolves HOST:PORT names to IPv4 addresses; names that do not resolve are reported
    /// through `warn` and skipped (a machine offline can still use local peers).
    public static func resolve(
        _ names: [PeerAddress], what: String = "DHT bootstrap node", warn: (String) -> Void
    ) -> [String] {
        var out: [String] = []
        var failed: [String] = []
        defer {
            if !failed.isEmpty {
                warn(
                    "cannot resolve \(what)\(failed.count > 1 ? "s" : "") \(failed.joined(separator: ", "))"
                        + (out.isEmpty && what == "DHT bootstrap node" ? "; the DHT starts with no one to ask" : ""))
            }
        }
        for name in names {
            var hints = addrinfo()
            hints.ai_family = AF_INET
            hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(name.host, String(name.port), &hints, &list) == 0, let first = list else {
                failed.append(name.description)
                continue
            }
            var cursor: UnsafeMutablePointer<addrinfo>? = first
            while let entry = cursor {
                if let address = entry.pointee.ai_addr, entry.pointee.ai_family == AF_INET {
                    let ip = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                        UInt32(bigEndian: $0.pointee.sin_addr.s_addr)
                    }
                    let text = "\(ip >> 24).\((ip >> 16) & 0xff).\((ip >> 8) & 0xff).\(ip & 0xff):\(name.port)"
                    if !out.contains(text) { out.append(text) }
                }
                cursor = entry.pointee.ai_next
            }
            freeaddrinfo(first)
        }
        return out
    }

    /// `$XDG_STATE_HOME/peershare/dht-PORT.dat`: only a node on a fixed port keeps its table,
    /// so two nodes on one machine never load the same identity.
    public static func defaultStatePath(port: Int, environment: [String: String]) -> String? {
        guard port != 0 else { return nil }
        let base: String
        if let state = environment["XDG_STATE_HOME"], !state.isEmpty {
            base = state
        } else if let home = environment["HOME"], !home.isEmpty {
            base = home + "/.local/state"
        } else {
            return nil
        }
        return base + "/peershare/dht-\(port).dat"
    }
}

/// The supervisor's side of the discovery worker, shared by every session that uses the DHT:
/// starts the node, sends requests, matches replies, and saves the table on shutdown.
/// Loop-confined like the supervisor.
/// Loop-confined to the supervisor's event loop (hence `@unchecked Sendable`).
public final class DHTClient: @unchecked Sendable {
    public typealias Completion = (Result<DHTReport, DHTFailure>) -> Void

    public struct DHTFailure: Error, CustomStringConvertible {
        public var code: UInt16
        public var description: String
    }

    let supervisor: Supervisor
    public let settings: DHTSettings
    let logger: Logger
    public private(set) var boundPort: Int?
    public private(set) var nodeID: [UInt8]?
    private var pending: [UInt32: (completion: Completion, trace: ((String) -> Void)?)] = [:]
    private var stateRequest: (id: UInt32, then: () -> Void)?
    public var onReady: ((Int) -> Void)?

    public init(supervisor: Supervisor, settings: DHTSettings, logger: Logger) {
        self.supervisor = supervisor
        self.settings = settings
        self.logger = logger
    }

    private var started = false

    /// Starts the node; once (the daemon's sessions share one node, and each asks).
    public func start() {
        guard !started else { return }
        started = true
        var state: [UInt8] = []
        if let path = settings.statePath, let data = FileManager.default.contents(atPath: path),
            data.count <= 1 << 20
        {
            state = Array(data)
            logger.info("loaded the DHT routing table from \(path)")
        }
        supervisor.send(
            .dhtStart(host: settings.host, port: UInt16(settings.port), routers: settings.routers, state: state),
            to: .discovery, tracking: .setup(key: "dht"))
    }

    /// `setupKey` makes the request part of the worker's setup: re-sent if it restarts. The
    /// key is qualified with the DHT key, so the announces of the daemon's many shares on one
    /// node are each kept (and can each be forgotten: `forget`).
    public func request(
        _ operation: DHTOperation, key: [UInt8], port: UInt16 = 0, setupKey: String? = nil,
        trace: ((String) -> Void)? = nil, completion: @escaping Completion
    ) {
        let id = supervisor.makeRequestID()
        pending[id] = (completion, trace)
        let message = WorkerCommand.dhtRequest(
            requestID: id, operation: operation, key: key, port: port, trace: trace != nil)
        if let setupKey {
            supervisor.send(message, to: .discovery, tracking: .setup(key: DHTClient.setupKey(setupKey, key)))
        } else {
            supervisor.send(message, to: .discovery, tracking: .request)
        }
    }

    static func setupKey(_ name: String, _ key: [UInt8]) -> String {
        name + " " + key.map { String($0, radix: 16) }.joined(separator: ".")
    }

    /// Stops re-sending a setup request (a share the daemon no longer holds is not announced
    /// again after a restart of the discovery worker).
    public func forget(setupKey: String, key: [UInt8]) {
        supervisor.forgetSetup(key: DHTClient.setupKey(setupKey, key), for: .discovery)
    }

    /// Consumes the discovery worker's messages; false for anything else.
    public func handle(_ message: WorkerReport) -> Bool {
        switch message {
        case .dhtReady(let port, let id):
            boundPort = Int(port)
            nodeID = id
            onReady?(Int(port))
            return true
        case .dhtTrace(let id, let line):
            pending[id]?.trace?(line)
            return true
        case .dhtResult(let id, let report):
            // Setup requests (announces) are answered again after a restart: keep no entry.
            pending.removeValue(forKey: id)?.completion(.success(report))
            return true
        case .dhtState(let id, let state, let summary):
            guard let request = stateRequest, request.id == id else {
                pendingSummary?(summary)
                pendingSummary = nil
                return true
            }
            stateRequest = nil
            save(state)
            request.then()
            return true
        case .failure(let id, let code, let text):
            guard let entry = pending.removeValue(forKey: id) else { return false }
            entry.completion(.failure(DHTFailure(code: code, description: text)))
            return true
        default:
            return false
        }
    }

    private var pendingSummary: ((String) -> Void)?

    /// The routing table and counters, as text for `peershare dht routes`.
    public func summary(_ completion: @escaping (String) -> Void) {
        pendingSummary = completion
        supervisor.send(.dhtStateRequest(requestID: supervisor.makeRequestID()), to: .discovery)
    }

    /// Asks for the routing table and writes it to `statePath` (at most 1 s), then `then`.
    public func saveState(then: @escaping () -> Void) {
        guard settings.statePath != nil, boundPort != nil else { return then() }
        let id = supervisor.makeRequestID()
        stateRequest = (id, then)
        supervisor.send(.dhtStateRequest(requestID: id), to: .discovery)
        supervisor.eventLoop.scheduleTask(in: .seconds(1)) { [self] in
            if let request = stateRequest, request.id == id {
                stateRequest = nil
                logger.warning("the DHT node did not send its table in time; not saved")
                request.then()
            }
        }
    }

    private func save(_ state: [UInt8]) {
        guard let path = settings.statePath, !state.isEmpty else { return }
        let url = URL(fileURLWithPath: path)
        do {
            try FileManager.default.createDirectory(
                at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            // Atomic: a crash mid-write leaves the old table, never half of one.
            try Data(state).write(to: url, options: .atomic)
            logger.info("saved the DHT routing table to \(path)")
        } catch {
            logger.warning("cannot save the DHT routing table to \(path): \(error)")
        }
    }
}

enum FetchLimits {
    /// A `fetch` message carries at most this many peers.
    static let maxFetchPeers = 256
}

/// Taking a key off the DHT and the LAN: the daemon pauses or removes a share or download.
public enum Announcements {
    /// The discovery worker stops announcing (and looking for) `key`, and a restarted one will
    /// not start again.
    public static func withdraw(key: [UInt8], dht: DHTClient?, lan: LANClient?, supervisor: Supervisor) {
        dht?.forget(setupKey: "announce", key: key)
        lan?.forget(key: key)
        supervisor.send(.withdraw(key: key), to: .discovery)
    }
}
