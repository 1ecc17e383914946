//! MQTT packets as bytes, for tests that act as a device would not: one that reads
//! nothing, lies about lengths or sends garbage. Shared with the broker's fuzz target
//! (`connectors/tests/fuzz_mqtt.rs`).

/// A UTF-8 string field: a two-byte length and the bytes (cut at 65,535).
pub fn str_field(s: &str) -> Vec<u8> {
    let bytes = &s.as_bytes()[..s.len().min(65535)];
    let mut v = (bytes.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

/// A packet of type and flags `kind` whose remaining length says `said` (the body's
/// length, unless the test lies) followed by `body`.
pub fn frame(kind: u8, body: &[u8], said: usize) -> Vec<u8> {
    let mut out = vec![kind];
    let mut len = said;
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// An MQTT 3.1.1 CONNECT with a clean session and a keep-alive of 60 s.
pub fn connect_v4(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend(str_field(client_id));
    frame(0x10, &body, body.len())
}
