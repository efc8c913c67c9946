import CQREncode

/// A QR code as an SVG image, drawn here with libqrencode: the web UI shows a share's link as
/// one with no script or image fetched from anywhere.
public enum QRCodeSVG {
    /// The longest text encoded (a QR code holds 2,953 bytes at most, at the lowest level).
    public static let maxBytes = 2048

    /// nil when the text is empty, too long or has a NUL (libqrencode reads a C string).
    public static func svg(for text: String) -> String? {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= maxBytes, !bytes.contains(0) else { return nil }
        guard let code = QRcode_encodeString8bit(text, 0, QR_ECLEVEL_M) else { return nil }
        defer { QRcode_free(code) }
        let width = Int(code.pointee.width)
        guard width > 0, let data = code.pointee.data else { return nil }
        let quiet = 4
        let size = width + 2 * quiet
        var path = ""
        path.reserveCapacity(width * width * 4)
        for row in 0..<width {
            for column in 0..<width where data[row * width + column] & 1 == 1 {
                path += "M\(column + quiet) \(row + quiet)h1v1h-1z"
            }
        }
        return """
            <svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 \(size) \(size)" shape-rendering="crispEdges">\
            <rect width="\(size)" height="\(size)" fill="#fff"/><path d="\(path)" fill="#000"/></svg>
            """
    }
}
