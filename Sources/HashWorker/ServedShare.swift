import Foundation
import PeerShareCore

/// A share being served: the manifest plus where each entry is on disk. Every chunk read is
/// hashed again before it leaves, so a file edited after sharing is caught here instead of
/// being sent to peers who would reject it anyway.
final class ServedShare {
    let manifest: Manifest
    private let diskRoot: String
    private var openFile: (entry: Int, fd: Int32)?
    private var buffer: [UInt8]

    struct Failure: Error, CustomStringConvertible {
        var code: UInt16
        var description: String
    }

    /// `path` is the file or folder that was shared; its parent holds the manifest's root name.
    init(path: String, manifestBytes: [UInt8]) throws {
        manifest = try Manifest.decode(manifestBytes)
        let absolute = URL(fileURLWithPath: path).standardizedFileURL
        diskRoot = absolute.deletingLastPathComponent().path
        buffer = [UInt8](repeating: 0, count: manifest.chunkSize)
        guard absolute.lastPathComponent == manifest.rootName else {
            throw Failure(code: 65, description: "'\(path)' does not match the manifest's name '\(manifest.rootName)'")
        }
    }

    deinit {
        if let openFile { close(openFile.fd) }
    }

    func read(index: Int) throws -> [UInt8] {
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
        try FileIO.readExactly(fd, into: &buffer, count: location.length, at: location.offset, path: path)
        let data = Array(buffer[0..<location.length])
        guard ChunkHash.of(data) == manifest.expectedHash(ofChunk: index) else {
            throw Failure(
                code: 65, description: "'\(path)' changed since it was shared (chunk \(index) no longer matches)")
        }
        return data
    }
}
