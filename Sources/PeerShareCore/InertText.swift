/// Text that came from outside (a peer's error or reject reason, a manifest's file names, a
/// plugin's stderr) made safe to print: a terminal must never see an escape sequence or a
/// control character from someone else, or a peer could set the window title, move the
/// cursor, forge a "verified and saved" line, or hide text. Every such character is
/// replaced by a visible escape (`\u{1B}`), so nothing is lost and nothing is interpreted.
///
/// Replaced: C0 controls (U+0000–U+001F, newline and tab included: a peer must not start a
/// line of its own), DEL, C1 controls (U+0080–U+009F, which some terminals read as CSI and
/// OSC), and the Unicode bidirectional overrides and isolates (U+202A–U+202E,
/// U+2066–U+2069), which reorder what is shown.
public enum InertText {
    public static func make(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isActive) else { return text }
        var result = ""
        result.reserveCapacity(text.utf8.count + 16)
        for scalar in text.unicodeScalars {
            if isActive(scalar) {
                result += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            } else {
                result.unicodeScalars.append(scalar)
            }
        }
        return result
    }

    /// A character a terminal would act on rather than show.
    public static func isActive(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F, 0x202A...0x202E, 0x2066...0x2069: return true
        default: return false
        }
    }
}
