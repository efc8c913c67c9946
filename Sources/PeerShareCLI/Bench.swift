import ArgumentParser
import Benchmarks

/// `peershare bench FILE`: how fast the chunk hash and the other candidates run here,
/// streaming the file in 1 MiB reads the way the hash worker does. contrib/bench.sh runs it
/// beside `b3sum`, `openssl dgst -sha256` and `b2sum` on the same file.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Measure hashing speed on a file (BLAKE3, the chunk hash; swift-crypto SHA-256, libsodium SHA-256 and BLAKE2b)."
    )

    @Argument(help: "The file to hash (read it once first so it is in the page cache).")
    var file: String

    @Flag(help: "Also time the pipeline's primitives on the file: zlib level 1 and libsodium's secretstream.")
    var stages = false

    func run() throws {
        var benchmark = HashBenchmark(file: file)
        benchmark.stages = stages
        do {
            try benchmark.run(print: Terminal.line)
        } catch let error as BenchmarkError {
            throw ValidationError(error.description)
        }
    }
}
