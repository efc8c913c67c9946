import Foundation
import Logging
import PeerShareCore

/// Walks a file or folder, chunks every file and hashes every chunk, streaming through
/// one reusable chunk-sized buffer: memory stays flat whatever the share's size.
struct ManifestBuilder {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// One file or folder found by the walk: its manifest path and where it is on disk.
    struct Item {
        var sharePath: String
        var diskPath: String
        var isDirectory: Bool
        var size: UInt64
    }

    let logger: Logger

    /// Lists the share in canonical order (depth first, names sorted bytewise). Symbolic
    /// links and special files are skipped with a warning: following them could publish
    /// files outside the folder the user chose.
    func walk(path: String) throws -> [Item] {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            throw Failure(description: "cannot share '\(path)': \(String(cString: strerror(errno)))")
        }
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        let name = URL(fileURLWithPath: absolute).lastPathComponent
        guard !name.isEmpty, name != "/" else { throw Failure(description: "cannot share the root folder") }
        let mode = info.st_mode & S_IFMT
        if mode == S_IFREG {
            return [Item(sharePath: name, diskPath: absolute, isDirectory: false, size: UInt64(info.st_size))]
        }
        guard mode == S_IFDIR else {
            throw Failure(description: "cannot share '\(path)': not a regular file or folder")
        }
        var items: [Item] = []
        try walkDirectory(diskPath: absolute, sharePath: name, into: &items)
        return items
    }

    private func walkDirectory(diskPath: String, sharePath: String, into items: inout [Item]) throws {
        items.append(Item(sharePath: sharePath, diskPath: diskPath, isDirectory: true, size: 0))
        guard let directory = opendir(diskPath) else {
            throw Failure(description: "cannot read folder '\(diskPath)': \(String(cString: strerror(errno)))")
        }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(directory)
        for name in names.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) {
            let childDisk = diskPath + "/" + name
            let childShare = sharePath + "/" + name
            do {
                try SharePath.validate(childShare)
            } catch {
                logger.warning("skipping '\(childDisk)': its name cannot be shared (\(error))")
                continue
            }
            var info = stat()
            guard lstat(childDisk, &info) == 0 else {
                throw Failure(description: "cannot read '\(childDisk)': \(String(cString: strerror(errno)))")
            }
            switch info.st_mode & S_IFMT {
            case S_IFDIR: try walkDirectory(diskPath: childDisk, sharePath: childShare, into: &items)
            case S_IFREG:
                items.append(
                    Item(sharePath: childShare, diskPath: childDisk, isDirectory: false, size: UInt64(info.st_size)))
            default: logger.warning("skipping '\(childDisk)': not a regular file or folder")
            }
        }
    }

    /// Hashes every item; `progress` is called with (bytes hashed, total bytes) now and then.
    func build(items: [Item], progress: (UInt64, UInt64) -> Void) throws -> Manifest {
        let total = items.reduce(0) { $0 + $1.size }
        let chunkSize = Manifest.chunkSize(forTotalBytes: total)
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        var done: UInt64 = 0
        var lastReport: UInt64 = 0
        var manifest = Manifest.Writer(chunkSize: chunkSize, entryCount: items.count)
        var hashes: [UInt8] = []
        for item in items {
            if item.isDirectory {
                manifest.addDirectory(item.sharePath)
                continue
            }
            let fd = open(item.diskPath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else {
                throw Failure(description: "cannot open '\(item.diskPath)': \(String(cString: strerror(errno)))")
            }
            defer { close(fd) }
            hashes.removeAll(keepingCapacity: true)
            var offset: UInt64 = 0
            while offset < item.size {
                let length = Int(min(UInt64(chunkSize), item.size - offset))
                try FileIO.readExactly(fd, into: &buffer, count: length, at: offset, path: item.diskPath)
                hashes += buffer.withUnsafeBytes { ChunkHash.of(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
                offset += UInt64(length)
                done += UInt64(length)
                if done - lastReport >= 64 << 20 {
                    lastReport = done
                    progress(done, total)
                }
            }
            manifest.addFile(item.sharePath, size: item.size, chunkHashes: hashes)
            guard manifest.encodedSize <= Manifest.maxEncodedSize else {
                throw Failure(description: "the share has too many files or chunks for one manifest")
            }
        }
        progress(done, total)
        // Checked as every downloader will check it: a name peers would refuse fails here.
        return try manifest.validatedManifest()
    }
}

/// Positional file IO that reports errors with the file's name: whole reads and writes at an
/// offset. `path` is only for the error message: it is built
/// only when something fails, not once per chunk.
enum FileIO {
    static func readExactly(
        _ fd: Int32, into buffer: inout [UInt8], count: Int, at offset: UInt64, path: @autoclosure () -> String
    )
        throws
    {
        try buffer.withUnsafeMutableBytes { raw in
            try readExactly(fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]), at: offset, path: path())
        }
    }

    static func readExactly(
        _ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, path: @autoclosure () -> String
    )
        throws
    {
        var done = 0
        while done < buffer.count {
            let got = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if got < 0 && errno == EINTR { continue }
            if got < 0 {
                throw ManifestBuilder.Failure(
                    description: "cannot read '\(path())': \(String(cString: strerror(errno)))")
            }
            if got == 0 {
                throw ManifestBuilder.Failure(description: "'\(path())' became shorter while it was being read")
            }
            done += got
        }
    }

    static func writeAll(
        _ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, path: @autoclosure () -> String
    ) throws {
        var done = 0
        while done < bytes.count {
            let put = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if put < 0 && errno == EINTR { continue }
            if put <= 0 {
                throw ManifestBuilder.Failure(
                    description: "cannot write '\(path())': \(String(cString: strerror(errno)))")
            }
            done += put
        }
    }
}
