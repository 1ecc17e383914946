//! An action's disk buffer: the outputs its sink did not take, in order, on disk.
//!
//! When a delivery fails with a retry-worthy error, the worker appends it here and the
//! source message is released (and, with an external broker, acknowledged): from then on
//! the disk buffer is what holds it. While the buffer is not empty every new output is appended
//! behind it, so the sink sees outputs in the order the rule produced them; the worker
//! drains the head with backoff when the sink answers again.
//!
//! Layout: `<dir>/<owner>-<seq>.seg` segment files of length-prefixed, checksummed
//! frames (`u32 length, u32 crc32, body`), written append-only and synced after each
//! append, and `<dir>/<owner>-<seq>.seg.read` holding how many bytes of that segment are
//! delivered. A consumed segment is deleted. `owner` is the worker's start time and a
//! counter, unique per worker; a worker adopts the segments of workers of earlier
//! processes (a restart after a crash or a shutdown) and drains them first. A torn frame at
//! the end of a segment (a crash mid-append) is cut off. A corrupt stretch inside a
//! segment (a frame whose checksum or content is wrong, with whole frames after it) is
//! reported as an error and counted ([`DiskBuffer::corrupt_regions`]); its bytes are moved
//! to `<segment>.corrupt` for inspection, and the frames around it are kept.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use weir_engine::Message;

use super::Delivery;
use super::owned_files::{claim, claimed, release, unique_owner};

/// The most bytes checksummed while looking past one corrupt stretch of a segment.
const RESYNC_WORK: u64 = 256 * 1024 * 1024;

/// A segment is closed and a new one started beyond this size.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// One buffered output.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub delivery: Delivery,
    /// When the output was first buffered (ms since the epoch): the retry deadline counts
    /// from here.
    pub buffered_at_ms: i64,
    /// Size of its frame on disk.
    frame_len: u64,
}

struct Segment {
    path: PathBuf,
    /// Bytes of the segment already delivered (read position).
    read: u64,
    /// Bytes written (the end of the last whole frame).
    len: u64,
}

pub struct DiskBuffer {
    dir: PathBuf,
    owner: String,
    next_seq: u64,
    /// Oldest first; the last one is the one appended to.
    segments: VecDeque<Segment>,
    writer: Option<tokio::fs::File>,
    /// Bytes not yet delivered, over all segments.
    bytes: u64,
    /// Outputs not yet delivered.
    count: u64,
    max_bytes: u64,
    /// Frames read from the head but not yet popped.
    peeked: VecDeque<Buffered>,
    /// Corrupt stretches found in the segments adopted at open.
    corrupt_regions: u64,
}

impl DiskBuffer {
    /// Opens the disk buffer in `dir`, adopting unclaimed segments that earlier processes left.
    pub async fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(&dir).await?;
        let owner = unique_owner();
        let mut found: Vec<PathBuf> = Vec::new();
        let mut entries = tokio::fs::read_dir(&dir).await?;
        while let Some(e) = entries.next_entry().await? {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "seg") {
                found.push(p);
            }
        }
        found.sort();
        let mut segments = VecDeque::new();
        let mut bytes = 0;
        let mut count = 0;
        let mut corrupt_regions = 0;
        found.retain(|p| claim(p));
        for path in found {
            let mut read = read_cursor(&path).await;
            let data = tokio::fs::read(&path).await?;
            let scan = scan(&data, read);
            let (len, frames) = (scan.end, scan.frames);
            let file_len = data.len() as u64;
            if !scan.corrupt.is_empty() {
                corrupt_regions += scan.corrupt.len() as u64;
                read = repair(&path, &data, read, &scan).await?;
            } else if len < file_len {
                tracing::warn!(segment = %path.display(), kept = len, size = file_len, "cutting a torn frame off a buffer segment");
                let f = tokio::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .await?;
                f.set_len(len).await?;
            }
            let len = if scan.corrupt.is_empty() {
                len
            } else {
                scan.kept_bytes
            };
            if frames == 0 {
                remove_segment(&path).await;
                continue;
            }
            tracing::info!(segment = %path.display(), outputs = frames, "adopted a buffer segment left by an earlier run");
            bytes += len - read;
            count += frames;
            segments.push_back(Segment { path, read, len });
        }
        Ok(Self {
            dir,
            owner,
            next_seq: 0,
            segments,
            writer: None,
            bytes,
            count,
            max_bytes,
            peeked: VecDeque::new(),
            corrupt_regions,
        })
    }

    /// Corrupt stretches found in the segments adopted at open: outputs lost to a damaged
    /// disk or file, reported as errors when found.
    pub fn corrupt_regions(&self) -> u64 {
        self.corrupt_regions
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes on disk not yet delivered.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Outputs not yet delivered.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// How many of `sizes` (encoded frames, in order) fit under the limit.
    fn room_for(&self, frames: &[Vec<u8>]) -> usize {
        let mut total = self.bytes;
        frames
            .iter()
            .take_while(|f| {
                total += f.len() as u64;
                total <= self.max_bytes
            })
            .count()
    }

    /// Appends outputs and syncs them to disk. Returns how many were taken: those beyond
    /// the size limit are not (the caller dead-letters them).
    pub async fn append(&mut self, items: &[(&Delivery, i64)]) -> std::io::Result<usize> {
        let frames: Vec<Vec<u8>> = items.iter().map(|(d, at)| encode(d, *at)).collect();
        let n = self.room_for(&frames);
        if n == 0 {
            return Ok(0);
        }
        let need_new = match self.segments.back() {
            None => true,
            Some(s) => self.writer.is_none() || s.len >= SEGMENT_BYTES,
        };
        if need_new {
            self.next_seq += 1;
            let path = self
                .dir
                .join(format!("{}-{:06}.seg", self.owner, self.next_seq));
            claim(&path);
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await?;
            self.writer = Some(f);
            self.segments.push_back(Segment {
                path,
                read: 0,
                len: 0,
            });
        }
        let w = self.writer.as_mut().expect("opened above");
        let mut buf = Vec::with_capacity(frames[..n].iter().map(Vec::len).sum());
        for f in &frames[..n] {
            buf.extend_from_slice(f);
        }
        w.write_all(&buf).await?;
        w.sync_data().await?;
        let seg = self.segments.back_mut().expect("pushed above");
        seg.len += buf.len() as u64;
        self.bytes += buf.len() as u64;
        self.count += n as u64;
        Ok(n)
    }

    /// The first `max` outputs, oldest first, without removing them.
    pub async fn peek(&mut self, max: usize) -> std::io::Result<Vec<Buffered>> {
        let mut skip: u64 = self.peeked.iter().map(|s| s.frame_len).sum();
        let mut seg_index = 0;
        while self.peeked.len() < max && seg_index < self.segments.len() {
            let seg = &self.segments[seg_index];
            // Frames already peeked from this segment are skipped.
            let start = seg.read + skip.min(seg.len - seg.read);
            skip = skip.saturating_sub(seg.len - seg.read);
            if start >= seg.len {
                seg_index += 1;
                continue;
            }
            let want = max - self.peeked.len();
            let more = read_frames(&seg.path, start, seg.len, want).await?;
            if more.is_empty() {
                seg_index += 1;
                continue;
            }
            self.peeked.extend(more);
            seg_index += 1;
        }
        Ok(self.peeked.iter().take(max).cloned().collect())
    }

    /// Removes the first `n` outputs (delivered or dead-lettered), as [`Self::peek`]
    /// returned them.
    pub async fn pop(&mut self, n: usize) -> std::io::Result<()> {
        let mut remaining = n;
        while remaining > 0 {
            let Some(s) = self.peeked.pop_front() else {
                break;
            };
            remaining -= 1;
            let seg = self
                .segments
                .front_mut()
                .expect("a peeked frame has a segment");
            seg.read += s.frame_len;
            self.bytes -= s.frame_len;
            self.count -= 1;
            if seg.read >= seg.len {
                let done = self.segments.pop_front().expect("checked above");
                let is_writer = self.segments.is_empty() && self.writer.is_some();
                if is_writer {
                    self.writer = None;
                }
                remove_segment(&done.path).await;
            }
        }
        if let Some(seg) = self.segments.front()
            && seg.read > 0
        {
            write_cursor(&seg.path, seg.read).await?;
        }
        Ok(())
    }

    /// Releases this worker's claim on its segments, so that a later worker of this
    /// process (the same rule started again) can adopt them.
    pub fn release(self) {
        let mut claimed = claimed();
        for s in &self.segments {
            claimed.remove(&s.path);
        }
    }
}

fn cursor_path(seg: &Path) -> PathBuf {
    let mut p = seg.as_os_str().to_owned();
    p.push(".read");
    PathBuf::from(p)
}

async fn read_cursor(seg: &Path) -> u64 {
    tokio::fs::read_to_string(cursor_path(seg))
        .await
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Records how far a segment is delivered. Not synced: after a machine crash the worst
/// case is delivering some outputs again, which at-least-once allows.
async fn write_cursor(seg: &Path, read: u64) -> std::io::Result<()> {
    let path = cursor_path(seg);
    let tmp = path.with_extension("read.tmp");
    tokio::fs::write(&tmp, read.to_string()).await?;
    tokio::fs::rename(&tmp, &path).await
}

/// Whether `dir` holds buffer segments (outputs an earlier run could not deliver).
pub fn has_segments(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "seg"))
    })
}

async fn remove_segment(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await {
        tracing::warn!(segment = %path.display(), error = %e, "cannot remove a delivered buffer segment");
    }
    let _ = tokio::fs::remove_file(cursor_path(path)).await;
    release(path);
}

/// What a segment holds from its read position.
struct Scan {
    /// The end of the last whole frame.
    end: u64,
    /// Whole frames.
    frames: u64,
    /// Corrupt stretches (start, end) with whole frames after them.
    corrupt: Vec<(u64, u64)>,
    /// Bytes of the whole frames.
    kept_bytes: u64,
}

/// Walks the frames of `data` from `from`. A stretch that is not a whole, decodable frame
/// but is followed by one is corrupt, and the walk goes on after it; one followed by none
/// is a torn tail.
fn scan(data: &[u8], from: u64) -> Scan {
    let mut s = Scan {
        end: from,
        frames: 0,
        corrupt: Vec::new(),
        kept_bytes: 0,
    };
    // Bytes checksummed while looking for the next whole frame after a corrupt stretch:
    // a hostile file of frame headers that each claim a large body would otherwise cost
    // the square of its size.
    let work = std::cell::Cell::new(0u64);
    let good = |at: usize| -> Option<usize> {
        let rest = data.get(at..)?;
        let claimed = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?) as u64;
        if 8 + claimed <= rest.len() as u64 {
            work.set(work.get() + claimed); // what whole_frame checksums
        }
        let len = whole_frame(rest)?;
        decode(&data[at + 8..at + len]).map(|_| len)
    };
    let mut pos = (from as usize).min(data.len());
    while pos < data.len() {
        if let Some(len) = good(pos) {
            pos += len;
            s.frames += 1;
            s.kept_bytes += len as u64;
            s.end = pos as u64;
            continue;
        }
        work.set(0);
        let next = (pos + 1..data.len())
            .take_while(|_| work.get() <= RESYNC_WORK)
            .find(|&at| good(at).is_some());
        match next {
            Some(next) => {
                s.corrupt.push((pos as u64, next as u64));
                pos = next;
            }
            // Too much to search: the rest is reported as one corrupt stretch.
            None if work.get() > RESYNC_WORK => {
                s.corrupt.push((pos as u64, data.len() as u64));
                break;
            }
            None => break,
        }
    }
    s
}

/// Rewrites a segment without its corrupt stretches (kept, for inspection, in
/// `<segment>.corrupt`) and its torn tail, and reports the loss. Returns the new read
/// position (0: the rewritten segment holds only what is still to deliver).
async fn repair(path: &Path, data: &[u8], read: u64, scan: &Scan) -> std::io::Result<u64> {
    let mut kept = Vec::with_capacity(scan.kept_bytes as usize);
    let mut lost = Vec::new();
    let mut pos = read as usize;
    for &(start, end) in &scan.corrupt {
        kept.extend_from_slice(&data[pos..start as usize]);
        lost.extend_from_slice(&data[start as usize..end as usize]);
        pos = end as usize;
    }
    // Whole frames after the last stretch, if the stretch did not run to the end.
    if pos < scan.end as usize {
        kept.extend_from_slice(&data[pos..scan.end as usize]);
    }
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    let aside = PathBuf::from(aside);
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&aside)
        .await?;
    f.write_all(&lost).await?;
    f.sync_data().await?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = tokio::fs::File::create(&tmp).await?;
    f.write_all(&kept).await?;
    f.sync_data().await?;
    tokio::fs::rename(&tmp, path).await?;
    let _ = tokio::fs::remove_file(cursor_path(path)).await;
    tracing::error!(
        segment = %path.display(),
        regions = scan.corrupt.len(),
        bytes = lost.len(),
        kept = scan.frames,
        moved_to = %aside.display(),
        "a disk buffer segment is corrupt: the outputs in its damaged stretches are lost; \
         the outputs around them are kept"
    );
    Ok(0)
}

/// The length of the whole, intact frame at the start of `data`, if there is one.
fn whole_frame(data: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    let body = data.get(8..8 + len)?;
    (crc32fast::hash(body) == crc).then_some(8 + len)
}

async fn read_frames(
    path: &Path,
    start: u64,
    end: u64,
    max: usize,
) -> std::io::Result<Vec<Buffered>> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(std::io::SeekFrom::Start(start)).await?;
    // Read in chunks of up to 4 MiB; frames are usually small.
    let chunk = (end - start).min(4 * 1024 * 1024) as usize;
    let mut data = vec![0u8; chunk];
    f.read_exact(&mut data).await?;
    let mut out = Vec::new();
    let mut pos = 0;
    while out.len() < max {
        let Some(len) = whole_frame(&data[pos..]) else {
            break;
        };
        let (delivery, buffered_at_ms) = decode(&data[pos + 8..pos + len]).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: undecodable frame at {}",
                    path.display(),
                    start as usize + pos
                ),
            )
        })?;
        out.push(Buffered {
            delivery,
            buffered_at_ms,
            frame_len: len as u64,
        });
        pos += len;
    }
    if out.is_empty() && pos == 0 && chunk > 0 && (end - start) as usize > chunk {
        // One frame larger than the chunk: read it whole.
        let len = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes")) as u64;
        let mut f = tokio::fs::File::open(path).await?;
        f.seek(std::io::SeekFrom::Start(start)).await?;
        let mut whole = vec![0u8; (8 + len) as usize];
        f.read_exact(&mut whole).await?;
        if let Some((delivery, buffered_at_ms)) = decode(&whole[8..]) {
            out.push(Buffered {
                delivery,
                buffered_at_ms,
                frame_len: 8 + len,
            });
        }
    }
    Ok(out)
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
fn encode(d: &Delivery, buffered_at_ms: i64) -> Vec<u8> {
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

fn decode(body: &[u8]) -> Option<(Delivery, i64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(i: usize) -> Delivery {
        let mut m = Message::new(format!("plant/{i}"), format!("{{\"i\":{i}}}"));
        m.client_id = Some("dev-1".to_owned());
        Delivery {
            payload: Bytes::from(format!("{{\"out\":{i}}}")),
            params: Arc::new(vec![Some(format!("p{i}")), None]),
            source: Arc::new(m),
        }
    }

    #[tokio::test]
    async fn outputs_come_back_in_order_with_everything_they_carried() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("buffer");
        let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
        let ds: Vec<Delivery> = (0..10).map(delivery).collect();
        let items: Vec<(&Delivery, i64)> = ds.iter().map(|d| (d, 42)).collect();
        assert_eq!(s.append(&items).await.unwrap(), 10);
        assert_eq!(s.len(), 10);
        let head = s.peek(3).await.unwrap();
        assert_eq!(head.len(), 3);
        assert_eq!(head[0].delivery.payload, ds[0].payload);
        assert_eq!(head[2].delivery.params, ds[2].params);
        assert_eq!(head[1].delivery.source.topic, "plant/1");
        assert_eq!(head[1].delivery.source.client_id.as_deref(), Some("dev-1"));
        assert_eq!(head[1].buffered_at_ms, 42);
        s.pop(3).await.unwrap();
        let next = s.peek(100).await.unwrap();
        assert_eq!(next.len(), 7);
        assert_eq!(next[0].delivery.payload, ds[3].payload);
        s.pop(7).await.unwrap();
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        // The consumed segment is gone.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_restart_adopts_what_was_left_and_cuts_a_torn_frame() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("buffer");
        let ds: Vec<Delivery> = (0..5).map(delivery).collect();
        let seg_path;
        {
            let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
            let items: Vec<(&Delivery, i64)> = ds.iter().map(|d| (d, 7)).collect();
            s.append(&items).await.unwrap();
            s.peek(2).await.unwrap();
            s.pop(2).await.unwrap();
            seg_path = s.segments[0].path.clone();
            s.release();
        }
        // A crash in the middle of an append leaves half a frame.
        let mut data = std::fs::read(&seg_path).unwrap();
        data.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&seg_path, &data).unwrap();

        let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
        assert_eq!(s.len(), 3);
        let rest = s.peek(10).await.unwrap();
        let got: Vec<&Bytes> = rest.iter().map(|r| &r.delivery.payload).collect();
        assert_eq!(got, vec![&ds[2].payload, &ds[3].payload, &ds[4].payload]);
        // New outputs go behind the adopted ones.
        let extra = delivery(99);
        s.append(&[(&extra, 8)]).await.unwrap();
        s.pop(3).await.unwrap();
        let last = s.peek(10).await.unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].delivery.payload, extra.payload);
    }

    /// A damaged stretch inside a segment (a flipped bit, a zeroed block) loses only the
    /// outputs in it: it is reported and counted, its bytes are kept aside, and the outputs
    /// before and after it are delivered in order.
    #[tokio::test]
    async fn a_corrupt_frame_loses_only_itself_and_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("buffer");
        let ds: Vec<Delivery> = (0..6).map(delivery).collect();
        let one = encode(&ds[0], 7).len();
        let seg_path;
        {
            let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
            let items: Vec<(&Delivery, i64)> = ds.iter().map(|d| (d, 7)).collect();
            s.append(&items).await.unwrap();
            s.peek(1).await.unwrap();
            s.pop(1).await.unwrap();
            seg_path = s.segments[0].path.clone();
            s.release();
        }
        // Damage the body of output 2 (a bit flip) and the length of output 4.
        let mut data = std::fs::read(&seg_path).unwrap();
        data[2 * one + 12] ^= 0x40;
        data[4 * one] = 0xff;
        std::fs::write(&seg_path, &data).unwrap();

        let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
        assert_eq!(s.corrupt_regions(), 2);
        assert_eq!(s.len(), 3);
        let rest = s.peek(10).await.unwrap();
        let got: Vec<&Bytes> = rest.iter().map(|r| &r.delivery.payload).collect();
        assert_eq!(got, vec![&ds[1].payload, &ds[3].payload, &ds[5].payload]);
        let mut aside = seg_path.as_os_str().to_owned();
        aside.push(".corrupt");
        assert_eq!(std::fs::read(PathBuf::from(aside)).unwrap().len(), 2 * one);
        s.pop(3).await.unwrap();
        assert!(s.is_empty());
        // The repaired segment is clean: a later start finds nothing wrong.
        s.release();
        let s = DiskBuffer::open(dir, 1 << 30).await.unwrap();
        assert_eq!((s.corrupt_regions(), s.len()), (0, 0));
    }

    /// A stretch of frame headers that each claim a large body cannot make the search for
    /// the next whole frame take the square of the file's size: past a bound the rest of
    /// the segment is reported as corrupt.
    #[tokio::test]
    async fn a_hostile_segment_is_searched_within_a_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("buffer");
        std::fs::create_dir_all(&dir).unwrap();
        let first = encode(&delivery(1), 7);
        let mut data = first.clone();
        // 1 MiB of headers claiming 512 KiB bodies, then a whole frame.
        for _ in 0..(1 << 18) {
            data.extend_from_slice(&[0x00, 0x00, 0x08, 0x00]);
        }
        data.extend_from_slice(&encode(&delivery(2), 7));
        std::fs::write(dir.join("old-000001.seg"), &data).unwrap();
        let started = std::time::Instant::now();
        let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(s.corrupt_regions(), 1);
        let kept = s.peek(10).await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].delivery.payload, delivery(1).payload);
        let aside = std::fs::read(dir.join("old-000001.seg.corrupt")).unwrap();
        assert_eq!(aside.len(), data.len() - first.len());
    }

    #[tokio::test]
    async fn the_size_limit_refuses_what_does_not_fit() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("buffer");
        let one = encode(&delivery(1), 0).len() as u64;
        let mut s = DiskBuffer::open(dir, one * 3).await.unwrap();
        let ds: Vec<Delivery> = (0..5).map(delivery).collect();
        let items: Vec<(&Delivery, i64)> = ds.iter().map(|d| (d, 0)).collect();
        assert_eq!(s.append(&items).await.unwrap(), 3);
        assert_eq!(s.append(&items[3..]).await.unwrap(), 0);
        assert_eq!(s.bytes(), one * 3);
    }
}
