//! Reading the files a user names (`--model`, `--spec`, `--calib`, `--eval`, `--params`,
//! `--config`, `inspect FILE`): regular files only, checked before the first byte is read, so
//! that a FIFO blocks nothing and `/dev/zero` is not read until memory runs out.

use crate::error::{Error, Result};
use std::path::Path;

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `path` (after following symlinks) is a regular file.
pub fn check_regular_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.is_file() {
        return Ok(());
    }
    let what = if meta.is_dir() {
        "a folder"
    } else {
        "not a regular file (a FIFO, socket or device)"
    };
    Err(Error::format(
        path.display().to_string(),
        format!("is {what}; give a regular file"),
    ))
}

/// The bytes of the regular file `path`.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    check_regular_file(path)?;
    std::fs::read(path).map_err(|e| io_err(path, e))
}

/// A regular file's bytes, memory-mapped (read-only, shared with the page cache).
pub struct Mapped {
    map: Option<memmap2::Mmap>,
}

impl Mapped {
    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Tells the kernel that `part` (a slice of [`Mapped::bytes`]) will not be read again: its
    /// whole pages leave this process's resident set (they stay in the page cache).
    pub fn release(&self, part: &[u8]) {
        const GRAIN: usize = 64 * 1024; // a multiple of every page size in use
        let Some(map) = &self.map else { return };
        let base = map.as_ptr() as usize;
        let start = (part.as_ptr() as usize).wrapping_sub(base);
        if start > map.len() || part.len() > map.len() - start {
            return;
        }
        let from = start.div_ceil(GRAIN) * GRAIN;
        let to = (start + part.len()) / GRAIN * GRAIN;
        if to > from {
            // SAFETY: the map is a read-only shared file mapping: after MADV_DONTNEED a later
            // read faults the same file pages back in, so no reader ever sees other bytes.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
            };
        }
    }
}

/// The regular file `path`, memory-mapped (an empty file maps to no bytes).
pub fn map_file(path: &Path) -> Result<Mapped> {
    check_regular_file(path)?;
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    if len == 0 {
        return Ok(Mapped { map: None });
    }
    // SAFETY: the map is read-only; a file truncated by another process while mapped would
    // fault (SIGBUS), the accepted risk of reading checkpoints of many GB without a copy.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    Ok(Mapped { map: Some(map) })
}

/// The UTF-8 text of the regular file `path`.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::format(
            path.display().to_string(),
            format!(
                "is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn devices_and_folders_are_refused_before_reading() {
        let e = read_bytes(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("not a regular file"),
            "{e}"
        );
        let d = tempfile::tempdir().unwrap();
        let e = read_text(d.path()).unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
    }
}
