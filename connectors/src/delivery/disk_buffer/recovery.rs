//! What a disk buffer finds at open: the segments earlier runs left, adopted after a check
//! of every frame. A torn frame at the end of a segment (a crash mid-append) is cut off; a
//! corrupt stretch inside one is moved to `<segment>.corrupt` and counted, and the frames
//! around it are kept.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::frame::{decode, whole_frame};
use super::segment::{Segment, cursor_path, read_cursor, remove_segment};
use crate::delivery::owned_files::claim;

/// The most bytes checksummed while looking past one corrupt stretch of a segment.
const RESYNC_WORK: u64 = 256 * 1024 * 1024;

/// What earlier runs left in a buffer directory: the segments no sink of this process
/// claims, oldest first, with what they hold.
pub(super) struct Adopted {
    pub segments: VecDeque<Segment>,
    /// Bytes not yet delivered, over all segments.
    pub bytes: u64,
    /// Outputs not yet delivered.
    pub count: u64,
    /// Corrupt stretches found (and set aside).
    pub corrupt_regions: u64,
}

/// Claims and checks the segments in `dir` that no sink of this process holds: a torn
/// frame at the end is cut off, corrupt stretches are set aside ([`repair`]), and a segment
/// with nothing left to deliver is removed.
pub(super) async fn adopt(dir: &Path) -> std::io::Result<Adopted> {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await?;
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
    Ok(Adopted {
        segments,
        bytes,
        count,
        corrupt_regions,
    })
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
