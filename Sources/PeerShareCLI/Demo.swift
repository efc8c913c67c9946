import ArgumentParser
import Crypto
import Foundation
import Supervisor

/// A real swarm on loopback: a seeder and a downloader, each its own `peershare` process
/// with its own supervisor and four workers, move a generated file and check it arrived.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a seeder and a downloader on loopback and show a verified transfer.")

    @Option(name: .long, help: "Size of the generated file in MiB.")
    var size: Int = 64

    @Option(name: .long, help: "Log level for both peers.")
    var logLevel: String = "warning"

    func validate() throws {
        guard (0...16384).contains(size) else { throw ValidationError("--size must be 0...16384 MiB") }
    }

    func run() throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("peershare-demo-\(getpid())")
        let seedDir = work.appendingPathComponent("seeder")
        let getDir = work.appendingPathComponent("downloader")
        try FileManager.default.createDirectory(at: seedDir, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: getDir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }

        let file = seedDir.appendingPathComponent("demo.bin")
        Terminal.line("1. generating \(size) MiB of random data in \(file.path)")
        let sourceHash = try writeRandomFile(file, mebibytes: size)

        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        Terminal.line("2. starting the seeder: peershare share \(file.path) --listen 127.0.0.1:0")
        let seeder = Process()
        seeder.executableURL = URL(fileURLWithPath: me)
        seeder.arguments = ["share", file.path, "--listen", "127.0.0.1:0", "--log-level", logLevel]
        let seederOut = Pipe()
        seeder.standardOutput = seederOut
        try seeder.run()
        defer {
            if seeder.isRunning {
                seeder.interrupt()
                seeder.waitUntilExit()
            }
        }
        guard let link = readLine(from: seederOut.fileHandleForReading), link.hasPrefix("peershare://") else {
            Terminal.error("the seeder did not print a link")
            throw ExitCode(ExitCodes.software)
        }
        Terminal.line("   link: \(link)")

        Terminal.line("3. starting the downloader: peershare get LINK -o \(getDir.path)")
        let started = Date()
        let getter = Process()
        getter.executableURL = URL(fileURLWithPath: me)
        getter.arguments = ["get", link, "-o", getDir.path, "--log-level", logLevel]
        try getter.run()
        getter.waitUntilExit()
        let seconds = Date().timeIntervalSince(started)
        guard getter.terminationStatus == 0 else {
            Terminal.error("the download failed with exit code \(getter.terminationStatus)")
            throw ExitCode(getter.terminationStatus)
        }
        let received = getDir.appendingPathComponent("demo.bin")
        let receivedHash = try hashFile(received)
        Terminal.line("4. SHA-256 sent:     \(sourceHash)")
        Terminal.line("   SHA-256 received: \(receivedHash)")
        guard sourceHash == receivedHash else {
            Terminal.error("the files differ")
            throw ExitCode(ExitCodes.dataError)
        }
        Terminal.line(
            String(
                format: "OK: %d MiB transferred and verified in %.2f s (%.1f MB/s, including startup)", size, seconds,
                Double(size) * 1_048_576 / seconds / 1e6))
    }

    private func readLine(from handle: FileHandle) -> String? {
        var bytes: [UInt8] = []
        while true {
            let data = handle.readData(ofLength: 1)
            guard let byte = data.first else { return nil }
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
    }

    private func writeRandomFile(_ url: URL, mebibytes: Int) throws -> String {
        FileManager.default.createFile(atPath: url.path, contents: nil)
        let handle = try FileHandle(forWritingTo: url)
        defer { try? handle.close() }
        var generator = SystemRandomNumberGenerator()
        var hasher = SHA256()
        var block = [UInt8](repeating: 0, count: 1 << 20)
        for _ in 0..<mebibytes {
            block.withUnsafeMutableBytes { raw in
                let words = raw.bindMemory(to: UInt64.self)
                for index in words.indices { words[index] = generator.next() }
            }
            hasher.update(data: block)
            try handle.write(contentsOf: block)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    private func hashFile(_ url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var hasher = SHA256()
        while let data = try handle.read(upToCount: 1 << 20), !data.isEmpty { hasher.update(data: data) }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
