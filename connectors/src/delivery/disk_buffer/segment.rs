//! The segment files of a disk buffer and their read cursors: `<owner>-<seq>.seg` holds
//! frames, `<owner>-<seq>.seg.read` how many of its bytes are delivered.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::frame::{Buffered, decode, whole_frame};
use crate::delivery::owned_files::release;

/// One segment file of the buffer.
pub(super) struct Segment {
    pub(super) path: PathBuf,
    /// Bytes of the segment already delivered (read position).
    pub(super) read: u64,
    /// Bytes written (the end of the last whole frame).
    pub(super) len: u64,
}

pub(super) fn cursor_path(seg: &Path) -> PathBuf {
    let mut p = seg.as_os_str().to_owned();
    p.push(".read");
    PathBuf::from(p)
}

pub(super) async fn read_cursor(seg: &Path) -> u64 {
    tokio::fs::read_to_string(cursor_path(seg))
        .await
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Records how far a segment is delivered. Not synced: after a machine crash the worst
/// case is delivering some outputs again, which at-least-once allows.
pub(super) async fn write_cursor(seg: &Path, read: u64) -> std::io::Result<()> {
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

pub(super) async fn remove_segment(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await {
        tracing::warn!(segment = %path.display(), error = %e, "cannot remove a delivered buffer segment");
    }
    let _ = tokio::fs::remove_file(cursor_path(path)).await;
    release(path);
}

pub(super) async fn read_frames(
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
