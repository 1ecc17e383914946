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

mod frame;
mod recovery;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::PathBuf;

use tokio::io::AsyncWriteExt;

pub use frame::Buffered;
use frame::encode;
pub use segment::has_segments;
use segment::{Segment, read_frames, remove_segment, write_cursor};

use super::Delivery;
use super::owned_files::{claim, claimed, unique_owner};

/// A segment is closed and a new one started beyond this size.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

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
        let adopted = recovery::adopt(&dir).await?;
        Ok(Self {
            dir,
            owner,
            next_seq: 0,
            segments: adopted.segments,
            writer: None,
            bytes: adopted.bytes,
            count: adopted.count,
            max_bytes,
            peeked: VecDeque::new(),
            corrupt_regions: adopted.corrupt_regions,
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
