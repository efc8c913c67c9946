import Wire

/// The pipeline as the transfer worker gets it from the supervisor (`configurePipeline`):
/// each stage's name, version, whether it is required, and what the worker needs to run
/// it. Plugin paths and options stay with the supervisor, which runs the plugins.
public struct PipelinePlan: Equatable, Sendable {
    public enum Kind: UInt8, Sendable {
        case zlib = 1
        case sodium = 2
        /// Run by the supervisor's plugin host; the transfer worker calls it through the pipe.
        case plugin = 3
    }

    public struct Stage: Equatable, Sendable {
        public var name: String
        public var version: UInt16
        public var required: Bool
        public var kind: Kind
        /// zlib's level; 0 for the others.
        public var level: UInt8
        /// A plugin's options from pipeline.json, handed to it in its hello.
        public var options: [String: String]

        public init(
            name: String, version: UInt16, required: Bool, kind: Kind, level: UInt8 = 0, options: [String: String] = [:]
        ) {
            self.name = name
            self.version = version
            self.required = required
            self.kind = kind
            self.level = level
            self.options = options
        }
    }

    public var stages: [Stage]

    public init(stages: [Stage]) { self.stages = stages }

    public static let maxStages = 16

    public var encrypts: Bool { stages.contains { $0.kind == .sodium } }

    public func encoded() -> [UInt8] {
        var w = ByteWriter()
        w.u8(UInt8(min(stages.count, PipelinePlan.maxStages)))
        for stage in stages.prefix(PipelinePlan.maxStages) {
            w.string(stage.name)
            w.u16(stage.version)
            w.bool(stage.required)
            w.u8(stage.kind.rawValue)
            w.u8(stage.level)
            w.u16(UInt16(min(stage.options.count, 64)))
            for (key, value) in stage.options.sorted(by: { $0.key < $1.key }).prefix(64) {
                w.string(key)
                w.string(value)
            }
        }
        return w.bytes
    }

    public init(bytes: [UInt8]) throws {
        var r = ByteReader(bytes)
        let count = Int(try r.u8())
        guard count <= PipelinePlan.maxStages else {
            throw DecodeError.tooLarge(what: "pipeline", length: count, limit: PipelinePlan.maxStages)
        }
        var stages: [Stage] = []
        for _ in 0..<count {
            let name = try r.string()
            let version = try r.u16()
            let required = try r.bool()
            guard let kind = Kind(rawValue: try r.u8()) else { throw DecodeError.invalid("unknown stage kind") }
            let level = try r.u8()
            let optionCount = Int(try r.u16())
            guard optionCount <= 64 else { throw DecodeError.invalid("too many plugin options") }
            var options: [String: String] = [:]
            for _ in 0..<optionCount { options[try r.string()] = try r.string() }
            stages.append(
                Stage(name: name, version: version, required: required, kind: kind, level: level, options: options))
        }
        try r.expectEnd()
        self.stages = stages
    }
}
