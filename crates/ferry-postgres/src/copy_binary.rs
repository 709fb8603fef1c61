//! A streaming reader of PostgreSQL's binary COPY format that counts rows without copying them.
//!
//! The full load passes COPY bytes from source to target untouched; this reader walks the same
//! bytes, whatever their chunking, to count rows for progress and to prove the stream is whole
//! (a stream that ends before its trailer is an error, never a silently short table). It does
//! no I/O and never panics on bad input.

/// The stream is not valid binary COPY data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed binary COPY stream at byte {offset}: {why}")]
pub struct CopyFormatError {
    /// Offset in the stream.
    pub offset: u64,
    /// What was wrong.
    pub why: &'static str,
}

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const HEADER_LEN: usize = 19;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    /// Skipping bytes; then continue with `then`.
    Skip(u64, After),
    FieldCount,
    FieldLen,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Header,
    Field,
}

/// Counts rows of a binary COPY stream fed in arbitrary chunks.
#[derive(Debug, Clone)]
pub struct RowCounter {
    state: State,
    scratch: [u8; HEADER_LEN],
    have: usize,
    fields_left: u16,
    rows: u64,
    offset: u64,
}

impl Default for RowCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl RowCounter {
    /// A counter at the start of a stream.
    pub fn new() -> Self {
        Self {
            state: State::Header,
            scratch: [0; HEADER_LEN],
            have: 0,
            fields_left: 0,
            rows: 0,
            offset: 0,
        }
    }

    /// Complete rows seen so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.offset
    }

    /// Feeds the next chunk.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), CopyFormatError> {
        while !data.is_empty() {
            match self.state {
                State::Done => return Err(self.err("data after the trailer")),
                State::Skip(n, then) => {
                    let k = (data.len() as u64).min(n);
                    data = &data[k as usize..];
                    self.offset += k;
                    if k == n {
                        match then {
                            After::Header => self.state = State::FieldCount,
                            After::Field => self.end_field(),
                        }
                    } else {
                        self.state = State::Skip(n - k, then);
                    }
                }
                State::Header => {
                    if !self.gather(&mut data, HEADER_LEN) {
                        continue;
                    }
                    if &self.scratch[..11] != SIGNATURE {
                        return Err(self.err("bad signature (not binary COPY data)"));
                    }
                    let ext = u32::from_be_bytes([self.scratch[15], self.scratch[16], self.scratch[17], self.scratch[18]]);
                    self.state = State::Skip(u64::from(ext), After::Header);
                    if ext == 0 {
                        self.state = State::FieldCount;
                    }
                }
                State::FieldCount => {
                    if !self.gather(&mut data, 2) {
                        continue;
                    }
                    match i16::from_be_bytes([self.scratch[0], self.scratch[1]]) {
                        -1 => self.state = State::Done,
                        0 => self.rows += 1,
                        n if n > 0 => {
                            self.fields_left = n as u16;
                            self.state = State::FieldLen;
                        }
                        _ => return Err(self.err("negative field count")),
                    }
                }
                State::FieldLen => {
                    if !self.gather(&mut data, 4) {
                        continue;
                    }
                    match i32::from_be_bytes([self.scratch[0], self.scratch[1], self.scratch[2], self.scratch[3]]) {
                        -1 => self.end_field(),
                        n if n >= 0 => {
                            self.state = State::Skip(n as u64, After::Field);
                            if n == 0 {
                                self.end_field();
                            }
                        }
                        _ => return Err(self.err("field length below -1")),
                    }
                }
            }
        }
        Ok(())
    }

    /// Declares the end of the stream; returns the row count if the trailer was seen.
    pub fn finish(&self) -> Result<u64, CopyFormatError> {
        match self.state {
            State::Done => Ok(self.rows),
            _ => Err(self.err("stream ended before the trailer")),
        }
    }

    fn end_field(&mut self) {
        self.fields_left -= 1;
        if self.fields_left == 0 {
            self.rows += 1;
            self.state = State::FieldCount;
        } else {
            self.state = State::FieldLen;
        }
    }

    /// Collects `n` bytes into scratch across chunks; true when complete (and resets `have`).
    fn gather(&mut self, data: &mut &[u8], n: usize) -> bool {
        let k = (n - self.have).min(data.len());
        self.scratch[self.have..self.have + k].copy_from_slice(&data[..k]);
        self.have += k;
        self.offset += k as u64;
        *data = &data[k..];
        if self.have == n {
            self.have = 0;
            true
        } else {
            false
        }
    }

    fn err(&self, why: &'static str) -> CopyFormatError {
        CopyFormatError { offset: self.offset, why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes rows of optional fields as binary COPY.
    fn encode(rows: &[Vec<Option<&[u8]>>], ext: &[u8]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&(ext.len() as u32).to_be_bytes());
        out.extend_from_slice(ext);
        for r in rows {
            out.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn counts_rows_under_every_chunking() {
        let big = vec![7u8; 300];
        let rows: Vec<Vec<Option<&[u8]>>> = vec![
            vec![Some(b"abc"), None, Some(b"")],
            vec![],
            vec![Some(&big), Some(b"\xff\xff\xff\xff")],
        ];
        for ext in [&b""[..], &b"xyz"[..]] {
            let data = encode(&rows, ext);
            for chunk in 1..data.len() {
                let mut c = RowCounter::new();
                for piece in data.chunks(chunk) {
                    c.feed(piece).unwrap();
                }
                assert_eq!(c.finish().unwrap(), 3, "chunk size {chunk}");
                assert_eq!(c.bytes(), data.len() as u64);
            }
        }
    }

    #[test]
    fn rejects_truncation_garbage_and_trailing_data() {
        let data = encode(&[vec![Some(b"abc")]], b"");
        let mut c = RowCounter::new();
        c.feed(&data[..data.len() - 1]).unwrap();
        assert!(c.finish().is_err());
        let mut c = RowCounter::new();
        assert!(c.feed(b"PGCOPY\nxxxxxxxxxxxxxxxxxx").is_err());
        let mut c = RowCounter::new();
        let mut extra = data.clone();
        extra.push(0);
        assert!(c.feed(&extra).is_err());
        let mut bad = data.clone();
        bad[19..21].copy_from_slice(&(-5i16).to_be_bytes());
        assert!(RowCounter::new().feed(&bad).is_err());
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: xorshift bytes after a valid header.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut data = encode(&[], b"")[..HEADER_LEN].to_vec();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.push(x as u8);
            }
            let mut c = RowCounter::new();
            let _ = c.feed(&data);
            let _ = c.finish();
        }
    }
}
