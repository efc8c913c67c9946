import PeerShareCore
import Wire

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
        // Each side's required stages, checked against the other side, in that side's words.
        typealias Side = (
            requiring: [StageDescriptor], other: [StageDescriptor], absent: (String) -> String,
            versions: (String, UInt16, UInt16) -> String
        )
        let sides: [Side] = [
            (
                local, remote, { "we require stage '\($0)', which the peer does not run" },
                { "stage '\($0)': we run version \($1), the peer version \($2)" }
            ),
            (
                remote, local, { "the peer requires stage '\($0)', which we do not run" },
                { "stage '\($0)': the peer runs version \($1), we run version \($2)" }
            ),
        ]
        for side in sides {
            for stage in side.requiring where stage.required {
                guard let counterpart = find(stage.name, in: side.other) else {
                    return .failure(Mismatch(description: side.absent(stage.name)))
                }
                guard counterpart.version == stage.version else {
                    return .failure(
                        Mismatch(description: side.versions(stage.name, stage.version, counterpart.version)))
                }
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
