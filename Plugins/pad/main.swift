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
///
/// The two peers agree on the block in the connection handshake: each sends its own (u32),
/// and both pad to the larger, so the side that asks for more privacy gets it.
struct LengthPadding: PipelineStage {
    static let version: UInt16 = 2
    static let takesPartInHandshake = true
    let block: Int
    /// The block agreed with each connection's peer.
    var agreed: [UInt32: Int] = [:]

    init(options: [String: String]) throws {
        let text = options["block"] ?? "4096"
        guard let block = Int(text), block >= 16, block <= 1 << 20 else {
            throw StageError("option 'block' must be an integer from 16 to 1048576, got '\(text)'")
        }
        self.block = block
    }

    mutating func handshake(connection: UInt32, received: [UInt8]) throws -> (done: Bool, send: [UInt8]) {
        var mine = ByteWriter()
        mine.u32(UInt32(block))
        if received.isEmpty { return (false, mine.bytes) }  // we connected: offer ours first
        var reader = ByteReader(received)
        let theirs = Int(try reader.u32())
        guard theirs >= 16, theirs <= 1 << 20 else { throw StageError("peer offered block \(theirs)") }
        let firstToSpeak = agreed[connection] == nil && !sentOffer.contains(connection)
        agreed[connection] = max(block, theirs)
        // The accepting side answers with its own block; the connecting side is then done.
        return (true, firstToSpeak ? mine.bytes : [])
    }

    private var sentOffer: Set<UInt32> = []

    mutating func open(connection: UInt32, server: Bool) throws {
        if !server { sentOffer.insert(connection) }
    }

    mutating func close(connection: UInt32) {
        agreed[connection] = nil
        sentOffer.remove(connection)
    }

    mutating func encode(connection: UInt32, _ data: [UInt8]) throws -> [UInt8] {
        let block = agreed[connection] ?? self.block
        let total = ((data.count + 4 + block - 1) / block) * block
        var out = ByteWriter(capacity: total)
        out.u32(UInt32(data.count))
        out.raw(data)
        var padding = [UInt8](repeating: 0, count: total - out.bytes.count)
        arc4random_buf(&padding, padding.count)
        out.raw(padding)
        return out.bytes
    }

    mutating func decode(connection: UInt32, _ data: [UInt8], limit: Int) throws -> [UInt8] {
        let block = agreed[connection] ?? self.block
        var reader = ByteReader(data)
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
