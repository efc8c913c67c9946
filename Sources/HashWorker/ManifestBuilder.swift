import Foundation
import Logging
import PeerShareCore

/// Walks a file or folder, chunks every file and hashes every chunk, streaming through
/// one reusable chunk-sized buffer: memory stays flat whatever the share's size.
struct ManifestBuilder {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// What the walk found: every file and folder in canonical order, their share paths laid
    /// end to end in one array. (As two `String`s each, share path and disk path, 100,000
    /// files took 14 MB of the hash worker's memory while they were hashed; this takes 3.)
    struct Walked {
        struct Record {
            var pathEnd: UInt32
            var size: UInt64
            var isDirectory: Bool
        }

        /// The root on disk; a disk path is this followed by the share path less its first
        /// component (the root's name), as the walk joined them.
        let rootDisk: String
        let rootNameBytes: Int
        private(set) var pathBytes: [UInt8] = []
        private(set) var records: [Record] = []

        init(rootDisk: String, rootName: String) {
            self.rootDisk = rootDisk
            rootNameBytes = rootName.utf8.count
        }

        var count: Int { records.count }
        var totalBytes: UInt64 { records.reduce(0) { $0 + $1.size } }

        /// The manifest's encoding of these entries (docs/PROTOCOL.md): kind, path, and for a
        /// file its size, root and chunk hashes.
        func encodedSize(chunkSize: Int) -> Int {
            records.reduce(12 + pathBytes.count) { sum, record in
                let chunks = Int((record.size + UInt64(chunkSize) - 1) / UInt64(chunkSize))
                return sum + 3 + (record.isDirectory ? 0 : 8 + 32 + 32 * chunks)
            }
        }

        mutating func append(sharePath: String, size: UInt64, isDirectory: Bool) {
            pathBytes.append(contentsOf: sharePath.utf8)
            records.append(Record(pathEnd: UInt32(pathBytes.count), size: size, isDirectory: isDirectory))
        }

        private func pathRange(_ index: Int) -> Range<Int> {
            (index == 0 ? 0 : Int(records[index - 1].pathEnd))..<Int(records[index].pathEnd)
        }

        func sharePath(_ index: Int) -> String {
            String(decoding: pathBytes[pathRange(index)], as: UTF8.self)
        }

        func diskPath(_ index: Int) -> String {
            let range = pathRange(index)
            return rootDisk
                + String(decoding: pathBytes[(range.lowerBound + rootNameBytes)..<range.upperBound], as: UTF8.self)
        }
    }

    let logger: Logger
    /// Linux's O_PATH (include/uapi/asm-generic/fcntl.h), which Glibc's Swift module leaves
    /// out (it is behind _GNU_SOURCE).
    static let openPathOnly: Int32 = 0o1000_0000

    /// Lists the share in canonical order (depth first, names sorted bytewise). Symbolic
    /// links and special files are skipped with a warning: following them could publish
    /// files outside the folder the user chose.
    func walk(path: String) throws -> Walked {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            throw Failure(description: "cannot share '\(path)': \(String(cString: strerror(errno)))")
        }
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        let name = URL(fileURLWithPath: absolute).lastPathComponent
        guard !name.isEmpty, name != "/" else { throw Failure(description: "cannot share the root folder") }
        var walked = Walked(rootDisk: absolute, rootName: name)
        let mode = info.st_mode & S_IFMT
        if mode == S_IFREG {
            walked.append(sharePath: name, size: UInt64(info.st_size), isDirectory: false)
            return walked
        }
        guard mode == S_IFDIR else {
            throw Failure(description: "cannot share '\(path)': not a regular file or folder")
        }
        try walkDirectory(diskPath: absolute, sharePath: name, into: &walked)
        return walked
    }

    private func walkDirectory(diskPath: String, sharePath: String, into walked: inout Walked) throws {
        walked.append(sharePath: sharePath, size: 0, isDirectory: true)
        guard let directory = opendir(diskPath) else {
            throw Failure(description: "cannot read folder '\(diskPath)': \(String(cString: strerror(errno)))")
        }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        // Each child is looked at relative to the open folder (`fstatat`): the kernel does
        // not walk the whole path again for every file, nor Landlock check it again.
        var children: [(name: String, info: stat)] = []
        do {
            defer { closedir(directory) }
            let folder = dirfd(directory)
            for name in names.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) {
                do {
                    try SharePath.validate(sharePath + "/" + name)
                } catch {
                    logger.warning("skipping '\(diskPath)/\(name)': its name cannot be shared (\(error))")
                    continue
                }
                var info = stat()
                guard fstatat(folder, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
                    throw Failure(
                        description: "cannot read '\(diskPath)/\(name)': \(String(cString: strerror(errno)))")
                }
                children.append((name, info))
            }
        }
        for (name, info) in children {
            let childDisk = diskPath + "/" + name
            switch info.st_mode & S_IFMT {
            case S_IFDIR: try walkDirectory(diskPath: childDisk, sharePath: sharePath + "/" + name, into: &walked)
            case S_IFREG:
                walked.append(sharePath: sharePath + "/" + name, size: UInt64(info.st_size), isDirectory: false)
            default: logger.warning("skipping '\(childDisk)': not a regular file or folder")
            }
        }
    }

    /// A manifest, and each file's modification time when it was opened to be hashed (by
    /// entry index; folders' are zero): `ServedShare` refuses to serve a file changed since.
    struct Built {
        var manifest: Manifest
        var modified: [timespec]
    }

    /// Hashes every item; `progress` is called with (bytes hashed, total bytes) now and then.
    func build(_ walked: Walked, progress: (UInt64, UInt64) -> Void) throws -> Built {
        let total = walked.totalBytes
        let chunkSize = Manifest.chunkSize(forTotalBytes: total)
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        var done: UInt64 = 0
        var lastReport: UInt64 = 0
        var manifest = Manifest.Writer(
            chunkSize: chunkSize, entryCount: walked.count, expectedBytes: walked.encodedSize(chunkSize: chunkSize))
        var modified = [timespec](repeating: timespec(), count: walked.count)
        var hashes: [UInt8] = []
        // Files are opened relative to their folder, kept open while its files come in a row
        // (the walk's order): one path walk per folder, not per file.
        var folder: (path: Substring, fd: Int32)?
        defer { if let folder { close(folder.fd) } }
        for (index, item) in walked.records.enumerated() {
            if item.isDirectory {
                manifest.addDirectory(walked.sharePath(index))
                continue
            }
            let diskPath = walked.diskPath(index)
            let slash = diskPath.lastIndex(of: "/") ?? diskPath.startIndex
            let parent = slash == diskPath.startIndex ? "/" : diskPath[..<slash]
            let name = diskPath[diskPath.index(after: slash)...]
            if folder?.path != parent {
                if let folder { close(folder.fd) }
                folder = nil
                // O_PATH: a handle to name files by, not a right to list the folder (a single
                // shared file's sandbox may read that file only).
                let fd = open(String(parent), Self.openPathOnly | O_DIRECTORY | O_CLOEXEC)
                guard fd >= 0 else {
                    throw Failure(description: "cannot open '\(parent)': \(String(cString: strerror(errno)))")
                }
                folder = (parent, fd)
            }
            let fd = openat(folder?.fd ?? AT_FDCWD, String(name), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else {
                throw Failure(description: "cannot open '\(diskPath)': \(String(cString: strerror(errno)))")
            }
            defer { close(fd) }
            // Its time now, before a byte is read: a change while it is hashed shows later.
            var info = stat()
            guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, UInt64(info.st_size) == item.size else {
                throw Failure(description: "'\(diskPath)' changed while the share was being read; try again")
            }
            modified[index] = info.st_mtim
            hashes.removeAll(keepingCapacity: true)
            var offset: UInt64 = 0
            while offset < item.size {
                let length = Int(min(UInt64(chunkSize), item.size - offset))
                try FileIO.readExactly(fd, into: &buffer, count: length, at: offset, path: diskPath)
                hashes += buffer.withUnsafeBytes { ChunkHash.of(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
                offset += UInt64(length)
                done += UInt64(length)
                if done - lastReport >= 64 << 20 {
                    lastReport = done
                    progress(done, total)
                }
            }
            manifest.addFile(walked.sharePath(index), size: item.size, chunkHashes: hashes)
            guard manifest.encodedSize <= Manifest.maxEncodedSize else {
                throw Failure(description: "the share has too many files or chunks for one manifest")
            }
        }
        progress(done, total)
        // Checked as every downloader will check it: a name peers would refuse fails here.
        return Built(manifest: try manifest.validatedManifest(), modified: modified)
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
