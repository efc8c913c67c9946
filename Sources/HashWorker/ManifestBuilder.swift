import Foundation
import Glibc
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
            for name in names.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }) {
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

    /// Threads that hash at once: the machine's cores, at most four. `share`'s start-up is
    /// this worker hashing (a 1 GiB file, or 100,000 small files: opening, reading, hashing),
    /// and on one thread it took twice mktorrent's time, which hashes on every core.
    static let hashThreads = max(1, min(4, ProcessInfo.processInfo.activeProcessorCount))
    /// A batch's bounds: chunks hashed between two points where the threads meet, and
    /// descriptors held for it (files of several chunks, opened in order before the batch,
    /// and folders its files of one chunk are opened relative to). A `share` run with a low
    /// descriptor limit (`prlimit --nofile=128`) must still work.
    static let batchChunks = 1024
    static let batchBytes = 64 << 20
    static let batchDescriptors = 48

    /// One chunk to hash: where it lies, and which walk entry it belongs to.
    private struct ChunkJob {
        enum File {
            /// Opened in order before the batch.
            case open(Int32)
            /// A file of one chunk: the thread that hashes it opens it too, relative to this
            /// folder, so that the opening (most of the work, for small files) runs on every
            /// thread as well.
            case inFolder(Int32)
        }
        var file: File
        var offset: UInt64
        var length: Int
        var entry: Int
    }

    /// What a batch adds to the manifest, in the walk's order: a folder, or a file whose last
    /// chunk (or whose nothing, when empty) is in the batch, and its descriptor to close
    /// after the batch (nil: the hashing thread opened and closed it).
    private enum BatchEntry {
        case directory(Int)
        case fileEnd(Int, fd: Int32?)
    }

    /// Hashes every item; `progress` is called with (bytes hashed, total bytes) now and then.
    ///
    /// The walk is cut into batches of chunks. Files are opened (and their time taken) one
    /// after another, in order, on this thread; the batch's chunks are then read and hashed
    /// by `hashThreads` threads at once, each with its own chunk-sized buffer, into the
    /// batch's digest array by position; then the manifest is written in order. Memory is
    /// the same at any size: a buffer per thread, and a batch's digests.
    func build(_ walked: Walked, progress: (UInt64, UInt64) -> Void) throws -> Built {
        let total = walked.totalBytes
        let chunkSize = Manifest.chunkSize(forTotalBytes: total)
        let threads = Self.hashThreads
        let buffers = (0..<threads).map { _ in
            UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 64)
        }
        defer { buffers.forEach { $0.deallocate() } }
        var done: UInt64 = 0
        var lastReport: UInt64 = 0
        var manifest = Manifest.Writer(
            chunkSize: chunkSize, entryCount: walked.count, expectedBytes: walked.encodedSize(chunkSize: chunkSize))
        var modified = [timespec](repeating: timespec(), count: walked.count)
        var jobs: [ChunkJob] = []
        jobs.reserveCapacity(Self.batchChunks)
        var digests = [UInt8](repeating: 0, count: Self.batchChunks * ChunkHash.byteCount)
        var entries: [BatchEntry] = []
        /// The chunk hashes of the file being written, gathered across batches.
        var hashes: [UInt8] = []
        /// The file being cut into chunks, and where its next chunk starts.
        var current: (entry: Int, fd: Int32, offset: UInt64)?
        var nextEntry = 0
        var opener = FileOpener()
        defer {
            opener.close()
            if let current { close(current.fd) }
            for case .fileEnd(_, let fd?) in entries { close(fd) }
        }
        repeat {
            jobs.removeAll(keepingCapacity: true)
            entries.removeAll(keepingCapacity: true)
            var batchBytes = 0
            var filesOpened = 0
            while jobs.count < Self.batchChunks, batchBytes < Self.batchBytes {
                if let file = current {
                    let size = walked.records[file.entry].size
                    if file.offset < size {
                        let length = Int(min(UInt64(chunkSize), size - file.offset))
                        jobs.append(
                            ChunkJob(file: .open(file.fd), offset: file.offset, length: length, entry: file.entry))
                        current = (file.entry, file.fd, file.offset + UInt64(length))
                        batchBytes += length
                    } else {
                        entries.append(.fileEnd(file.entry, fd: file.fd))
                        current = nil
                    }
                    continue
                }
                guard nextEntry < walked.count, filesOpened + opener.foldersOpen < Self.batchDescriptors else { break }
                let entry = nextEntry
                nextEntry += 1
                if walked.records[entry].isDirectory {
                    entries.append(.directory(entry))
                    continue
                }
                let size = walked.records[entry].size
                if size > 0, size <= UInt64(chunkSize) {
                    let folder = try opener.folder(of: walked, entry)
                    jobs.append(ChunkJob(file: .inFolder(folder), offset: 0, length: Int(size), entry: entry))
                    entries.append(.fileEnd(entry, fd: nil))
                    batchBytes += Int(size)
                    continue
                }
                let opened = try opener.open(walked, entry)
                modified[entry] = opened.modified
                current = (entry, opened.fd, 0)
                filesOpened += 1
            }
            try hash(jobs, into: &digests, modified: &modified, buffers: buffers, walked: walked)
            opener.closeRetiredFolders()
            // In order: each file's chunks are consecutive jobs.
            var job = 0
            let appendDigests = { (entry: Int, hashes: inout [UInt8]) in
                while job < jobs.count, jobs[job].entry == entry {
                    hashes += digests[(job * ChunkHash.byteCount)..<((job + 1) * ChunkHash.byteCount)]
                    job += 1
                }
            }
            for item in entries {
                switch item {
                case .directory(let entry):
                    manifest.addDirectory(walked.sharePath(entry))
                case .fileEnd(let entry, _):
                    appendDigests(entry, &hashes)
                    manifest.addFile(walked.sharePath(entry), size: walked.records[entry].size, chunkHashes: hashes)
                    hashes.removeAll(keepingCapacity: true)
                    guard manifest.encodedSize <= Manifest.maxEncodedSize else {
                        throw Failure(description: "the share has too many files or chunks for one manifest")
                    }
                }
            }
            for case .fileEnd(_, let fd?) in entries { close(fd) }
            entries.removeAll()
            // The file still being cut carries its chunks' hashes into the next batch.
            if let file = current { appendDigests(file.entry, &hashes) }
            done += UInt64(batchBytes)
            if done - lastReport >= 64 << 20 {
                lastReport = done
                progress(done, total)
            }
        } while current != nil || nextEntry < walked.count
        progress(done, total)
        // Checked as every downloader will check it: a name peers would refuse fails here.
        return Built(manifest: try manifest.validatedManifest(), modified: modified)
    }

    /// Reads and hashes `jobs`, job `j`'s digest into `digests` at `j × 32`: on one thread
    /// for a batch of one chunk, else on one thread per buffer, each taking every n-th job.
    private func hash(
        _ jobs: [ChunkJob], into digests: inout [UInt8], modified: inout [timespec],
        buffers: [UnsafeMutableRawBufferPointer], walked: Walked
    ) throws {
        guard !jobs.isEmpty else { return }
        let threads = min(buffers.count, jobs.count)
        var failures = [ManifestBuilder.Failure?](repeating: nil, count: threads)
        jobs.withUnsafeBufferPointer { jobs in
            digests.withUnsafeMutableBytes { digests in
                failures.withUnsafeMutableBufferPointer { failures in
                    modified.withUnsafeMutableBufferPointer { modified in
                        let batch = HashBatch(
                            jobs: jobs, digests: digests, modified: modified, failures: failures, buffers: buffers,
                            threads: threads, walked: walked)
                        if threads == 1 {
                            batch.run(thread: 0)
                        } else {
                            DispatchQueue.concurrentPerform(iterations: threads) { batch.run(thread: $0) }
                        }
                    }
                }
            }
        }
        if let failure = failures.lazy.compactMap({ $0 }).first { throw failure }
    }

    /// One batch's work, shared by the threads that hash it. Unchecked `Sendable`: thread `t`
    /// reads jobs only, uses only buffer `t`, and writes only the digests of its own jobs
    /// (`t`, `t + threads`, ...), the times of the files those open, and failure `t`; the
    /// caller waits for every thread.
    private struct HashBatch: @unchecked Sendable {
        let jobs: UnsafeBufferPointer<ChunkJob>
        let digests: UnsafeMutableRawBufferPointer
        let modified: UnsafeMutableBufferPointer<timespec>
        let failures: UnsafeMutableBufferPointer<ManifestBuilder.Failure?>
        let buffers: [UnsafeMutableRawBufferPointer]
        let threads: Int
        let walked: Walked

        func run(thread: Int) {
            var index = thread
            while index < jobs.count {
                let job = jobs[index]
                let buffer = UnsafeMutableRawBufferPointer(rebasing: buffers[thread][0..<job.length])
                do {
                    switch job.file {
                    case .open(let fd):
                        try FileIO.readExactly(fd, into: buffer, at: job.offset, path: walked.diskPath(job.entry))
                    case .inFolder(let folder):
                        let fd = try FileOpener.open(walked, job.entry, in: folder, modified: &modified[job.entry])
                        defer { close(fd) }
                        try FileIO.readExactly(fd, into: buffer, at: job.offset, path: walked.diskPath(job.entry))
                    }
                } catch {
                    failures[thread] = error as? ManifestBuilder.Failure ?? Failure(description: "\(error)")
                    return
                }
                let place = index * ChunkHash.byteCount
                UnsafeMutableRawBufferPointer(rebasing: digests[place..<(place + ChunkHash.byteCount)])
                    .copyBytes(from: ChunkHash.of(UnsafeRawBufferPointer(buffer)))
                index += threads
            }
        }
    }

    /// Opens the walk's files, each relative to its folder, which stays open while its files
    /// come in a row (the walk's order): one path walk per folder, not per file. A folder
    /// left behind stays open until the batch that may still name files in it is hashed.
    private struct FileOpener {
        private var folder: (path: Substring, fd: Int32)?
        private var retired: [Int32] = []
        /// Folders open now: the current one, and those retired until the batch is hashed.
        var foldersOpen: Int { retired.count + (folder == nil ? 0 : 1) }

        /// The open folder of file `entry`.
        mutating func folder(of walked: Walked, _ entry: Int) throws -> Int32 {
            let diskPath = walked.diskPath(entry)
            let slash = diskPath.lastIndex(of: "/") ?? diskPath.startIndex
            let parent = slash == diskPath.startIndex ? "/" : diskPath[..<slash]
            if let folder, folder.path == parent { return folder.fd }
            if let folder { retired.append(folder.fd) }
            folder = nil
            // O_PATH: a handle to name files by, not a right to list the folder (a single
            // shared file's sandbox may read that file only).
            let fd = Glibc.open(String(parent), ManifestBuilder.openPathOnly | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0 else {
                throw Failure(description: "cannot open '\(parent)': \(String(cString: strerror(errno)))")
            }
            folder = (parent, fd)
            return fd
        }

        /// File `entry`, open for reading, and its modification time.
        mutating func open(_ walked: Walked, _ entry: Int) throws -> (fd: Int32, modified: timespec) {
            let folder = try folder(of: walked, entry)
            var modified = timespec()
            let fd = try Self.open(walked, entry, in: folder, modified: &modified)
            return (fd, modified)
        }

        /// File `entry`, opened relative to its open `folder`; its modification time is taken
        /// now, before a byte is read, so that a change while it is hashed shows later.
        static func open(_ walked: Walked, _ entry: Int, in folder: Int32, modified: inout timespec) throws -> Int32 {
            let diskPath = walked.diskPath(entry)
            let name = diskPath[
                (diskPath.lastIndex(of: "/").map { diskPath.index(after: $0) } ?? diskPath.startIndex)...]
            let fd = openat(folder, String(name), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else {
                throw Failure(description: "cannot open '\(diskPath)': \(String(cString: strerror(errno)))")
            }
            var info = stat()
            guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG,
                UInt64(info.st_size) == walked.records[entry].size
            else {
                Glibc.close(fd)
                throw Failure(description: "'\(diskPath)' changed while the share was being read; try again")
            }
            modified = info.st_mtim
            return fd
        }

        /// Folders no job of the batch just hashed names any more.
        mutating func closeRetiredFolders() {
            for fd in retired { Glibc.close(fd) }
            retired.removeAll(keepingCapacity: true)
        }

        mutating func close() {
            closeRetiredFolders()
            if let folder { Glibc.close(folder.fd) }
            folder = nil
        }
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
