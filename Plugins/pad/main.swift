import Foundation
import PluginKit

/// Length padding: every frame is padded with random bytes up to a multiple of `block`
/// (default 4096), so an observer of the (encrypted) traffic sees sizes in steps of `block`
/// instead of exact message and chunk sizes. Put it before `sodium`, so the padding is
/// encrypted with the rest:
///
///     "stages": [{"name": "pad", "plugin": "PATH/peershare-pad", "options": {"block": "16384"}},
///                {"name": "sodium"}]
///
/// Frame: u32 real length ‖ the data ‖ random padding.
struct LengthPadding: PipelineStage {
    static let version: UInt16 = 1
    let block: Int

    init(options: [String: String]) throws {
        let text = options["block"] ?? "4096"
        guard let block = Int(text), block >= 16, block <= 1 << 20 else {
            throw StageError("option 'block' must be an integer from 16 to 1048576, got '\(text)'")
        }
        self.block = block
    }

    mutating func encode(connection: UInt32, _ data: [UInt8]) throws -> [UInt8] {
        let total = ((data.count + 4 + block - 1) / block) * block
        var out = Writer()
        out.u32(UInt32(data.count))
        out.bytes += data
        var padding = [UInt8](repeating: 0, count: total - out.bytes.count)
        arc4random_buf(&padding, padding.count)
        out.bytes += padding
        return out.bytes
    }

    mutating func decode(connection: UInt32, _ data: [UInt8], limit: Int) throws -> [UInt8] {
        var reader = Reader(data)
        let length = Int(try reader.u32())
        guard length <= limit, length <= data.count - 4 else {
            throw StageError("padded frame claims \(length) bytes of \(data.count - 4)")
        }
        guard data.count % block == 0 else {
            throw StageError("frame of \(data.count) bytes is not padded to \(block)")
        }
        return Array(data[4..<(4 + length)])
    }
}

PluginMain.run(LengthPadding.self)
