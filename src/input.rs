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
