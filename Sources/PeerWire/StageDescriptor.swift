import PeerShareCore

/// What a peer says about one stage of its pipeline in the handshake: enough to agree on a
/// common pipeline, nothing about its options.
public struct StageDescriptor: Equatable, Sendable {
    public var name: String
    public var version: UInt16
    public var required: Bool

    public init(name: String, version: UInt16, required: Bool) {
        self.name = name
        self.version = version
        self.required = required
    }

    public static let maxStages = 16
    public static let maxNameLength = 64

    public static func encode(_ list: [StageDescriptor], into w: inout ByteWriter) {
        w.u8(UInt8(min(list.count, maxStages)))
        for stage in list.prefix(maxStages) {
            w.string(String(stage.name.prefix(maxNameLength)))
            w.u16(stage.version)
            w.bool(stage.required)
        }
    }

    public static func decode(from r: inout ByteReader) throws -> [StageDescriptor] {
        let count = Int(try r.u8())
        guard count <= maxStages else {
            throw DecodeError.tooLarge(what: "stage list", length: count, limit: maxStages)
        }
        var list: [StageDescriptor] = []
        for _ in 0..<count {
            let name = try r.string()
            guard !name.isEmpty, name.utf8.count <= maxNameLength else {
                throw DecodeError.invalid("stage name of \(name.utf8.count) bytes")
            }
            list.append(StageDescriptor(name: name, version: try r.u16(), required: try r.bool()))
        }
        return list
    }

    public static func encoded(_ list: [StageDescriptor]) -> [UInt8] {
        var w = ByteWriter()
        encode(list, into: &w)
        return w.bytes
    }
}

/// Agreeing on a pipeline: both peers run this on the same two lists and get the same answer.
public enum PipelineNegotiation {
    public struct Mismatch: Error, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// The names of the stages both peers run, in order; or why they cannot talk. A stage
    /// only one side has is skipped unless that side marked it required.
    public static func agree(local: [StageDescriptor], remote: [StageDescriptor]) -> Result<[String], Mismatch> {
        func find(_ name: String, in list: [StageDescriptor]) -> StageDescriptor? { list.first { $0.name == name } }
        for stage in local where stage.required {
            guard let theirs = find(stage.name, in: remote) else {
                return .failure(Mismatch(description: "we require stage '\(stage.name)', which the peer does not run"))
            }
            guard theirs.version == stage.version else {
                return .failure(
                    Mismatch(
                        description:
                            "stage '\(stage.name)': we run version \(stage.version), the peer version \(theirs.version)"
                    ))
            }
        }
        for stage in remote where stage.required {
            guard let ours = find(stage.name, in: local) else {
                return .failure(Mismatch(description: "the peer requires stage '\(stage.name)', which we do not run"))
            }
            guard ours.version == stage.version else {
                return .failure(
                    Mismatch(
                        description:
                            "stage '\(stage.name)': the peer runs version \(stage.version), we run version \(ours.version)"
                    ))
            }
        }
        let common = local.filter { stage in find(stage.name, in: remote)?.version == stage.version }.map(\.name)
        let theirOrder = remote.map(\.name).filter { common.contains($0) }
        guard common == theirOrder else {
            return .failure(
                Mismatch(
                    description:
                        "stage order differs: we run \(common.joined(separator: ", ")), the peer \(theirOrder.joined(separator: ", "))"
                ))
        }
        return .success(common)
    }
}
