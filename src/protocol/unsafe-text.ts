/**
 * The characters a terminal acts on or hides, so text from outside (a peer, the server)
 * may not carry them to a screen raw: C0 controls and DEL (U+0000–U+001F, U+007F: ESC
 * starts CSI/OSC sequences, CR rewrites the line), C1 controls (U+0080–U+009F: U+009B is
 * a one-byte CSI), the bidirectional controls (U+061C, U+200E–U+200F, U+202A–U+202E,
 * U+2066–U+2069) that make `txt.exe` display as `exe.txt`, other invisible format
 * characters (U+200B–U+200D, U+2060, U+FEFF), the line and paragraph separators
 * (U+2028–U+2029), and lone surrogates. Received file names replace them
 * (daemon/file-names.ts); natctl shows them escaped (cli/format.ts).
 */
// eslint-disable-next-line no-control-regex -- matching the control characters is the point
export const UNSAFE_TEXT_CHARS = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]/gu
