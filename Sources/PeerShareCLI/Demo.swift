import ArgumentParser
import Crypto
import Foundation
import Sessions
import Supervisor

/// A real swarm on loopback: one encrypted seeder with a limited upload and two downloaders
/// that also serve each other — three `peershare` processes, each its own supervisor with
/// four workers — move a generated file; both copies are checked against the original.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a small swarm on loopback (1 seeder, 2 downloaders, encrypted) and verify the result.")

    @Option(name: .long, help: "Size of the generated file in MiB.")
    var size: Int = 64

    @Option(name: .long, help: "The seeder's upload limit, so that the downloaders visibly help each other.")
    var seederUpload: String = "32MiB/s"

    @Option(name: .long, help: "Log level for every peer.")
    var logLevel: String = "warning"

    func validate() throws {
        guard (0...16384).contains(size) else { throw ValidationError("--size must be 0...16384 MiB") }
    }

    func run() throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("peershare-demo-\(getpid())")
        let seedDir = work.appendingPathComponent("seeder")
        try FileManager.default.createDirectory(at: seedDir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }

        let file = seedDir.appendingPathComponent("demo.bin")
        Terminal.line("1. generating \(size) MiB of random data in \(file.path)")
        let sourceHash = try writeRandomFile(file, mebibytes: size)

        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let common = ["--no-dht", "--no-lan", "--log-level", logLevel]
        Terminal.line(
            "2. seeder: peershare share \(file.path) --encrypt --max-upload \(seederUpload) --listen 127.0.0.1:0")
        let seeder = Process()
        seeder.executableURL = URL(fileURLWithPath: me)
        seeder.arguments =
            ["share", file.path, "--encrypt", "--max-upload", seederUpload, "--listen", "127.0.0.1:0"] + common
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
        Terminal.line("   link (it carries the encryption key): \(link)")

        // Each downloader listens on a known port and is told of the other, as the DHT would.
        let ports = [Demo.freePort(), Demo.freePort()]
        let names = ["A", "B"]
        var getters: [(Process, Pipe, URL)] = []
        let started = Date()
        for (index, name) in names.enumerated() {
            let dir = work.appendingPathComponent("downloader-\(name)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let other = "127.0.0.1:\(ports[1 - index])"
            Terminal.line(
                "\(index + 3). downloader \(name): echo LINK | peershare get - -o \(dir.path) --listen 127.0.0.1:\(ports[index]) --peer \(other)"
            )
            let getter = Process()
            getter.executableURL = URL(fileURLWithPath: me)
            // The link holds the key: on stdin, never on a command line that `ps` shows.
            getter.arguments =
                ["get", "-", "-o", dir.path, "--listen", "127.0.0.1:\(ports[index])", "--peer", other] + common
            let errors = Pipe()
            let input = Pipe()
            getter.standardInput = input
            getter.standardOutput = FileHandle.nullDevice
            getter.standardError = errors
            try getter.run()
            // The throwing write: a getter that died at once is reported below, not a trap here.
            try? input.fileHandleForWriting.write(contentsOf: Data((link + "\n").utf8))
            try? input.fileHandleForWriting.close()
            getters.append((getter, errors, dir))
        }
        var failed = false
        var fromSeeder = 0.0
        var fromEachOther = 0.0
        for ((getter, errors, dir), name) in zip(getters, names) {
            // The throwing read: `readDataToEndOfFile` (and `readData`) trap on a read error.
            let output = (try? errors.fileHandleForReading.readToEnd()) ?? nil
            let log = String(decoding: output ?? Data(), as: UTF8.self)
            getter.waitUntilExit()
            let seconds = Date().timeIntervalSince(started)
            guard getter.terminationStatus == 0 else {
                Terminal.error("downloader \(name) failed with exit code \(getter.terminationStatus):\n\(log)")
                failed = true
                continue
            }
            let receivedHash = try hashFile(dir.appendingPathComponent("demo.bin"))
            let sources = log.split(separator: "\n").filter { $0.contains(": from 127.0.0.1:") }
                .map { $0.replacingOccurrences(of: "peershare: ", with: "") }
            let verdict = receivedHash == sourceHash ? "identical" : "DIFFERENT"
            Terminal.line(
                String(format: "   %@: done after %.2f s, SHA-256 %@ (%@)", name, seconds, receivedHash, verdict))
            for line in sources {
                let port = line.split(separator: ":").dropFirst().first.map(String.init) ?? ""
                let fromPeer = ports.contains(Int(port) ?? -1)
                Terminal.line("      \(line)  <- \(fromPeer ? "the other downloader" : "the seeder")")
                let mib = Demo.mebibytes(in: line)
                if fromPeer { fromEachOther += mib } else { fromSeeder += mib }
            }
            failed = failed || receivedHash != sourceHash
        }
        guard !failed else { throw ExitCode(ExitCodes.dataError) }
        Terminal.line(
            String(
                format:
                    "OK: two verified copies of %d MiB; %.1f MiB came from the seeder, %.1f MiB the downloaders passed to each other.",
                size, fromSeeder, fromEachOther))
    }

    /// The size in a summary line ("..., 8.1 MiB"), in MiB.
    static func mebibytes(in line: String) -> Double {
        let parts = line.split(separator: " ")
        guard parts.count >= 2, let value = Double(parts[parts.count - 2]) else { return 0 }
        switch parts[parts.count - 1] {
        case "GiB": return value * 1024
        case "KiB": return value / 1024
        case "B": return value / 1_048_576
        default: return value
        }
    }

    /// A free port below the kernel's ephemeral range, so no outgoing connection takes it first.
    static func freePort() -> Int {
        for _ in 0..<1000 {
            let port = Int.random(in: 20000..<32000)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            close(fd)
            if bound == 0 { return port }
        }
        return 0
    }

    private func readLine(from handle: FileHandle) -> String? {
        var bytes: [UInt8] = []
        while true {
            // The throwing read, as above: an error ends the line like end of file.
            guard let data = try? handle.read(upToCount: 1), let byte = data.first else { return nil }
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
    }

    private func writeRandomFile(_ url: URL, mebibytes: Int) throws -> String {
        _ = FileManager.default.createFile(atPath: url.path, contents: nil)
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
