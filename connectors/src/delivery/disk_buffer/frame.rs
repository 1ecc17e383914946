//! The frame format of buffer segments: one buffered output as `u32 length, u32 crc32,
//! body`, the body holding the output, its source message and when it was buffered.

use std::sync::Arc;

use bytes::Bytes;
use weir_engine::Message;

use crate::delivery::output::Delivery;

/// One buffered output.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub delivery: Delivery,
    /// When the output was first buffered (ms since the epoch): the retry deadline counts
    /// from here.
    pub buffered_at_ms: i64,
    /// Size of its frame on disk.
    pub(super) frame_len: u64,
}

/// The length of the whole, intact frame at the start of `data`, if there is one.
pub(super) fn whole_frame(data: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    let body = data.get(8..8 + len)?;
    (crc32fast::hash(body) == crc).then_some(8 + len)
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

fn put_opt(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_bytes(buf, s.as_bytes()),
        None => buf.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

/// One frame: header and body.
pub(super) fn encode(d: &Delivery, buffered_at_ms: i64) -> Vec<u8> {
    let m = &d.source;
    let mut body = Vec::with_capacity(64 + d.payload.len() + m.payload.len() + m.topic.len());
    body.extend_from_slice(&buffered_at_ms.to_le_bytes());
    body.extend_from_slice(&m.received_at_ms.to_le_bytes());
    put_bytes(&mut body, m.topic.as_bytes());
    put_opt(&mut body, m.client_id.as_deref());
    put_opt(&mut body, m.principal.as_deref());
    put_opt(&mut body, m.source_ip.as_deref());
    put_bytes(&mut body, &m.payload);
    put_bytes(&mut body, &d.payload);
    body.extend_from_slice(&(d.params.len() as u32).to_le_bytes());
    for p in d.params.iter() {
        put_opt(&mut body, p.as_deref());
    }
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn opt(&mut self) -> Option<Option<String>> {
        let n = self.u32()?;
        if n == u32::MAX {
            return Some(None);
        }
        Some(Some(
            String::from_utf8(self.take(n as usize)?.to_vec()).ok()?,
        ))
    }
}

pub(super) fn decode(body: &[u8]) -> Option<(Delivery, i64)> {
    let mut r = Reader(body);
    let buffered_at_ms = r.i64()?;
    let received_at_ms = r.i64()?;
    let topic = String::from_utf8(r.bytes()?.to_vec()).ok()?;
    let client_id = r.opt()?;
    let principal = r.opt()?;
    let source_ip = r.opt()?;
    let msg_payload = Bytes::copy_from_slice(r.bytes()?);
    let payload = Bytes::copy_from_slice(r.bytes()?);
    let n = r.u32()? as usize;
    let mut params = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        params.push(r.opt()?);
    }
    let source = Message {
        topic,
        client_id,
        principal,
        source_ip,
        payload: msg_payload,
        received_at_ms,
        seq: weir_engine::next_seq(),
        // Not kept on disk: a buffered output's templates were rendered before it was
        // written, and the error action reports no MQTT 5 properties.
        properties: None,
        ack: Default::default(),
        will: false,
    };
    Some((
        Delivery {
            payload,
            params: Arc::new(params),
            source: Arc::new(source),
        },
        buffered_at_ms,
    ))
}
