import Foundation

/// Rates as people write them: `5MB/s`, `512KiB/s`, `1.5 MiB`, `800000`, `0` (unlimited).
/// Decimal units are powers of 1000, binary ones (KiB, MiB, GiB) powers of 1024.
public enum ByteRate {
    public struct ParseError: Error, CustomStringConvertible {
        public var description: String
    }

    public static func parse(_ text: String) throws -> Double {
        var body = text.trimmingCharacters(in: " ")
        if body == "0" || body.lowercased() == "unlimited" { return 0 }
        if body.hasSuffix("/s") { body.removeLast(2) }
        let units: [(String, Double)] = [
            ("GiB", 1_073_741_824), ("MiB", 1_048_576), ("KiB", 1024), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3),
            ("kB", 1e3),
            ("B", 1),
        ]
        var multiplier: Double = 1
        for (suffix, value) in units where body.hasSuffix(suffix) {
            multiplier = value
            body.removeLast(suffix.count)
            break
        }
        guard let number = Double(body.trimmingCharacters(in: " ")), number.isFinite, number >= 0 else {
            throw ParseError(description: "'\(text)' is not a rate; write e.g. 5MB/s, 512KiB/s or 0 for unlimited")
        }
        let rate = number * multiplier
        // Rates travel as UInt64 (and through Int on the way to workers): a rate near 2^64
        // would trap on conversion. Nothing real comes near 1 PiB/s.
        guard rate <= maxRate else {
            throw ParseError(description: "'\(text)' is more than the largest rate, 1 PiB/s; use 0 for unlimited")
        }
        return rate.rounded()
    }

    /// The largest rate accepted anywhere: 2^50 B/s (1 PiB/s).
    public static let maxRate: Double = 1_125_899_906_842_624

    public static func describe(_ rate: Double) -> String {
        if rate == 0 { return "unlimited" }
        if rate >= 1_048_576 { return String(format: "%.1f MiB/s", rate / 1_048_576) }
        return String(format: "%.1f KiB/s", rate / 1024)
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        var result = Substring(self)
        while result.first == set { result.removeFirst() }
        while result.last == set { result.removeLast() }
        return String(result)
    }
}
