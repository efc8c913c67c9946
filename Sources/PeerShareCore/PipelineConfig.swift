import Foundation

/// pipeline.json: the versioned manifest that configures workers, limits and (from the
/// pipeline issue on) the stages every chunk passes through on the wire.
///
/// Lookup order: `--config FILE`, then `$XDG_CONFIG_HOME/peershare/pipeline.json`
/// (`~/.config/...` when XDG_CONFIG_HOME is unset), then `PipelineConfig.defaults`, which
/// equals the repository's pipeline.json (a test keeps the two in step).
public struct PipelineConfig: Equatable, Sendable {
    public static let schemaVersion = 1

    public struct Workers: Equatable, Sendable {
        /// How often the supervisor pings each worker.
        public var heartbeatIntervalMs = 1000
        /// A worker that has not answered for this long is killed and restarted.
        public var heartbeatTimeoutMs = 10_000
        /// Restarts allowed within `restartWindowMs` before the supervisor gives up.
        public var maxRestarts = 5
        public var restartWindowMs = 60_000
        /// First restart delay; doubles on every further crash up to the maximum.
        public var restartBackoffMs = 100
        public var restartBackoffMaxMs = 5000
    }

    public struct Limits: Equatable, Sendable {
        /// Chunk requests a downloader keeps outstanding per peer.
        public var requestsInFlight = 16
        /// Peer connections a seeder accepts at once.
        public var maxPeers = 64
        /// Bytes per second sent to all peers together; 0 is unlimited.
        public var maxUploadRate: Double = 0
        /// Bytes per second received from all peers together; 0 is unlimited.
        public var maxDownloadRate: Double = 0
        /// Bytes per second sent to any one peer; 0 is unlimited.
        public var maxPeerUploadRate: Double = 0
    }

    public struct DHT: Equatable, Sendable {
        /// Find and announce shares through the Mainline DHT (BEP 5).
        public var enabled = true
        /// UDP address of the DHT node; port 0 picks a free one (and keeps no saved table).
        public var listen = "0.0.0.0:0"
        /// Routers a node with an empty table joins through: the public Mainline routers.
        public var bootstrap = [
            "router.bittorrent.com:6881", "dht.transmissionbt.com:6881", "router.utorrent.com:6881",
        ]
    }

    public struct NAT: Equatable, Sendable {
        /// Ask STUN servers, map ports, use relays; `--no-nat` turns it off for one run.
        public var enabled = true
        /// STUN servers (`peershare nat`): two at different addresses tell the NAT's kind.
        public var stun = ["stun.l.google.com:19302", "stun.cloudflare.com:3478"]
        /// PeerShare relays (`peershare relay`) a share registers with, so peers that cannot
        /// reach it directly still can; they are named in its link. `"dht"` stands for relays
        /// found in the DHT (announced under `DHTKey.relays`).
        public var relays: [String] = []
        /// A running share volunteers as a relay on this address too ("HOST:PORT"; nil: no).
        public var relay: String?
        /// Through a relay, first try a direct connection (hole punching, the seeder dialling
        /// back); false: straight to the relay's bridge (networks that frown on punching).
        public var punch = true
    }

    public struct LAN: Equatable, Sendable {
        /// Announce shares and look for peers on the local network (BEP 14 multicast), on
        /// interfaces with a private address only; `--no-lan` turns it off for one run.
        public var enabled = true
    }

    public var version = schemaVersion
    public var stages: [StageSpec] = []
    public var dht = DHT()
    public var nat = NAT()
    public var lan = LAN()
    public var workers = Workers()
    public var limits = Limits()

    public init() {}

    public static let defaults = PipelineConfig()

    public struct LoadError: Error, CustomStringConvertible {
        public var file: String
        public var key: String?
        public var problem: String
        public var description: String {
            if let key { return "\(file): '\(key)': \(problem)" }
            return "\(file): \(problem)"
        }
    }

    /// Where the configuration comes from when `--config` is not given.
    public static func userConfigPath(environment: [String: String]) -> String? {
        if let xdg = environment["XDG_CONFIG_HOME"], !xdg.isEmpty {
            return xdg + "/peershare/pipeline.json"
        }
        if let home = environment["HOME"], !home.isEmpty {
            return home + "/.config/peershare/pipeline.json"
        }
        return nil
    }

    /// Resolves the configuration: an explicit file must exist; the user file is used if present.
    public static func load(explicitPath: String?, environment: [String: String]) throws -> (PipelineConfig, String) {
        if let explicitPath {
            return (try load(file: explicitPath), explicitPath)
        }
        if let user = userConfigPath(environment: environment), FileManager.default.fileExists(atPath: user) {
            return (try load(file: user), user)
        }
        return (defaults, "built-in defaults")
    }

    public static func load(file: String) throws -> PipelineConfig {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw LoadError(file: file, key: nil, problem: "cannot read the file (missing or unreadable)")
        }
        guard data.count <= 1 << 20 else {
            throw LoadError(file: file, key: nil, problem: "larger than 1 MiB; this is not a pipeline manifest")
        }
        return try parse(data, file: file)
    }

    public static func parse(_ data: Data, file: String) throws -> PipelineConfig {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw LoadError(file: file, key: nil, problem: "not valid JSON (\(error.localizedDescription))")
        }
        let reader = JSONObjectReader(file: file)
        let root = try reader.object(object, key: "(top level)")
        try reader.allowOnly(["version", "stages", "workers", "limits", "dht", "nat", "lan"], in: root, prefix: "")

        var config = PipelineConfig()
        guard let versionValue = root["version"] else {
            throw LoadError(file: file, key: "version", problem: "missing; expected \(schemaVersion)")
        }
        config.version = try reader.int(versionValue, key: "version", range: schemaVersion...schemaVersion)

        if let stages = root["stages"] {
            guard let list = stages as? [Any] else {
                throw LoadError(file: file, key: "stages", problem: "expected an array of stages")
            }
            // Plugin paths are relative to the config file's folder; a relative --config path
            // is made absolute first, or "pipeline.json" would give the folder "" and "/".
            let absolute = file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file
            let folder = (absolute as NSString).deletingLastPathComponent
            config.stages = try list.enumerated().map { index, value in
                try reader.stage(value, key: "stages[\(index)]", folder: folder)
            }
            try StageSpec.validateOrder(config.stages, file: file)
        }
        if let workersValue = root["workers"] {
            let workers = try reader.object(workersValue, key: "workers")
            let keys = [
                "heartbeatIntervalMs", "heartbeatTimeoutMs", "maxRestarts", "restartWindowMs",
                "restartBackoffMs", "restartBackoffMaxMs",
            ]
            try reader.allowOnly(keys, in: workers, prefix: "workers.")
            func read(_ key: String, _ range: ClosedRange<Int>, _ into: inout Int) throws {
                if let value = workers[key] { into = try reader.int(value, key: "workers." + key, range: range) }
            }
            try read("heartbeatIntervalMs", 10...600_000, &config.workers.heartbeatIntervalMs)
            try read("heartbeatTimeoutMs", 100...3_600_000, &config.workers.heartbeatTimeoutMs)
            try read("maxRestarts", 0...1000, &config.workers.maxRestarts)
            try read("restartWindowMs", 1000...86_400_000, &config.workers.restartWindowMs)
            try read("restartBackoffMs", 0...600_000, &config.workers.restartBackoffMs)
            try read("restartBackoffMaxMs", 0...3_600_000, &config.workers.restartBackoffMaxMs)
        }
        if let limitsValue = root["limits"] {
            let limits = try reader.object(limitsValue, key: "limits")
            try reader.allowOnly(
                ["requestsInFlight", "maxPeers", "maxUploadRate", "maxDownloadRate", "maxPeerUploadRate"], in: limits,
                prefix: "limits.")
            for key in ["maxUploadRate", "maxDownloadRate", "maxPeerUploadRate"] {
                guard let value = limits[key] else { continue }
                guard let text = value as? String, let rate = try? ByteRate.parse(text) else {
                    throw LoadError(
                        file: file, key: "limits." + key,
                        problem: "expected a rate such as \"5MB/s\", \"512KiB/s\" or \"0\"")
                }
                switch key {
                case "maxUploadRate": config.limits.maxUploadRate = rate
                case "maxDownloadRate": config.limits.maxDownloadRate = rate
                default: config.limits.maxPeerUploadRate = rate
                }
            }
            if let value = limits["requestsInFlight"] {
                config.limits.requestsInFlight = try reader.int(value, key: "limits.requestsInFlight", range: 1...256)
            }
            if let value = limits["maxPeers"] {
                config.limits.maxPeers = try reader.int(value, key: "limits.maxPeers", range: 1...10_000)
            }
        }
        if let dhtValue = root["dht"] {
            let dht = try reader.object(dhtValue, key: "dht")
            try reader.allowOnly(["enabled", "listen", "bootstrap"], in: dht, prefix: "dht.")
            if let value = dht["enabled"] { config.dht.enabled = try reader.bool(value, key: "dht.enabled") }
            if let value = dht["listen"] {
                config.dht.listen = try reader.address(value, key: "dht.listen")
            }
            if let value = dht["bootstrap"] {
                guard let list = value as? [Any] else {
                    throw LoadError(
                        file: file, key: "dht.bootstrap", problem: "expected an array of \"HOST:PORT\" strings")
                }
                config.dht.bootstrap = try list.enumerated().map { try reader.address($1, key: "dht.bootstrap[\($0)]") }
            }
        }
        if let lanValue = root["lan"] {
            let lan = try reader.object(lanValue, key: "lan")
            try reader.allowOnly(["enabled"], in: lan, prefix: "lan.")
            if let value = lan["enabled"] { config.lan.enabled = try reader.bool(value, key: "lan.enabled") }
        }
        if let natValue = root["nat"] {
            let nat = try reader.object(natValue, key: "nat")
            try reader.allowOnly(["enabled", "stun", "relays", "punch", "relay"], in: nat, prefix: "nat.")
            if let value = nat["relay"] { config.nat.relay = try reader.address(value, key: "nat.relay") }
            if let value = nat["enabled"] { config.nat.enabled = try reader.bool(value, key: "nat.enabled") }
            if let value = nat["punch"] { config.nat.punch = try reader.bool(value, key: "nat.punch") }
            for key in ["stun", "relays"] {
                guard let value = nat[key] else { continue }
                guard let list = value as? [Any], list.count <= 16 else {
                    throw LoadError(
                        file: file, key: "nat.\(key)", problem: "expected an array of at most 16 \"HOST:PORT\" strings")
                }
                let addresses = try list.enumerated().map { index, item in
                    // "dht" in nat.relays: relays found in the DHT.
                    if key == "relays", (item as? String) == "dht" { return "dht" }
                    return try reader.address(item, key: "nat.\(key)[\(index)]")
                }
                if key == "stun" { config.nat.stun = addresses } else { config.nat.relays = addresses }
            }
        }
        return config
    }
}

/// One stage of the transfer pipeline as pipeline.json names it.
///
///     {"name": "zlib", "level": 6}                       built-in deflate, level 1...9
///     {"name": "sodium"}                                 built-in end-to-end encryption
///     {"name": "pad", "plugin": "plugins/pad", "options": {"block": "4096"}}
///                                                        a custom stage: an executable
///
/// Every stage may say `"required": true|false` (default true): a required stage that the
/// peer does not run fails the connection; an optional one is skipped with that peer.
public struct StageSpec: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case zlib(level: Int)
        case sodium
        /// An executable speaking docs/PLUGINS.md's protocol; `options` are passed to it.
        case plugin(path: String, options: [String: String])
    }

    public var name: String
    public var kind: Kind
    public var required: Bool

    public init(name: String, kind: Kind, required: Bool = true) {
        self.name = name
        self.kind = kind
        self.required = required
    }

    public static let builtInNames = ["zlib", "sodium"]

    /// Compression after encryption cannot shrink anything (ciphertext looks random), and a
    /// stage twice is a mistake: both are refused when the manifest loads.
    static func validateOrder(_ stages: [StageSpec], file: String) throws {
        var seen: Set<String> = []
        var encryptedAt: Int?
        for (index, stage) in stages.enumerated() {
            guard seen.insert(stage.name).inserted else {
                throw PipelineConfig.LoadError(
                    file: file, key: "stages[\(index)]", problem: "stage '\(stage.name)' appears twice")
            }
            if case .sodium = stage.kind { encryptedAt = index }
            if case .zlib = stage.kind, let encryptedAt {
                throw PipelineConfig.LoadError(
                    file: file, key: "stages[\(index)]",
                    problem:
                        "'zlib' after 'sodium' (stages[\(encryptedAt)]): compression after encryption cannot shrink anything, because ciphertext looks random; put zlib before sodium"
                )
            }
        }
    }

    public var isEncryption: Bool { if case .sodium = kind { true } else { false } }
}

/// Typed access to JSONSerialization's output, with errors that name the file and key.
private struct JSONObjectReader {
    func stage(_ value: Any, key: String, folder: String) throws -> StageSpec {
        let object = try object(value, key: key)
        guard let nameValue = object["name"] else {
            throw PipelineConfig.LoadError(file: file, key: key + ".name", problem: "missing; every stage has a name")
        }
        guard let name = nameValue as? String, !name.isEmpty, name.utf8.count <= 64,
            name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" })
        else {
            throw PipelineConfig.LoadError(
                file: file, key: key + ".name", problem: "expected a short name of letters, digits, - and _")
        }
        var required = true
        if let value = object["required"] { required = try bool(value, key: key + ".required") }
        if let pluginValue = object["plugin"] {
            try allowOnly(["name", "plugin", "options", "required"], in: object, prefix: key + ".")
            guard !StageSpec.builtInNames.contains(name) else {
                throw PipelineConfig.LoadError(
                    file: file, key: key + ".name",
                    problem: "'\(name)' is a built-in stage; give the plugin another name")
            }
            guard let relative = pluginValue as? String, !relative.isEmpty else {
                throw PipelineConfig.LoadError(
                    file: file, key: key + ".plugin", problem: "expected the path of the plugin executable")
            }
            let path = relative.hasPrefix("/") ? relative : folder + "/" + relative
            guard access(path, X_OK) == 0 else {
                throw PipelineConfig.LoadError(
                    file: file, key: key + ".plugin", problem: "'\(path)' is missing or not executable")
            }
            var options: [String: String] = [:]
            if let optionsValue = object["options"] {
                for (option, raw) in try self.object(optionsValue, key: key + ".options") {
                    guard let text = raw as? String else {
                        throw PipelineConfig.LoadError(
                            file: file, key: key + ".options." + option, problem: "expected a string")
                    }
                    options[option] = text
                }
            }
            return StageSpec(name: name, kind: .plugin(path: path, options: options), required: required)
        }
        switch name {
        case "zlib":
            try allowOnly(["name", "level", "required"], in: object, prefix: key + ".")
            var level = 6
            if let value = object["level"] { level = try int(value, key: key + ".level", range: 1...9) }
            return StageSpec(name: name, kind: .zlib(level: level), required: required)
        case "sodium":
            try allowOnly(["name", "required"], in: object, prefix: key + ".")
            // An encrypted share is only ever fetched encrypted: an optional encryption stage
            // would let anyone who strips it from the hellos read the transfer.
            guard required else {
                throw PipelineConfig.LoadError(
                    file: file, key: key + ".required",
                    problem: "the sodium stage cannot be optional: an encrypted share is only ever fetched encrypted")
            }
            return StageSpec(name: name, kind: .sodium, required: true)
        default:
            throw PipelineConfig.LoadError(
                file: file, key: key + ".name",
                problem:
                    "unknown stage '\(name)'; the built-in stages are zlib and sodium, and a custom stage needs \"plugin\": PATH"
            )
        }
    }

    var file: String

    func object(_ value: Any, key: String) throws -> [String: Any] {
        guard let object = value as? [String: Any] else {
            throw PipelineConfig.LoadError(file: file, key: key, problem: "expected an object")
        }
        return object
    }

    func allowOnly(_ keys: [String], in object: [String: Any], prefix: String) throws {
        for key in object.keys.sorted() where !keys.contains(key) {
            throw PipelineConfig.LoadError(
                file: file, key: prefix + key,
                problem: "unknown key; expected one of \(keys.joined(separator: ", "))")
        }
    }

    func bool(_ value: Any, key: String) throws -> Bool {
        guard let number = value as? NSNumber, String(cString: number.objCType) == "c" else {
            throw PipelineConfig.LoadError(file: file, key: key, problem: "expected true or false")
        }
        return number.boolValue
    }

    func address(_ value: Any, key: String) throws -> String {
        guard let text = value as? String, (try? PeerAddress.parse(text)) != nil else {
            throw PipelineConfig.LoadError(file: file, key: key, problem: "expected a \"HOST:PORT\" string")
        }
        return text
    }

    func int(_ value: Any, key: String, range: ClosedRange<Int>) throws -> Int {
        // JSONSerialization gives NSNumber for both numbers and booleans; refuse booleans
        // and fractions so "true" or 1.5 is never taken as a count.
        guard let number = value as? NSNumber, String(cString: number.objCType) != "c",
            number.doubleValue == number.doubleValue.rounded(),
            let integer = Int(exactly: number.doubleValue)
        else {
            throw PipelineConfig.LoadError(
                file: file, key: key, problem: "expected an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        guard range.contains(integer) else {
            throw PipelineConfig.LoadError(
                file: file, key: key,
                problem: "\(integer) is out of range; expected \(range.lowerBound)...\(range.upperBound)")
        }
        return integer
    }
}
