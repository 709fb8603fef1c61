//! The few wire-format pieces `postgres-protocol` does not provide: frame scanning for forwarding,
//! startup-packet parsing, frontend message bodies the proxy looks into, and backend messages the
//! proxy writes itself. No I/O here: bytes in, values out.
//!
//! A frame is a type byte plus a big-endian `i32` length that counts itself but not the type
//! byte; startup-phase packets have no type byte.

use bytes::{BufMut, BytesMut};
use std::io;

/// Request codes that take the place of a protocol version in startup-phase packets.
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// Largest startup packet accepted (PostgreSQL uses 10,000 bytes too).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Largest regular message accepted from either side (PostgreSQL's own limit is 1 GiB).
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// A message seen by [`Scanner::scan`]: its type byte and, when the whole message was in the
/// buffer, its body (without type byte and length).
#[derive(Debug)]
pub struct Frame<'a> {
    pub tag: u8,
    pub body: Option<&'a [u8]>,
}

/// Walks a byte stream frame by frame without copying it.
///
/// `scan` reports every message whose header is complete. Messages whose body the caller needs
/// (`needs_body(tag)` is true) are reported only once complete; all others are reported at their
/// header and may be forwarded in pieces, the scanner remembering how many bytes of the current
/// message are still to come. That keeps large DataRow / CopyData messages streaming instead of
/// being buffered whole.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Bytes of a pass-through message still to come from the peer.
    skip: usize,
}

impl Scanner {
    /// Scans `buf` from the start; returns how many leading bytes can be forwarded now. The rest
    /// (an incomplete message that needs its body, or an incomplete header) must stay buffered
    /// and be scanned again, from its start, once more bytes arrived.
    pub fn scan(
        &mut self,
        buf: &[u8],
        needs_body: impl Fn(u8) -> bool,
        mut on_frame: impl FnMut(Frame<'_>) -> io::Result<()>,
    ) -> io::Result<usize> {
        let mut pos = 0;
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            pos = n;
            if self.skip > 0 {
                return Ok(pos);
            }
        }
        while buf.len() - pos >= 5 {
            let tag = buf[pos];
            let len = i32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]]);
            if len < 4 || len as usize > MAX_MESSAGE_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("invalid message length {len} for message type {:?}", tag as char),
                ));
            }
            let total = 1 + len as usize;
            let available = buf.len() - pos;
            if available >= total {
                on_frame(Frame {
                    tag,
                    body: Some(&buf[pos + 5..pos + total]),
                })?;
                pos += total;
            } else if needs_body(tag) {
                break;
            } else {
                on_frame(Frame { tag, body: None })?;
                self.skip = total - available;
                pos = buf.len();
            }
        }
        Ok(pos)
    }
}

/// Reads a NUL-terminated string at the start of `buf`; returns it and the rest.
pub fn read_cstr(buf: &[u8]) -> io::Result<(&str, &[u8])> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "missing string terminator"))?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((s, &buf[end + 1..]))
}

/// The parameters of a StartupMessage body (after the protocol version), in the order sent.
pub fn parse_startup_params(mut body: &[u8]) -> io::Result<Vec<(String, String)>> {
    let mut params = Vec::new();
    loop {
        if body.first() == Some(&0) || body.is_empty() {
            return Ok(params);
        }
        let (key, rest) = read_cstr(body)?;
        let (value, rest) = read_cstr(rest)?;
        params.push((key.to_owned(), value.to_owned()));
        body = rest;
    }
}

/// The SQL text of a Query ('Q') body.
pub fn query_text(body: &[u8]) -> Option<&str> {
    read_cstr(body).ok().map(|(s, _)| s)
}

/// The statement name of a Parse ('P') body.
pub fn parse_name(body: &[u8]) -> Option<&str> {
    read_cstr(body).ok().map(|(s, _)| s)
}

/// The variant ('S' statement / 'P' portal) and name of a Close ('C') body.
pub fn close_target(body: &[u8]) -> Option<(u8, &str)> {
    let (&variant, rest) = body.split_first()?;
    read_cstr(rest).ok().map(|(s, _)| (variant, s))
}

/// A SASLInitialResponse ('p') body: mechanism name and initial client data.
pub fn sasl_initial_response(body: &[u8]) -> io::Result<(&str, &[u8])> {
    let (mechanism, rest) = read_cstr(body)?;
    if rest.len() < 4 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated SASLInitialResponse"));
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad SASLInitialResponse data length"));
    }
    Ok((mechanism, data))
}

fn frame(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(buf: &mut BytesMut, s: &str) {
    // NUL bytes cannot be represented: cut there rather than emit a broken frame.
    let s = s.split('\0').next().unwrap_or("");
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    frame(buf, b'R', |b| b.put_i32(0));
}

/// AuthenticationSASL offering the given mechanisms.
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    frame(buf, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            cstr(b, m);
        }
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// BackendKeyData.
pub fn backend_key_data(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
    frame(buf, b'K', |b| {
        b.put_i32(process_id);
        b.put_i32(secret_key);
    });
}

/// ReadyForQuery.
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    frame(buf, b'Z', |b| b.put_u8(status));
}

/// A Query ('Q') running `sql`, or a Parse ('P') of statement `name` preparing it with no
/// parameter types: what a refused client message is replaced with.
pub fn refusing_message(buf: &mut BytesMut, tag: u8, name: &str, sql: &str) {
    if tag == b'P' {
        frame(buf, b'P', |b| {
            cstr(b, name);
            cstr(b, sql);
            b.put_i16(0);
        });
    } else {
        frame(buf, b'Q', |b| cstr(b, sql));
    }
}

/// NegotiateProtocolVersion: the newest minor version supported and the options not recognised.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unrecognized: &[&str]) {
    frame(buf, b'v', |b| {
        b.put_i32(minor);
        b.put_i32(unrecognized.len() as i32);
        for o in unrecognized {
            cstr(b, o);
        }
    });
}

/// Severity of an ErrorResponse the proxy writes.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    /// The session ends after this error.
    Fatal,
}

/// ErrorResponse with severity, SQLSTATE, message and an optional hint.
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, message: &str, hint: Option<&str>) {
    let sev = match severity {
        Severity::Fatal => "FATAL",
    };
    frame(buf, b'E', |b| {
        b.put_u8(b'S');
        cstr(b, sev);
        b.put_u8(b'V');
        cstr(b, sev);
        b.put_u8(b'C');
        cstr(b, code);
        b.put_u8(b'M');
        cstr(b, message);
        if let Some(hint) = hint {
            b.put_u8(b'H');
            cstr(b, hint);
        }
        b.put_u8(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::backend::Message;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn scans_complete_and_partial_frames() {
        let mut stream = msg(b'Q', b"select 1\0");
        stream.extend(msg(b'S', b""));
        stream.extend(msg(b'Q', b"select 2\0"));
        let cut = stream.len() - 3;
        let mut s = Scanner::default();
        let mut seen = Vec::new();
        let n = s
            .scan(
                &stream[..cut],
                |t| t == b'Q',
                |f| {
                    seen.push((f.tag, f.body.map(|b| b.to_vec())));
                    Ok(())
                },
            )
            .unwrap();
        // The last Query is incomplete and needs its body: not forwardable yet.
        assert_eq!(n, msg(b'Q', b"select 1\0").len() + 5);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1.as_deref(), Some(&b"select 1\0"[..]));
    }

    #[test]
    fn streams_pass_through_messages_in_pieces() {
        let big = vec![7u8; 100];
        let mut stream = msg(b'D', &big);
        stream.extend(msg(b'Z', b"I"));
        let mut s = Scanner::default();
        let mut tags = Vec::new();
        let n1 = s
            .scan(
                &stream[..50],
                |t| t == b'Z',
                |f| {
                    tags.push(f.tag);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(n1, 50);
        let n2 = s
            .scan(
                &stream[50..],
                |t| t == b'Z',
                |f| {
                    tags.push(f.tag);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(n2, stream.len() - 50);
        assert_eq!(tags, vec![b'D', b'Z']);
    }

    #[test]
    fn rejects_bad_length() {
        let mut s = Scanner::default();
        let bad = [b'Q', 0, 0, 0, 2];
        assert!(s.scan(&bad, |_| true, |_| Ok(())).is_err());
    }

    #[test]
    fn written_messages_parse_with_postgres_protocol() {
        let mut buf = BytesMut::new();
        error_response(
            &mut buf,
            Severity::Fatal,
            "28P01",
            "password authentication failed for user \"x\"",
            None,
        );
        backend_key_data(&mut buf, 7, 42);
        ready_for_query(&mut buf, b'I');
        auth_sasl(&mut buf, &["SCRAM-SHA-256"]);
        auth_ok(&mut buf);
        match Message::parse(&mut buf).unwrap().unwrap() {
            Message::ErrorResponse(body) => {
                use fallible_iterator::FallibleIterator;
                let fields: Vec<(u8, String)> = body
                    .fields()
                    .map(|f| Ok((f.type_(), String::from_utf8_lossy(f.value_bytes()).into_owned())))
                    .collect()
                    .unwrap();
                assert!(fields.contains(&(b'C', "28P01".to_owned())));
            }
            _ => panic!("expected ErrorResponse"),
        }
        match Message::parse(&mut buf).unwrap().unwrap() {
            Message::BackendKeyData(k) => assert_eq!((k.process_id(), k.secret_key()), (7, 42)),
            _ => panic!("expected BackendKeyData"),
        }
        match Message::parse(&mut buf).unwrap().unwrap() {
            Message::ReadyForQuery(r) => assert_eq!(r.status(), b'I'),
            _ => panic!("expected ReadyForQuery"),
        }
        match Message::parse(&mut buf).unwrap().unwrap() {
            Message::AuthenticationSasl(s) => {
                use fallible_iterator::FallibleIterator;
                let m: Vec<String> = s.mechanisms().map(|m| Ok(m.to_owned())).collect().unwrap();
                assert_eq!(m, vec!["SCRAM-SHA-256".to_owned()]);
            }
            _ => panic!("expected AuthenticationSasl"),
        }
        assert!(matches!(Message::parse(&mut buf).unwrap().unwrap(), Message::AuthenticationOk));
        assert!(buf.is_empty());
    }

    #[test]
    fn startup_params_and_bodies() {
        let body = b"user\0app\0database\0db\0\0";
        let p = parse_startup_params(body).unwrap();
        assert_eq!(p, vec![("user".into(), "app".into()), ("database".into(), "db".into())]);
        assert_eq!(close_target(b"Sstmt1\0"), Some((b'S', "stmt1")));
        assert_eq!(parse_name(b"s1\0select 1\0\0\0"), Some("s1"));
        let (m, d) = sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x03abc").unwrap();
        assert_eq!((m, d), ("SCRAM-SHA-256", &b"abc"[..]));
    }
}
