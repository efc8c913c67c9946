import CZlib

/// The zlib stage: each frame deflated on its own (no state across frames, so a lost or
/// reordered frame cannot poison the next). A flag byte says whether the rest is deflated
/// or raw: data that does not shrink goes raw, and incompressible data is recognised from a
/// 4 KiB sample before the whole frame is deflated, so it costs almost nothing.
public enum ZlibStage {
    public static let name = "zlib"
    public static let version: UInt16 = 1
    static let raw: UInt8 = 0
    static let deflated: UInt8 = 1
    /// Frames smaller than this are never worth deflating.
    static let minimumSize = 128
    static let sampleSize = 4096
    /// A sample must shrink to this fraction or the frame is sent raw.
    static let sampleRatio = 0.9

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public static func encode(_ input: [UInt8], level: Int32) -> [UInt8] {
        guard input.count >= minimumSize else { return rawFrame(input) }
        if input.count > sampleSize * 2 {
            let sample = deflate(input[0..<sampleSize], level: 1, flagged: false)
            guard let sample, Double(sample.count) < Double(sampleSize) * sampleRatio else { return rawFrame(input) }
        }
        guard let packed = deflate(input[...], level: level, flagged: true), packed.count < input.count else {
            return rawFrame(input)
        }
        return packed
    }

    /// The flag byte and the data, in one allocation.
    private static func rawFrame(_ input: [UInt8]) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: input.count + 1) { buffer, initialized in
            buffer[0] = raw
            input.withUnsafeBufferPointer { source in
                if let base = source.baseAddress { (buffer.baseAddress! + 1).update(from: base, count: input.count) }
            }
            initialized = input.count + 1
        }
    }

    /// Deflates into one buffer; `flagged` puts the "deflated" flag byte in front.
    private static func deflate(_ input: ArraySlice<UInt8>, level: Int32, flagged: Bool) -> [UInt8]? {
        let offset = flagged ? 1 : 0
        let bound = Int(compressBound(uLong(input.count))) + offset
        var length = uLongf(bound - offset)
        var failed = false
        let output = [UInt8](unsafeUninitializedCapacity: bound) { buffer, initialized in
            if flagged { buffer[0] = deflated }
            let status = input.withUnsafeBufferPointer { source in
                compress2(buffer.baseAddress! + offset, &length, source.baseAddress, uLong(input.count), level)
            }
            failed = status != Z_OK
            initialized = failed ? 0 : Int(length) + offset
        }
        return failed ? nil : output
    }

    /// Inflates into at most `limit` bytes: a frame that would inflate beyond what any valid
    /// message can hold (a decompression bomb) is an error before anything larger is allocated.
    public static func decode(_ input: [UInt8], limit: Int) throws -> [UInt8] {
        guard let flag = input.first else { throw Failure(description: "empty zlib frame") }
        switch flag {
        case raw:
            guard input.count - 1 <= limit else { throw Failure(description: "raw frame over the size limit") }
            return Array(input[1...])
        case deflated:
            var length = uLongf(limit)
            var status: Int32 = Z_OK
            let output = [UInt8](unsafeUninitializedCapacity: limit) { buffer, initialized in
                status = input.withUnsafeBufferPointer { source in
                    uncompress(buffer.baseAddress, &length, source.baseAddress! + 1, uLong(input.count - 1))
                }
                initialized = status == Z_OK ? Int(length) : 0
            }
            switch status {
            case Z_OK: return output
            case Z_BUF_ERROR:
                throw Failure(description: "frame inflates beyond \(limit) bytes (a decompression bomb)")
            default: throw Failure(description: "corrupt deflate data (zlib error \(status))")
            }
        default:
            throw Failure(description: "unknown zlib frame flag \(flag)")
        }
    }
}
