//! MySQL/MariaDB character sets to Unicode: the text of a column as the binlog carries it (its
//! bytes as stored, in the column's character set) to the UTF-8 the server would send for it to
//! a utf8mb4 connection, which is what the full load reads. No I/O.
//!
//! Two paths read text, and both must give the same characters:
//! - the full load and verification read over a `SET NAMES utf8mb4` connection: the server
//!   converts every text column (CHAR, VARCHAR, TEXT, ENUM, SET, in the text and the binary
//!   protocol alike) to UTF-8 with its own tables; BINARY/VARBINARY/BLOB and `CHARACTER SET
//!   binary` columns are bytes and not converted (they become `bytea`);
//! - the binlog stream gets the stored bytes: [`Charset::decode`] converts them here, with the
//!   WHATWG decoders of `encoding_rs` (the encoders of every browser) and, where MySQL's tables
//!   differ from them, MySQL's own mapping (the `MYSQL_*` tables below). The integration test
//!   `mysql_charsets_decode_as_the_server_converts` checks every byte (single-byte sets) and
//!   every two-byte sequence (multi-byte sets) against the server's own conversion.
//!
//! MySQL's `latin1` is Windows-1252 (cp1252), not ISO-8859-1: 0x80-0x9F are `€ ‚ ƒ „ … † ‡ ˆ
//! ‰ Š ‹ Œ Ž ‘ ’ “ ” • – — ˜ ™ š › œ ž Ÿ`, and its five unassigned bytes (0x81, 0x8D, 0x8F, 0x90,
//! 0x9D) are the C1 control characters of the same number (as in WHATWG's windows-1252).
//!
//! A character set not listed in [`Charset::of`] has no decoder here: `ferry check` refuses such
//! a column (`crate::types::map_column`), naming it, rather than move wrong characters. That is
//! dec8, cp850, cp852, hp8, swe7, keybcs2, macce, armscii8 and geostd8 (no WHATWG decoder),
//! big5 and eucjpms (MySQL's tables differ from WHATWG's in hundreds of places), and gb18030
//! (MySQL only: MariaDB, the only server here, has no such set to check a decoder against).
//!
//! Where MySQL has no character for bytes (it writes `?`, or for tis620 U+FFFD, in a query
//! result), [`Charset::decode`] refuses them: the stream makes a dead letter of the row rather
//! than a different text.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use encoding_rs::Encoding;

/// How one character set's bytes become Unicode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// utf8mb4, utf8mb3 (`utf8` before MariaDB 10.6 and MySQL 8.0.30): already UTF-8.
    Utf8,
    /// ascii: 7-bit.
    Ascii,
    /// binary: bytes, never text (the column becomes `bytea`).
    Binary,
    /// A single-byte set: one character per byte, from a 256-entry table.
    Single(Single),
    /// A multi-byte set decoded by `encoding_rs`, with MySQL's differences applied.
    Multi(Multi),
    /// utf32: four bytes per character, big-endian.
    Utf32,
}

/// The single-byte character sets Ferry decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Single {
    /// latin1 (Windows-1252).
    Latin1,
    /// latin2 (ISO-8859-2).
    Latin2,
    /// latin5 (ISO-8859-9).
    Latin5,
    /// latin7 (ISO-8859-13).
    Latin7,
    /// greek (ISO-8859-7).
    Greek,
    /// hebrew (ISO-8859-8).
    Hebrew,
    /// cp1250.
    Cp1250,
    /// cp1251.
    Cp1251,
    /// cp1256.
    Cp1256,
    /// cp1257.
    Cp1257,
    /// cp866 (IBM866).
    Cp866,
    /// koi8r.
    Koi8r,
    /// koi8u.
    Koi8u,
    /// tis620 (TIS-620 Thai).
    Tis620,
    /// macroman (Mac OS Roman).
    Macroman,
}

/// The multi-byte character sets Ferry decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Multi {
    /// sjis (Shift_JIS, JIS X 0208).
    Sjis,
    /// cp932 (Windows-31J: Shift_JIS with NEC and IBM extensions).
    Cp932,
    /// ujis (EUC-JP).
    Ujis,
    /// gbk.
    Gbk,
    /// gb2312 (decoded as GBK, of which it is a subset).
    Gb2312,
    /// euckr (EUC-KR).
    Euckr,
    /// ucs2 (UTF-16 big-endian without surrogates).
    Ucs2,
    /// utf16 (big-endian).
    Utf16,
    /// utf16le.
    Utf16le,
}

impl Charset {
    /// The decoder for a MySQL character set name (`CHARACTER_SET_NAME`, any case); None for one
    /// Ferry cannot convert.
    pub fn of(name: &str) -> Option<Charset> {
        use Multi as M;
        use Single as S;
        Some(match name.to_ascii_lowercase().as_str() {
            "utf8mb4" | "utf8mb3" | "utf8" => Charset::Utf8,
            "ascii" => Charset::Ascii,
            "binary" => Charset::Binary,
            "latin1" => Charset::Single(S::Latin1),
            "latin2" => Charset::Single(S::Latin2),
            "latin5" => Charset::Single(S::Latin5),
            "latin7" => Charset::Single(S::Latin7),
            "greek" => Charset::Single(S::Greek),
            "hebrew" => Charset::Single(S::Hebrew),
            "cp1250" => Charset::Single(S::Cp1250),
            "cp1251" => Charset::Single(S::Cp1251),
            "cp1256" => Charset::Single(S::Cp1256),
            "cp1257" => Charset::Single(S::Cp1257),
            "cp866" => Charset::Single(S::Cp866),
            "koi8r" => Charset::Single(S::Koi8r),
            "koi8u" => Charset::Single(S::Koi8u),
            "tis620" => Charset::Single(S::Tis620),
            "macroman" => Charset::Single(S::Macroman),
            "sjis" => Charset::Multi(M::Sjis),
            "cp932" => Charset::Multi(M::Cp932),
            "ujis" => Charset::Multi(M::Ujis),
            "gbk" => Charset::Multi(M::Gbk),
            "gb2312" => Charset::Multi(M::Gb2312),
            "euckr" => Charset::Multi(M::Euckr),
            "ucs2" => Charset::Multi(M::Ucs2),
            "utf16" => Charset::Multi(M::Utf16),
            "utf16le" => Charset::Multi(M::Utf16le),
            "utf32" => Charset::Utf32,
            _ => return None,
        })
    }

    /// Whether text in this set arrives from the binlog as something other than UTF-8 (and so
    /// goes through [`Charset::decode`]).
    pub fn needs_decoding(self) -> bool {
        !matches!(self, Charset::Utf8 | Charset::Binary)
    }

    /// The text of `bytes`, stored in this character set; Err says which bytes have no
    /// character (or are not valid in it).
    pub fn decode(self, bytes: &[u8]) -> Result<Cow<'_, str>, String> {
        match self {
            Charset::Utf8 | Charset::Binary => std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|e| invalid("UTF-8", bytes, e.valid_up_to())),
            Charset::Ascii => match bytes.iter().position(|b| !b.is_ascii()) {
                None => Ok(Cow::Borrowed(std::str::from_utf8(bytes).expect("ASCII is UTF-8"))),
                Some(at) => Err(invalid("ascii", bytes, at)),
            },
            Charset::Single(s) => {
                let table = s.table();
                let mut out = String::with_capacity(bytes.len() + bytes.len() / 2);
                for (at, b) in bytes.iter().enumerate() {
                    match table[usize::from(*b)] {
                        Some(c) => out.push(c),
                        None => return Err(invalid(s.name(), bytes, at)),
                    }
                }
                Ok(Cow::Owned(out))
            }
            Charset::Multi(m) => m.decode(bytes),
            Charset::Utf32 => {
                if bytes.len() % 4 != 0 {
                    return Err(invalid("utf32", bytes, bytes.len() - bytes.len() % 4));
                }
                let mut out = String::with_capacity(bytes.len() / 2);
                for (i, c) in bytes.chunks_exact(4).enumerate() {
                    let n = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                    out.push(char::from_u32(n).ok_or_else(|| invalid("utf32", bytes, i * 4))?);
                }
                Ok(Cow::Owned(out))
            }
        }
    }
}

/// Why text does not decode: the set, the offset and the bytes there (never the whole value).
fn invalid(set: &str, bytes: &[u8], at: usize) -> String {
    let shown: String = bytes[at..].iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("the text is not valid {set} at byte {at} (0x{shown}): the stored bytes have no Unicode character")
}

impl Single {
    fn name(self) -> &'static str {
        match self {
            Single::Latin1 => "latin1",
            Single::Latin2 => "latin2",
            Single::Latin5 => "latin5",
            Single::Latin7 => "latin7",
            Single::Greek => "greek",
            Single::Hebrew => "hebrew",
            Single::Cp1250 => "cp1250",
            Single::Cp1251 => "cp1251",
            Single::Cp1256 => "cp1256",
            Single::Cp1257 => "cp1257",
            Single::Cp866 => "cp866",
            Single::Koi8r => "koi8r",
            Single::Koi8u => "koi8u",
            Single::Tis620 => "tis620",
            Single::Macroman => "macroman",
        }
    }

    fn encoding(self) -> &'static Encoding {
        match self {
            Single::Latin1 => encoding_rs::WINDOWS_1252,
            Single::Latin2 => encoding_rs::ISO_8859_2,
            // (0x80-0x9F: see `build`.)
            Single::Latin5 => encoding_rs::WINDOWS_1254,
            Single::Latin7 => encoding_rs::ISO_8859_13,
            Single::Greek => encoding_rs::ISO_8859_7,
            Single::Hebrew => encoding_rs::ISO_8859_8,
            Single::Cp1250 => encoding_rs::WINDOWS_1250,
            Single::Cp1251 => encoding_rs::WINDOWS_1251,
            Single::Cp1256 => encoding_rs::WINDOWS_1256,
            Single::Cp1257 => encoding_rs::WINDOWS_1257,
            Single::Cp866 => encoding_rs::IBM866,
            Single::Koi8r => encoding_rs::KOI8_R,
            Single::Koi8u => encoding_rs::KOI8_U,
            Single::Tis620 => encoding_rs::WINDOWS_874,
            Single::Macroman => encoding_rs::MACINTOSH,
        }
    }

    /// Byte to character (None: no character), built once per set.
    fn table(self) -> &'static [Option<char>; 256] {
        static TABLES: OnceLock<HashMap<Single, [Option<char>; 256]>> = OnceLock::new();
        let all = TABLES.get_or_init(|| {
            use Single::*;
            [
                Latin1, Latin2, Latin5, Latin7, Greek, Hebrew, Cp1250, Cp1251, Cp1256, Cp1257, Cp866, Koi8r, Koi8u, Tis620, Macroman,
            ]
            .into_iter()
            .map(|s| (s, s.build()))
            .collect()
        });
        &all[&self]
    }

    fn build(self) -> [Option<char>; 256] {
        let mut t = [None; 256];
        for (b, slot) in t.iter_mut().enumerate() {
            let byte = [b as u8];
            let (text, had_errors) = self.encoding().decode_without_bom_handling(&byte);
            if !had_errors {
                *slot = text.chars().next();
            }
        }
        // WHATWG folds ISO-8859-9 into windows-1254 and TIS-620 into windows-874; MySQL keeps
        // 0x80-0x9F as the C1 controls there.
        if matches!(self, Single::Latin5 | Single::Tis620) {
            for b in 0x80..=0x9Fu8 {
                t[usize::from(b)] = Some(char::from(b));
            }
        }
        for &(set, byte, c) in MYSQL_SINGLE {
            if set == self {
                t[usize::from(byte)] = c;
            }
        }
        t
    }
}

/// Where MySQL's single-byte tables differ from WHATWG's: (set, byte, MySQL's character or
/// None when MySQL has none). Checked against the server by the integration test.
const MYSQL_SINGLE: &[(Single, u8, Option<char>)] = &[
    (Single::Greek, 0xA1, Some('\u{02BD}')),
    (Single::Greek, 0xA2, Some('\u{02BC}')),
    (Single::Greek, 0xA4, None),
    (Single::Greek, 0xA5, None),
    (Single::Greek, 0xAA, None),
    (Single::Hebrew, 0xAF, Some('\u{203E}')),
    (Single::Cp1250, 0x81, None),
    (Single::Cp1250, 0x83, None),
    (Single::Cp1250, 0x88, None),
    (Single::Cp1250, 0x90, None),
    (Single::Cp1250, 0x98, None),
    (Single::Cp1251, 0x98, None),
    (Single::Cp1256, 0x8A, None),
    (Single::Cp1256, 0x8F, None),
    (Single::Cp1256, 0x98, None),
    (Single::Cp1256, 0x9A, None),
    (Single::Cp1256, 0x9F, None),
    (Single::Cp1256, 0xAA, None),
    (Single::Cp1256, 0xC0, None),
    (Single::Cp1256, 0xFF, None),
    (Single::Cp1257, 0x81, None),
    (Single::Cp1257, 0x83, None),
    (Single::Cp1257, 0x88, None),
    (Single::Cp1257, 0x8A, None),
    (Single::Cp1257, 0x8C, None),
    (Single::Cp1257, 0x90, None),
    (Single::Cp1257, 0x98, None),
    (Single::Cp1257, 0x9A, None),
    (Single::Cp1257, 0x9C, None),
    (Single::Cp1257, 0x9F, None),
    (Single::Cp866, 0xFC, Some('\u{207F}')),
    (Single::Cp866, 0xFD, Some('\u{00B2}')),
    (Single::Koi8u, 0x95, Some('\u{2022}')),
    (Single::Koi8u, 0xAE, Some('\u{255D}')),
    (Single::Koi8u, 0xBE, Some('\u{256C}')),
    // MySQL's tis620 answers U+FFFD for these: no character.
    (Single::Tis620, 0xA0, None),
    (Single::Tis620, 0xDB, None),
    (Single::Tis620, 0xDC, None),
    (Single::Tis620, 0xDD, None),
    (Single::Tis620, 0xDE, None),
    (Single::Tis620, 0xFC, None),
    (Single::Tis620, 0xFD, None),
    (Single::Tis620, 0xFE, None),
    (Single::Tis620, 0xFF, None),
];

/// JIS X 0208 symbols MySQL's sjis and ujis map to the Unicode characters of the JIS standard
/// where WHATWG (following Windows) maps them to fullwidth forms: (row-cell in JIS, MySQL's
/// character). sjis and ujis only differ in how the row and cell are written as bytes.
const JIS_SYMBOLS: &[((u8, u8), char)] = &[
    ((1, 32), '\\'),
    ((1, 33), '\u{301C}'),
    ((1, 34), '\u{2016}'),
    ((1, 61), '\u{2212}'),
    ((1, 81), '\u{00A2}'),
    ((1, 82), '\u{00A3}'),
    ((2, 44), '\u{00AC}'),
];

impl Multi {
    fn name(self) -> &'static str {
        match self {
            Multi::Sjis => "sjis",
            Multi::Cp932 => "cp932",
            Multi::Ujis => "ujis",
            Multi::Gbk => "gbk",
            Multi::Gb2312 => "gb2312",
            Multi::Euckr => "euckr",
            Multi::Ucs2 => "ucs2",
            Multi::Utf16 => "utf16",
            Multi::Utf16le => "utf16le",
        }
    }

    fn encoding(self) -> &'static Encoding {
        match self {
            Multi::Sjis | Multi::Cp932 => encoding_rs::SHIFT_JIS,
            Multi::Ujis => encoding_rs::EUC_JP,
            Multi::Gbk | Multi::Gb2312 => encoding_rs::GBK,
            Multi::Euckr => encoding_rs::EUC_KR,
            Multi::Ucs2 | Multi::Utf16 => encoding_rs::UTF_16BE,
            Multi::Utf16le => encoding_rs::UTF_16LE,
        }
    }

    /// MySQL's answer for one character's bytes where it differs from WHATWG's: Some(c) its
    /// character, Some(None) none; None: WHATWG's. Found by comparing every sequence with the
    /// server (the integration test `mysql_charsets_decode_as_the_server_converts`).
    fn mysql(self, one: &[u8]) -> Option<Option<char>> {
        let jis = |row: u8, cell: u8| JIS_SYMBOLS.iter().find(|(rc, _)| *rc == (row, cell)).map(|(_, c)| Some(*c));
        match (self, one) {
            // WHATWG's Shift_JIS passes 0x80 through as U+0080; MySQL has no such character.
            (Multi::Sjis | Multi::Cp932, [0x80]) => Some(None),
            // MySQL's sjis is JIS X 0208 only: no NEC row 13 (0x87), no IBM extensions (0xED,
            // 0xEE, 0xFA-0xFC), no user-defined area (0xF0-0xF9).
            (Multi::Sjis, [0x87 | 0xED | 0xEE | 0xF0..=0xFC, _]) => Some(None),
            (Multi::Sjis, [lead @ (0x81..=0x9F | 0xE0..=0xEF), trail @ 0x40..=0xFC]) if *trail != 0x7F => {
                // Shift_JIS to JIS row and cell.
                let row = (if *lead <= 0x9F { lead - 0x81 } else { lead - 0xC1 }) * 2 + 1 + u8::from(*trail >= 0x9F);
                let cell = if *trail >= 0x9F {
                    trail - 0x9E
                } else if *trail >= 0x80 {
                    trail - 0x40
                } else {
                    trail - 0x3F
                };
                jis(row, cell)
            }
            // ujis: no NEC row 13 (0xAD); the user-defined rows (0xF5-0xFE, and 0x8F 0xF5-0xFE in
            // JIS X 0212) are Unicode's private use area, as in eucJP-ms.
            (Multi::Ujis, [0xAD, _]) => Some(None),
            (Multi::Ujis, [row @ 0xF5..=0xFE, cell @ 0xA1..=0xFE]) => {
                char::from_u32(0xE000 + u32::from(row - 0xF5) * 94 + u32::from(cell - 0xA1)).map(Some)
            }
            (Multi::Ujis, [0x8F, row @ 0xF5..=0xFE, cell @ 0xA1..=0xFE]) => {
                char::from_u32(0xE3AC + u32::from(row - 0xF5) * 94 + u32::from(cell - 0xA1)).map(Some)
            }
            (Multi::Ujis, [0x8F, 0xA2, 0xB7]) => Some(Some('~')),
            (Multi::Ujis, [row @ 0xA1..=0xFE, cell @ 0xA1..=0xFE]) => jis(row - 0xA0, cell - 0xA0),
            // gb2312 is GB 2312 only (rows 0xA1-0xF7, cells 0xA1-0xFE), two of whose symbols
            // MySQL maps otherwise than GBK does.
            (Multi::Gb2312, [0xA1, 0xA4]) => Some(Some('\u{30FB}')),
            (Multi::Gb2312, [0xA1, 0xAA]) => Some(Some('\u{2015}')),
            // GBK's additions inside GB 2312's rows (small roman numerals, vertical forms,
            // pinyin letters).
            (Multi::Gb2312, [0xA2, 0xA1..=0xAA] | [0xA6, 0xE0..=0xF5] | [0xA8, 0xBB..=0xC0]) => Some(None),
            (Multi::Gb2312, [0xA1..=0xF7, 0xA1..=0xFE]) => Multi::Gbk.mysql(one),
            (Multi::Gb2312, [0x80..=0xFF, ..]) => Some(None),
            // GBK: WHATWG's additions from GB18030 that MySQL's gbk does not have.
            (Multi::Gbk, [0x80]) => Some(None),
            (
                Multi::Gbk,
                [0xA2, 0xE3]
                | [0xA3, 0xA0]
                | [0xA6, 0xD9..=0xDF | 0xEC | 0xED | 0xF3]
                | [0xA8, 0xBC | 0xBF]
                | [0xA9, 0x89..=0x95]
                | [0xFE, 0x50..=0xA0],
            ) => Some(None),
            _ => None,
        }
    }

    /// The length of the character that starts at `b[0]` (the set's lead-byte rules): at
    /// least 1, at most what is left.
    fn char_len(self, b: &[u8]) -> usize {
        let lead = b[0];
        let n = match self {
            Multi::Sjis | Multi::Cp932 => match lead {
                0x81..=0x9F | 0xE0..=0xFC => 2,
                _ => 1,
            },
            Multi::Ujis => match lead {
                0x8F => 3,
                0x8E | 0xA1..=0xFE => 2,
                _ => 1,
            },
            Multi::Gbk | Multi::Gb2312 | Multi::Euckr => match lead {
                0x81..=0xFE => 2,
                _ => 1,
            },
            Multi::Ucs2 | Multi::Utf16 | Multi::Utf16le => 2,
        };
        n.min(b.len())
    }

    fn decode(self, bytes: &[u8]) -> Result<Cow<'_, str>, String> {
        let enc = self.encoding();
        if matches!(self, Multi::Ucs2 | Multi::Utf16 | Multi::Utf16le) {
            let (text, had_errors) = enc.decode_without_bom_handling(bytes);
            if had_errors || (self == Multi::Ucs2 && text.chars().any(|c| (c as u32) > 0xFFFF)) {
                return Err(self.first_error(bytes));
            }
            return Ok(text);
        }
        // Character by character: MySQL's answer where it has its own, else WHATWG's, except
        // the private use area, which MySQL's gbk and gb2312 do not map.
        let mut out = String::with_capacity(bytes.len() * 3 / 2);
        let mut at = 0;
        while at < bytes.len() {
            let n = self.char_len(&bytes[at..]);
            let one = &bytes[at..at + n];
            match self.mysql(one) {
                Some(Some(c)) => out.push(c),
                Some(None) => return Err(invalid(self.name(), bytes, at)),
                None => {
                    let (text, had_errors) = enc.decode_without_bom_handling(one);
                    let private =
                        matches!(self, Multi::Gbk | Multi::Gb2312) && text.chars().any(|c| ('\u{E000}'..='\u{F8FF}').contains(&c));
                    if had_errors || private {
                        return Err(invalid(self.name(), bytes, at));
                    }
                    out.push_str(&text);
                }
            }
            at += n;
        }
        Ok(Cow::Owned(out))
    }

    /// The offset of the first character that does not decode.
    fn first_error(self, bytes: &[u8]) -> String {
        let mut at = 0;
        while at < bytes.len() {
            let n = self.char_len(&bytes[at..]);
            let (text, had_errors) = self.encoding().decode_without_bom_handling(&bytes[at..at + n]);
            if had_errors || (self == Multi::Ucs2 && text.chars().any(|c| (c as u32) > 0xFFFF)) {
                return invalid(self.name(), bytes, at);
            }
            at += n;
        }
        invalid(self.name(), bytes, bytes.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(set: &str, bytes: &[u8]) -> String {
        Charset::of(set).unwrap().decode(bytes).unwrap().into_owned()
    }

    #[test]
    fn latin1_is_windows_1252() {
        assert_eq!(d("latin1", b"caf\xe9 \x80 \x93x\x94 \x81 \xff"), "café € “x” \u{81} ÿ");
        // Its five unassigned bytes are the C1 controls of the same number.
        for b in [0x81u8, 0x8D, 0x8F, 0x90, 0x9D] {
            assert_eq!(d("latin1", &[b]), char::from(b).to_string());
        }
    }

    #[test]
    fn single_byte_sets() {
        assert_eq!(d("latin2", b"\xf5\xfb \xd5\xdb"), "őű ŐŰ");
        assert_eq!(d("cp1251", b"\xc6\xb8 \xb9"), "Жё №");
        assert_eq!(d("cp1250", b"\xa3\xf3d\x9f \x80"), "Łódź €");
        assert_eq!(d("koi8r", b"\xf0\xd2\xc9\xd7\xc5\xd4"), "Привет");
        assert_eq!(d("greek", b"\xc5\xeb\xeb"), "Ελλ");
        assert_eq!(d("ascii", b"plain ~"), "plain ~");
        assert!(Charset::of("ascii")
            .unwrap()
            .decode(b"caf\xe9")
            .unwrap_err()
            .contains("byte 3 (0xe9)"));
    }

    #[test]
    fn multi_byte_sets() {
        assert_eq!(d("sjis", b"\x93\xfa\x96\x7b \xb6\xc0"), "日本 ｶﾀ");
        assert_eq!(d("gbk", b"\xd6\xd0\xce\xc4"), "中文");
        assert_eq!(d("gb2312", b"\xd6\xd0\xce\xc4"), "中文");
        assert_eq!(d("ujis", b"\xc6\xfc\xcb\xdc"), "日本");
        assert_eq!(d("euckr", b"\xc7\xd1\xb1\xb9"), "한국");
        // MySQL's JIS symbols, not WHATWG's fullwidth forms; its private use area for ujis's
        // user-defined rows; nothing for what MySQL does not map.
        assert_eq!(d("sjis", b"\x81\x5f\x81\x60\x81\xca"), "\\〜¬");
        assert_eq!(d("ujis", b"\xa1\xc0\xf5\xa1\x8f\xf5\xa2"), "\\\u{e000}\u{e3ad}");
        assert_eq!(d("cp932", b"\x81\x5f"), "＼");
        for (set, bytes) in [
            ("sjis", &b"\x87\x40"[..]),
            ("sjis", b"\x80"),
            ("gbk", b"\xaa\xa1"),
            ("gb2312", b"\xb0\x40"),
            ("ujis", b"\xad\xa1"),
        ] {
            assert!(Charset::of(set).unwrap().decode(bytes).is_err(), "{set} {bytes:x?}");
        }
        assert_eq!(d("utf16", b"\xd8\x3d\xde\x00\x00\xe9"), "😀é");
        assert_eq!(d("utf16le", b"\x3d\xd8\x00\xde\xe9\x00"), "😀é");
        assert_eq!(d("ucs2", b"\x65\xe5\x00\xe9"), "日é");
        assert_eq!(d("utf32", b"\x00\x01\xf6\x00\x00\x00\x00\xe9"), "😀é");
        // A lead byte without its trail is named, never guessed.
        let e = Charset::of("sjis").unwrap().decode(b"ab\x93").unwrap_err();
        assert!(e.contains("sjis at byte 2"), "{e}");
        assert!(Charset::of("utf32").unwrap().decode(b"\x00\x11\x00\x00").is_err());
    }

    #[test]
    fn sets_without_a_decoder_are_none() {
        for set in [
            "dec8", "cp850", "cp852", "hp8", "swe7", "keybcs2", "macce", "armscii8", "geostd8", "filename", "big5", "eucjpms", "gb18030",
        ] {
            assert!(Charset::of(set).is_none(), "{set}");
        }
        assert_eq!(Charset::of("UTF8MB4"), Some(Charset::Utf8));
        assert!(!Charset::of("utf8mb3").unwrap().needs_decoding());
        assert!(Charset::of("latin1").unwrap().needs_decoding());
    }
}
