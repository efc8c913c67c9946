import Foundation
import PeerShareCore

/// A share being served: the manifest plus where each entry is on disk. A file whose size or
/// modification time changed since it was opened for sharing is refused with a clear error,
/// instead of being sent to peers who would reject it anyway. (Chunks are not re-hashed on the
/// way out: that would double the CPU cost of serving, and every downloader verifies each
/// chunk against the manifest before writing it.)
final class ServedShare {
    let manifest: Manifest
    private let diskRoot: String
    private var openFile: (entry: Int, fd: Int32)?
    /// The modification time of each file entry when the share was opened (by entry index;
    /// folders' are unused). Its size is the manifest's.
    private var modified: [timespec]

    struct Failure: Error, CustomStringConvertible {
        var code: UInt16
        var description: String
    }

    /// `path` is the file or folder that was shared; its parent holds the manifest's root name.
    /// `hashedAt` (Unix nanoseconds, 0: unchecked): a file modified after the manifest was made
    /// may hold other bytes at the same size, so it is refused as changed.
    convenience init(path: String, manifest: Manifest, hashedAt: UInt64 = 0) throws {
        try self.init(path: path, manifest: manifest, modified: nil)
        for index in 0..<manifest.entryCount where manifest.kind(ofEntry: index) == .file {
            var info = stat()
            let path = diskRoot + "/" + manifest.path(ofEntry: index)
            guard lstat(path, &info) == 0, UInt64(info.st_size) == manifest.size(ofEntry: index),
                hashedAt == 0
                    || UInt64(clamping: info.st_mtim.tv_sec) &* 1_000_000_000
                        &+ UInt64(clamping: info.st_mtim.tv_nsec) < hashedAt
            else {
                throw Failure(code: 66, description: "'\(path)' is missing or changed since it was hashed")
            }
            modified[index] = info.st_mtim
        }
    }

    /// A share just hashed here (`ManifestBuilder.Built`): each file's time was taken when it
    /// was opened to be hashed, so nothing needs looking at again.
    convenience init(path: String, built: ManifestBuilder.Built) throws {
        try self.init(path: path, manifest: built.manifest, modified: built.modified)
    }

    private init(path: String, manifest: Manifest, modified: [timespec]?) throws {
        self.manifest = manifest
        let absolute = URL(fileURLWithPath: path).standardizedFileURL
        diskRoot = absolute.deletingLastPathComponent().path
        guard absolute.lastPathComponent == manifest.rootName else {
            throw Failure(code: 65, description: "'\(path)' does not match the manifest's name '\(manifest.rootName)'")
        }
        self.modified = modified ?? Array(repeating: timespec(), count: manifest.entryCount)
        guard self.modified.count == manifest.entryCount else {
            throw Failure(code: 70, description: "one modification time per entry was expected")
        }
    }

    deinit {
        if let openFile { close(openFile.fd) }
    }

    /// Reads chunk `index` into `slot` (a slot of the chunk pool); returns its length.
    func read(index: Int, into slot: UnsafeMutableRawBufferPointer) throws -> Int {
        guard index >= 0, index < manifest.chunkCount else {
            throw Failure(code: 65, description: "chunk \(index) is out of range (0..<\(manifest.chunkCount))")
        }
        let location = manifest.chunkLocations[index]
        let entry = location.entryIndex
        func path() -> String { diskRoot + "/" + manifest.path(ofEntry: entry) }
        if openFile?.entry != entry {
            if let openFile { close(openFile.fd) }
            openFile = nil
            let fd = open(path(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else {
                throw Failure(code: 66, description: "cannot open '\(path())': \(String(cString: strerror(errno)))")
            }
            openFile = (entry, fd)
        }
        guard let fd = openFile?.fd else { throw Failure(code: 70, description: "no open file") }
        var info = stat()
        let mtime = modified[entry]
        guard fstat(fd, &info) == 0, UInt64(info.st_size) == manifest.size(ofEntry: entry),
            info.st_mtim.tv_sec == mtime.tv_sec, info.st_mtim.tv_nsec == mtime.tv_nsec
        else {
            throw Failure(code: 65, description: "'\(path())' changed since it was shared")
        }
        guard location.length <= slot.count else {
            throw Failure(code: 70, description: "chunk \(index) (\(location.length) bytes) is larger than its slot")
        }
        try FileIO.readExactly(
            fd, into: UnsafeMutableRawBufferPointer(rebasing: slot[0..<location.length]), at: location.offset,
            path: path())
        return location.length
    }
}
