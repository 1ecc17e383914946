//! The embedded broker's TLS listener (`--mqtts-listen`): the handshake (rustls, through
//! tokio-rustls), and the identity of a client that presented a certificate the client CA
//! signed: the certificate subject's common name (CN), which `principal()` returns and the
//! ACL's `user` lines and `%u` match.

/// A listener's rules for its clients.
#[derive(Debug, Clone, Copy)]
pub struct ListenerOptions {
    /// Whether a client with no username (and, on TLS, no certificate) may connect.
    pub allow_anonymous: bool,
    /// TLS with client certificates: the client id must be the certificate's CN.
    pub require_client_id: bool,
}

/// The common name of a DER certificate's subject; `None` when it has none or the
/// certificate cannot be read.
pub fn common_name(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    //   serialNumber, signature, issuer, validity, subject, ... }, ... }
    let (cert, _) = element(der, 0x30)?;
    let (tbs, _) = element(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = skip(rest)?;
    }
    for _ in 0..4 {
        // serialNumber, signature, issuer, validity
        rest = skip(rest)?;
    }
    let (mut subject, _) = element(rest, 0x30)?;
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
    while !subject.is_empty() {
        let (mut set, after) = element(subject, 0x31)?;
        subject = after;
        while !set.is_empty() {
            let (pair, after) = element(set, 0x30)?;
            set = after;
            let (oid, value) = element(pair, 0x06)?;
            if oid == [0x55, 0x04, 0x03] {
                let (tag, len, header) = header(value)?;
                let bytes = value.get(header..header + len)?;
                return match tag {
                    // UTF8String, PrintableString, IA5String, TeletexString
                    0x0C | 0x13 | 0x16 | 0x14 => String::from_utf8(bytes.to_vec()).ok(),
                    _ => None,
                };
            }
        }
    }
    None
}

/// A DER element's tag, content length and header length.
fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    if first < 0x80 {
        return Some((tag, usize::from(first), 2));
    }
    let n = usize::from(first & 0x7F);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*b.get(2 + i)?);
    }
    Some((tag, len, 2 + n))
}

/// The content of the element at the start of `b`, which must have tag `tag`, and what
/// follows it.
fn element(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, len, h) = header(b)?;
    if t != tag {
        return None;
    }
    let end = h.checked_add(len)?;
    Some((b.get(h..end)?, b.get(end..)?))
}

/// What follows the element at the start of `b`.
fn skip(b: &[u8]) -> Option<&[u8]> {
    let (_, len, h) = header(b)?;
    b.get(h.checked_add(len)?..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn der(b64: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    #[test]
    fn the_subjects_common_name_is_the_identity() {
        // openssl req -x509 -newkey ec ... -subj "/O=weir tests/CN=device-42"
        let cert = der(
            "MIIBqDCCAU2gAwIBAgIUQMBtr+kFAlVrMGbaYV1l/Q3dQ6IwCgYIKoZIzj0EAwIwKTETMBEGA1UECgwKd2VpciB0ZXN0czESMBAGA1UEAwwJZGV2aWNlLTQyMB4XDTI2MTIwNjE5NTAyM1oXDTM2MTIwMzE5NTAyM1owKTETMBEGA1UECgwKd2VpciB0ZXN0czESMBAGA1UEAwwJZGV2aWNlLTQyMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAETlb9zDTPwFqVVHI/U3tajd0GfZeWCsHWFwpiUEObTW2BlR2y+8tz18/hIZVADqdnTqsWEuENdDJ8AQFyPY2D9qNTMFEwHQYDVR0OBBYEFBdpFQWVZOri4QTYoEqk/HjxFOuPMB8GA1UdIwQYMBaAFBdpFQWVZOri4QTYoEqk/HjxFOuPMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSQAwRgIhANNxXam66RC2EQICObnSCxNC9eSptO4P1zrNZjRFZzuRAiEAkHEvGB+5kK8q6PNUcYL7aGKRLzhGAfPBmVqOc9EpCr8=",
        );
        assert_eq!(common_name(&cert).as_deref(), Some("device-42"));
        // -subj "/O=no common name"
        let none = der(
            "MIIBhjCCAS2gAwIBAgIUPI+8dO5YqbY5o0JfHU0QwOO1OGgwCgYIKoZIzj0EAwIwGTEXMBUGA1UECgwObm8gY29tbW9uIG5hbWUwHhcNMjYxMjA2MTk1MDIzWhcNMzYxMjAzMTk1MDIzWjAZMRcwFQYDVQQKDA5ubyBjb21tb24gbmFtZTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABApCW0zcgqduVE77JMegbMQfc474b611ZX7+G9dbq9I1Ss3aOUqYxfQVhCh5Oe8P3oz4TGOCz5OhSUIlJkAbQSejUzBRMB0GA1UdDgQWBBRjag1xcZQzQ6CRdp6P50drf/fy/TAfBgNVHSMEGDAWgBRjag1xcZQzQ6CRdp6P50drf/fy/TAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIFmD0Dvc1y1yL7z1+FytNSEWqcim03BnRJTjMDRxjr9aAiBhGC0jpDq5YSayBMKAOEp7Cu/7xMYd47+bFy9mqIazYg==",
        );
        assert_eq!(common_name(&none), None);
        // Truncated or garbage input is no identity, not a panic.
        for n in 0..cert.len() {
            let _ = common_name(&cert[..n]);
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(common_name(b""), None);
    }
}
