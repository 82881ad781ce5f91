//! Writing files so that a reader only ever sees the old file or the whole new one: the content
//! goes to a temporary file in the target folder, is flushed to disk, and is renamed into place.
//! An interrupted or failed write leaves the previous file untouched and no temporary file.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The folder a file path will be written into (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `dir` exists, is a folder and can be written (by creating and removing a probe
/// file in it). Call it before any work whose result goes there.
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::format(
                dir.display().to_string(),
                "the target folder does not exist (create it first)",
            )
        } else {
            io_err(dir, e)
        }
    })?;
    if !meta.is_dir() {
        return Err(Error::format(
            dir.display().to_string(),
            "the target folder is not a folder",
        ));
    }
    let (probe, file) = create_temp(dir, "write-check").map_err(|e| {
        Error::format(
            dir.display().to_string(),
            format!("the target folder cannot be written: {e}"),
        )
    })?;
    drop(file);
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Checks, before any work, that `path` can be written atomically: its folder exists and is
/// writable, and `path` itself is not a folder.
pub fn check_writable_file(path: &Path) -> Result<()> {
    if path.file_name().is_none() {
        return Err(Error::format(path.display().to_string(), "not a file name"));
    }
    check_writable_dir(&parent_dir(path))?;
    if path.is_dir() {
        return Err(Error::format(
            path.display().to_string(),
            "is a folder; give a file name",
        ));
    }
    Ok(())
}

/// Creates a new, unique temporary file in `dir` (hidden, named after `stem`).
fn create_temp(dir: &Path, stem: &str) -> std::io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(".{stem}.qscope-tmp-{}-{nanos}-{n}", std::process::id());
        let p = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes `path` atomically: `fill` writes the content into a temporary file in the same folder,
/// which is then flushed to disk and renamed over `path`. If `fill` (or anything else) fails, the
/// temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    check_writable_file(path)?;
    let dir = parent_dir(path);
    let stem = path
        .file_name()
        .map_or("file".into(), |s| s.to_string_lossy().into_owned());
    let (tmp, file) = create_temp(&dir, &stem).map_err(|e| io_err(&dir, e))?;
    let result = (|| -> Result<()> {
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| io_err(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        // Make the rename itself durable (best effort: not every platform can open a folder).
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes).map_err(|e| io_err(path, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_bytes_atomic(&p, b"one").unwrap();
        write_bytes_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(entries(d.path()), vec!["a.json"]);
    }

    #[test]
    fn a_failed_write_keeps_the_previous_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_bytes_atomic(&p, b"previous").unwrap();
        let e = write_atomic(&p, |w| {
            w.write_all(b"half of the new").unwrap();
            Err(Error::format("a.json", "failed half-way"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("failed half-way"));
        assert_eq!(std::fs::read(&p).unwrap(), b"previous");
        assert_eq!(entries(d.path()), vec!["a.json"]);
    }

    #[test]
    fn missing_or_unwritable_folders_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let e = check_writable_file(&d.path().join("nope/a.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_writable_file(d.path()).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        assert!(check_writable_file(&d.path().join("a.json")).is_ok());
        assert!(check_writable_file(Path::new("x.json")).is_ok());
    }
}
