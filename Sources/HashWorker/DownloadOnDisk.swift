import CSystemShims
import Foundation
import IPC
import PeerShareCore
import Wire

/// A download in progress on disk. Chunks are written into a staging folder inside the
/// target directory (`.peershare-<id>.partial/`), each one only after its hash matched the
/// manifest; when every chunk is verified the share's top-level file or folder is renamed
/// into place in one step, so the target never holds a half-written share.
final class DownloadOnDisk {
    struct Failure: Error, CustomStringConvertible {
        /// The exit code the CLI reports for this failure (sysexits.h values).
        var code: UInt16
        var description: String
    }

    let manifest: Manifest
    let shareID: ShareID
    let targetDirectory: String
    let stagingDirectory: String
    private(set) var verified: ChunkBitfield
    /// The share's files open now, by entry, at most `maxOpenFiles` of them (least recently
    /// used closed first): a share of 100,000 files must not run out of descriptors.
    private var descriptors: [Int: Int32] = [:]
    private var lastUse: [Int: UInt64] = [:]
    private var uses: UInt64 = 0
    static let maxOpenFiles = 64

    var finalPath: String { targetDirectory + "/" + manifest.rootName }

    static func stagingName(for shareID: ShareID) -> String { ".peershare-\(shareID.short).partial" }

    /// Files of a private (encrypted) share are for the user alone.
    let privateShare: Bool
    var fileMode: mode_t { privateShare ? 0o600 : 0o644 }
    var folderMode: mode_t { privateShare ? 0o700 : 0o755 }
    /// The share was already in place and every chunk verified: nothing to fetch or move.
    private(set) var alreadyComplete = false

    init(manifestBytes: [UInt8], targetDirectory rawTarget: String, privateShare: Bool = false) throws {
        self.privateShare = privateShare
        let manifest: Manifest
        do {
            manifest = try Manifest.decode(manifestBytes)
        } catch {
            throw Failure(code: 65, description: "invalid manifest: \(error)")
        }
        self.manifest = manifest
        self.shareID = ShareID(manifestBytes: manifestBytes)
        let target = URL(fileURLWithPath: rawTarget).standardizedFileURL.path
        self.targetDirectory = target
        self.stagingDirectory = target + "/" + DownloadOnDisk.stagingName(for: shareID)
        self.verified = ChunkBitfield(count: manifest.chunkCount)

        var info = stat()
        guard stat(target, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw Failure(code: 73, description: "target directory '\(target)' does not exist")
        }
        guard access(target, W_OK) == 0 else {
            throw Failure(code: 73, description: "target directory '\(target)' is not writable")
        }
        if lstat(finalPath, &info) == 0 {
            // Run again after it completed (as `wget -c` would be): check what is there.
            guard try verifyInPlace() else {
                throw Failure(
                    code: 73,
                    description:
                        "'\(finalPath)' already exists and is not this share; remove it or choose another directory with -o"
                )
            }
            alreadyComplete = true
            for index in 0..<manifest.chunkCount { verified[index] = true }
            return
        }
        let resuming = try makeStagingFolder()
        try createTree(resuming: resuming)
    }

    /// The staging folder is ours alone: created 0700, or, if it is already there (an
    /// interrupted download), a real folder owned by this user. In a shared folder such as
    /// /tmp, anyone who knows the share id could otherwise plant a symlink or a folder of
    /// their own there and have the download written where they like.
    /// Returns whether it was already there.
    private func makeStagingFolder() throws -> Bool {
        if mkdir(stagingDirectory, 0o700) == 0 { return false }
        guard errno == EEXIST else {
            throw Failure(
                code: 73, description: "cannot create '\(stagingDirectory)': \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard lstat(stagingDirectory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw Failure(
                code: 73,
                description: "'\(stagingDirectory)' is there but is not a folder (a symlink?); refusing to use it")
        }
        guard info.st_uid == getuid() else {
            throw Failure(
                code: 73,
                description: "'\(stagingDirectory)' belongs to another user (uid \(info.st_uid)); refusing to use it")
        }
        guard info.st_mode & 0o022 == 0 else {
            throw Failure(
                code: 73, description: "'\(stagingDirectory)' may be written by others; refusing to use it")
        }
        return true
    }

    /// Whether the share is already at its final place, every chunk matching the manifest.
    /// Symlinks are not followed: only real files and folders count.
    private func verifyInPlace() throws -> Bool {
        var buffer = [UInt8](repeating: 0, count: manifest.chunkSize)
        for entry in manifest.entries {
            let path = targetDirectory + "/" + entry.path
            var info = stat()
            guard lstat(path, &info) == 0 else { return false }
            if entry.kind == .directory {
                guard info.st_mode & S_IFMT == S_IFDIR else { return false }
                continue
            }
            guard info.st_mode & S_IFMT == S_IFREG, UInt64(info.st_size) == entry.size else { return false }
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            for chunk in entry.firstChunk..<entry.firstChunk + entry.chunkCount {
                guard try hashOnDisk(chunk, fd: fd, buffer: &buffer, path: path) else { return false }
            }
        }
        return true
    }

    /// Whether chunk `index`, read from `fd`, matches the manifest.
    private func hashOnDisk(_ index: Int, fd: Int32, buffer: inout [UInt8], path: String) throws -> Bool {
        let location = manifest.chunkLocations[index]
        try FileIO.readExactly(fd, into: &buffer, count: location.length, at: location.offset, path: path)
        let hash = buffer.withUnsafeBytes { ChunkHash.of(UnsafeRawBufferPointer(rebasing: $0[0..<location.length])) }
        return manifest.isExpected(hash, ofChunk: index)
    }

    deinit {
        for fd in descriptors.values { close(fd) }
    }

    /// Creates every folder of the share, and its empty files, in the staging folder. Other
    /// files are created when their first chunk is written: a share of 100,000 small files
    /// then starts at once, instead of after 100,000 creations. If the staging folder was
    /// already there (an interrupted download, or a restarted hash worker), each file in it
    /// is re-hashed chunk by chunk, and what verifies is kept.
    private func createTree(resuming: Bool) throws {
        var buffer = [UInt8](repeating: 0, count: resuming ? manifest.chunkSize : 0)
        for entry in manifest.entries {
            let path = stagingDirectory + "/" + entry.path
            if entry.kind == .directory {
                if mkdir(path, folderMode) != 0 && errno != EEXIST {
                    throw Failure(
                        code: 73, description: "cannot create folder '\(path)': \(String(cString: strerror(errno)))")
                }
                continue
            }
            guard entry.size == 0 || (resuming && access(path, F_OK) == 0) else { continue }
            let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, fileMode)
            guard fd >= 0 else {
                throw Failure(code: 73, description: "cannot create '\(path)': \(String(cString: strerror(errno)))")
            }
            defer { close(fd) }
            var info = stat()
            fstat(fd, &info)
            if UInt64(info.st_size) != entry.size && ftruncate(fd, off_t(entry.size)) != 0 {
                throw Failure(code: 74, description: "cannot size '\(path)': \(String(cString: strerror(errno)))")
            }
            for chunk in entry.firstChunk..<entry.firstChunk + entry.chunkCount
            where try hashOnDisk(chunk, fd: fd, buffer: &buffer, path: path) {
                verified[chunk] = true
            }
        }
    }

    /// The open file of a staged entry: opened (and another closed) as needed.
    private func descriptor(for entry: Int) throws -> Int32 {
        uses += 1
        if let fd = descriptors[entry] {
            lastUse[entry] = uses
            return fd
        }
        if descriptors.count >= DownloadOnDisk.maxOpenFiles,
            let oldest = lastUse.min(by: { $0.value < $1.value })?.key
        {
            closeFile(oldest)
        }
        let fd = try openStaged(entry)
        descriptors[entry] = fd
        lastUse[entry] = uses
        return fd
    }

    /// Opens a staged file, creating it if this is its first chunk (see `createTree`).
    private func openStaged(_ entry: Int) throws -> Int32 {
        let path = stagedPath(of: entry)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, fileMode)
        guard fd >= 0 else {
            throw Failure(code: 74, description: "cannot open '\(path)': \(String(cString: strerror(errno)))")
        }
        return fd
    }

    /// Runs `body` on the file that holds `location`. A file of one chunk is opened, used
    /// and closed at once, outside the cache of open files: in a folder of 100,000 small
    /// files each is written once, and keeping it open would only cost an eviction later.
    private func withFile<Result>(at location: Manifest.ChunkLocation, _ body: (Int32) throws -> Result) throws
        -> Result
    {
        let entry = location.entryIndex
        if location.offset == 0, UInt64(location.length) == manifest.size(ofEntry: entry), descriptors[entry] == nil {
            let fd = try openStaged(entry)
            defer { close(fd) }
            return try body(fd)
        }
        return try body(descriptor(for: entry))
    }

    private func stagedPath(of entry: Int) -> String { stagingDirectory + "/" + manifest.path(ofEntry: entry) }

    /// Closes one file. It is flushed to disk with all the others in `finalize`.
    private func closeFile(_ entry: Int) {
        guard let fd = descriptors.removeValue(forKey: entry) else { return }
        lastUse[entry] = nil
        close(fd)
    }

    /// Whether `index` names a chunk of this share that is `length` bytes long.
    func isChunk(_ index: Int, ofLength length: Int) -> Bool {
        index >= 0 && index < manifest.chunkCount && manifest.chunkLocations[index].length == length
    }

    /// Verifies a chunk against the manifest and writes it only if it matches. `digest`: the
    /// `ChunkHash` of `data` when the caller has it already.
    func write(index: Int, data: [UInt8], digest: [UInt8]? = nil) throws -> Bool {
        guard index >= 0, index < manifest.chunkCount else { return false }
        let location = manifest.chunkLocations[index]
        guard data.count == location.length, manifest.isExpected(digest ?? ChunkHash.of(data), ofChunk: index) else {
            return false
        }
        if verified[index] { return true }
        try withFile(at: location) { fd in
            try data.withUnsafeBytes {
                try FileIO.writeAll(fd, $0, at: location.offset, path: stagedPath(of: location.entryIndex))
            }
        }
        verified[index] = true
        return true
    }

    /// Reads a verified chunk back, to serve it to other downloaders. Unverified chunks are
    /// refused: only what matched the manifest ever leaves this machine.
    /// Returns its length; it lies in `slot` (a slot of the chunk pool).
    func read(index: Int, into slot: UnsafeMutableRawBufferPointer) throws -> Int {
        guard index >= 0, index < manifest.chunkCount, verified[index] else {
            throw Failure(code: 65, description: "chunk \(index) is not verified here")
        }
        let location = manifest.chunkLocations[index]
        guard location.length <= slot.count else {
            throw Failure(code: 70, description: "chunk \(index) (\(location.length) bytes) is larger than its slot")
        }
        try withFile(at: location) { fd in
            try FileIO.readExactly(
                fd, into: UnsafeMutableRawBufferPointer(rebasing: slot[0..<location.length]), at: location.offset,
                path: stagedPath(of: location.entryIndex))
        }
        return location.length
    }

    /// Flushes every file and renames the share into place; refuses if anything is missing.
    func finalize() throws -> String {
        if alreadyComplete { return finalPath }
        guard verified.isComplete else {
            throw Failure(
                code: 70, description: "cannot finish: \(manifest.chunkCount - verified.setCount) chunks missing")
        }
        for entry in Array(descriptors.keys) { closeFile(entry) }
        // Everything reaches the disk before the share is renamed into place, in one flush
        // of the filesystem: an fsync per file would cost a folder of 100,000 files as many
        // disk flushes (minutes on a disk, for nothing a crash could not redo: a resumed
        // download re-hashes what is on disk).
        let staging = open(stagingDirectory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard staging >= 0, peershare_syncfs(staging) == 0 else {
            let reason = String(cString: strerror(errno))
            if staging >= 0 { close(staging) }
            throw Failure(code: 74, description: "cannot flush the download to disk: \(reason)")
        }
        close(staging)
        let staged = stagingDirectory + "/" + manifest.rootName
        var info = stat()
        if lstat(finalPath, &info) == 0 {
            throw Failure(
                code: 73,
                description: "'\(finalPath)' appeared while downloading; the download is kept in '\(stagingDirectory)'")
        }
        guard rename(staged, finalPath) == 0 else {
            throw Failure(
                code: 74, description: "cannot move the download into place: \(String(cString: strerror(errno)))")
        }
        rmdir(stagingDirectory)
        let directory = open(targetDirectory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 {
            fsync(directory)
            close(directory)
        }
        return finalPath
    }
}
