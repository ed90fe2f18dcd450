//! The server name of a TLS ClientHello, read without terminating TLS (for
//! PASSTHROUGH gateway listeners). Pure: bytes in, a verdict out; the
//! caller keeps the bytes and forwards them unchanged.
//!
//! The ClientHello is one handshake message (RFC 8446 4.1.2), which may be
//! split over several TLS records; `server_name` is extension 0 (RFC 6066
//! 3). Everything is bounds-checked: any length that points past what was
//! received is either "need more" (the message is not complete yet) or
//! "not TLS" (it cannot be a ClientHello).

/// The most bytes read while waiting for a complete ClientHello: a record's
/// largest payload plus its header. Real ClientHellos are well under it
/// (post-quantum key shares make them about 1.8 KiB).
pub const MAX_HELLO: usize = 16384 + 5;

#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// The ClientHello is not complete yet: read more.
    NeedMore,
    /// A complete ClientHello, with its SNI host name (lowercase, no
    /// trailing dot) if it has one.
    Sni(Option<String>),
    /// Not a TLS ClientHello.
    NotTls,
}

const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// Read `buf` (what the client sent so far) as the start of a TLS
/// connection.
pub fn client_hello(buf: &[u8]) -> Hello {
    // Gather the handshake bytes from consecutive handshake records.
    let mut hs = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return if rest.is_empty() || plausible_header(rest) {
                Hello::NeedMore
            } else {
                Hello::NotTls
            };
        }
        if !plausible_header(rest) {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Hello::NotTls;
        }
        let Some(payload) = rest.get(5..5 + len) else {
            return Hello::NeedMore;
        };
        hs.extend_from_slice(payload);
        rest = &rest[5 + len..];
        if hs.len() >= 4 {
            if hs[0] != HANDSHAKE_CLIENT_HELLO {
                return Hello::NotTls;
            }
            let body_len =
                (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
            if body_len > MAX_HELLO {
                return Hello::NotTls;
            }
            if hs.len() >= 4 + body_len {
                return match server_name(&hs[4..4 + body_len]) {
                    Some(sni) => Hello::Sni(sni),
                    None => Hello::NotTls,
                };
            }
        }
    }
}

/// A handshake record of TLS 1.0-1.3 (the record version of a ClientHello
/// is 3.1 for compatibility, 3.0 from some old clients).
fn plausible_header(h: &[u8]) -> bool {
    h[0] == RECORD_HANDSHAKE && h.get(1).is_none_or(|v| *v == 3) && h.get(2).is_none_or(|v| *v <= 4)
}

/// A cursor over a byte slice whose reads fail past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a length prefix of `width` bytes (1 or 2).
    fn vec(&mut self, width: usize) -> Option<&'a [u8]> {
        let n = if width == 1 {
            usize::from(self.u8()?)
        } else {
            usize::from(self.u16()?)
        };
        self.take(n)
    }
}

/// The ClientHello body's SNI: `Some(None)` when it has none, `None` when
/// the body is malformed.
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec(1)?; // legacy_session_id
    r.vec(2)?; // cipher_suites
    r.vec(1)?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let mut exts = Reader(r.vec(2)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec(2)?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        let mut list = Reader(Reader(data).vec(2)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec(2)?;
            if name_type == NAME_TYPE_HOST {
                let name = std::str::from_utf8(name).ok()?;
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    return None;
                }
                return Some(Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a real client (rustls) writes it, for `name`.
    fn real_hello(name: &str) -> Vec<u8> {
        use std::sync::Arc;
        let roots = rustls::RootCertStore::empty();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut c =
            rustls::ClientConnection::new(Arc::new(cfg), name.to_string().try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_sni_of_a_real_client_hello() {
        let h = real_hello("Shop.Example.Test");
        assert_eq!(
            client_hello(&h),
            Hello::Sni(Some("shop.example.test".into()))
        );
        // Every prefix is incomplete, never a wrong answer.
        for n in 0..h.len() {
            assert_eq!(
                client_hello(&h[..n]),
                Hello::NeedMore,
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn a_hello_split_over_records_is_reassembled() {
        let h = real_hello("a.example.test");
        let body = &h[5..];
        let (a, b) = body.split_at(40);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[22, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(
            client_hello(&two),
            Hello::Sni(Some("a.example.test".into()))
        );
    }

    #[test]
    fn an_ip_address_has_no_sni_and_other_protocols_are_not_tls() {
        // rustls sends no SNI for an IP address.
        let h = real_hello("10.0.0.1");
        assert_eq!(client_hello(&h), Hello::Sni(None));
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n\r\n"), Hello::NotTls);
        assert_eq!(client_hello(b"\x16\x03\x01\x00\x00"), Hello::NotTls);
        // A handshake that is not a ClientHello (ServerHello, type 2).
        assert_eq!(client_hello(&[22, 3, 3, 0, 4, 2, 0, 0, 0]), Hello::NotTls);
    }

    #[test]
    fn lengths_past_the_message_are_refused_not_trusted() {
        let mut h = real_hello("a.example.test");
        // Corrupt the extensions' total length to claim more than there is.
        let n = h.len();
        for i in 5 + 4 + 34..n - 2 {
            let mut x = h.clone();
            x[i] = 0xff;
            x[i + 1] = 0xff;
            // Whatever it says, it never panics or reads out of bounds.
            let _ = client_hello(&x);
        }
        h.truncate(n - 1);
        assert_eq!(client_hello(&h), Hello::NeedMore);
    }
}
