#if canImport(Glibc)
    import Glibc
#endif

/// Writing to standard output and standard error that survives their reader going away.
///
/// Foundation's `FileHandle.write(_:)` traps when the write fails: `peershare get LINK | head -1`,
/// a closed SSH session or a killed `tee` turned the next progress line into a crash
/// (SIGILL) in the middle of a download. A program serving peers has better things to do than
/// die because nobody reads its messages any more: what cannot be written is dropped.
/// (SIGPIPE is ignored by the process, so the failure arrives as EPIPE, not as a signal.)
public enum StandardStream {
    public static let output: Int32 = 1
    public static let error: Int32 = 2

    /// Writes all of `text` to `descriptor`, retrying short writes and interruptions, and
    /// drops the rest on any other failure.
    public static func write(_ text: String, to descriptor: Int32) {
        write(Array(text.utf8), to: descriptor)
    }

    public static func write(_ bytes: [UInt8], to descriptor: Int32) {
        bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            var offset = 0
            while offset < raw.count {
                let written = Glibc.write(descriptor, base + offset, raw.count - offset)
                if written < 0 && errno == EINTR { continue }
                if written <= 0 { return }
                offset += written
            }
        }
    }
}
