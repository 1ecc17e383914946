//! Journals of JSON lines, as the local store and an earlier weir's rule store write
//! them: read back after a crash.

use std::path::Path;

use anyhow::Context;

/// The bytes of `path`, or none when it is not there.
pub fn read_if_there(path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// What replaying a journal found.
pub struct Replayed {
    /// The bytes up to the end of the last whole line.
    pub complete: usize,
    /// Lines that could not be read.
    pub corrupt: u64,
}

/// Applies each whole line of a journal. A crash can tear the last line, whose change was
/// never answered: it is dropped (and logged). A damaged line (a damaged disk, an edit by
/// hand) loses its one change, and the changes after it, answered too, are kept; the
/// journal is then kept aside for inspection.
pub fn replay_journal<L: serde::de::DeserializeOwned>(
    journal: &[u8],
    path: &Path,
    mut apply: impl FnMut(L),
) -> anyhow::Result<Replayed> {
    let complete = journal
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let mut corrupt = 0;
    for (i, line) in journal[..complete].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(l) => apply(l),
            Err(e) => {
                corrupt += 1;
                tracing::error!(
                    journal = %path.display(),
                    line = i + 1,
                    error = %e,
                    "a line of the journal is corrupt: its change is lost, the others are kept"
                );
            }
        }
    }
    if corrupt > 0 {
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".corrupt-{}", weir_engine::now_ms()));
        std::fs::write(&aside, journal).with_context(|| {
            format!(
                "cannot keep the corrupt journal as {}",
                Path::new(&aside).display()
            )
        })?;
        tracing::error!(kept = %Path::new(&aside).display(), "the corrupt journal is kept for inspection");
    } else if complete < journal.len() {
        tracing::warn!(journal = %path.display(), "dropping a torn last line of the journal");
    }
    Ok(Replayed { complete, corrupt })
}
