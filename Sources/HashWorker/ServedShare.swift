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
    /// (size, mtime) of each file entry when the share was opened.
    private var fingerprints: [Int: (UInt64, timespec)] = [:]

    struct Failure: Error, CustomStringConvertible {
        var code: UInt16
        var description: String
    }

    /// `path` is the file or folder that was shared; its parent holds the manifest's root name.
    /// `hashedAt` (Unix nanoseconds, 0: unchecked): a file modified after the manifest was made
    /// may hold other bytes at the same size, so it is refused as changed.
    init(path: String, manifestBytes: [UInt8], hashedAt: UInt64 = 0) throws {
        manifest = try Manifest.decode(manifestBytes)
        let absolute = URL(fileURLWithPath: path).standardizedFileURL
        diskRoot = absolute.deletingLastPathComponent().path
        guard absolute.lastPathComponent == manifest.rootName else {
            throw Failure(code: 65, description: "'\(path)' does not match the manifest's name '\(manifest.rootName)'")
        }
        for (index, entry) in manifest.entries.enumerated() where entry.kind == .file {
            var info = stat()
            let path = diskRoot + "/" + entry.path
            guard lstat(path, &info) == 0, UInt64(info.st_size) == entry.size,
                hashedAt == 0
                    || UInt64(clamping: info.st_mtim.tv_sec) &* 1_000_000_000
                        &+ UInt64(clamping: info.st_mtim.tv_nsec) < hashedAt
            else {
                throw Failure(code: 66, description: "'\(path)' is missing or changed since it was hashed")
            }
            fingerprints[index] = (entry.size, info.st_mtim)
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
        let entry = manifest.entries[location.entryIndex]
        let path = diskRoot + "/" + entry.path
        if openFile?.entry != location.entryIndex {
            if let openFile { close(openFile.fd) }
            openFile = nil
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else {
                throw Failure(code: 66, description: "cannot open '\(path)': \(String(cString: strerror(errno)))")
            }
            openFile = (location.entryIndex, fd)
        }
        guard let fd = openFile?.fd else { throw Failure(code: 70, description: "no open file") }
        var info = stat()
        guard fstat(fd, &info) == 0, let (size, mtime) = fingerprints[location.entryIndex],
            UInt64(info.st_size) == size, info.st_mtim.tv_sec == mtime.tv_sec, info.st_mtim.tv_nsec == mtime.tv_nsec
        else {
            throw Failure(code: 65, description: "'\(path)' changed since it was shared")
        }
        guard location.length <= slot.count else {
            throw Failure(code: 70, description: "chunk \(index) (\(location.length) bytes) is larger than its slot")
        }
        try FileIO.readExactly(
            fd, into: UnsafeMutableRawBufferPointer(rebasing: slot[0..<location.length]), at: location.offset,
            path: path)
        return location.length
    }
}
