//! Writing files so that a reader only ever sees the old file or the whole new one: the content
//! goes to a temporary file in the target folder, is flushed to disk, and is renamed into place.
//! An interrupted or failed write leaves the previous file untouched and no temporary file; the
//! temporary of a killed write (hidden, named `.<target>.qscope-tmp-…`) is removed by the next
//! write of the same target once it is a minute old. A target that is a symlink is followed: the
//! file it points to is replaced, the link stays.

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

/// How old a leftover temporary must be before a later write removes it (a younger one may
/// belong to a write still running).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// The file a write to `path` should replace: `path` itself, or, if it is a symlink, the file
/// it points to (followed through up to 40 links, as the kernel does).
pub fn resolve_target(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        let is_link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
        let Some(target) = is_link.then(|| std::fs::read_link(&p).ok()).flatten() else {
            break;
        };
        p = if target.is_absolute() {
            target
        } else {
            parent_dir(&p).join(target)
        };
    }
    p
}

/// Whether `name` is a temporary that qscope made for a target named `stem`
/// (`.{stem}.qscope-tmp-{pid}-{nanos}-{n}`).
fn is_our_temp(name: &str, stem: &str) -> bool {
    let Some(rest) = name
        .strip_prefix('.')
        .and_then(|r| r.strip_prefix(stem))
        .and_then(|r| r.strip_prefix(".qscope-tmp-"))
    else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes leftover temporaries of target `stem` in `dir` (a killed write's), older than
/// [`STALE_AFTER`]; only regular files qscope named. Best effort: failures are ignored.
pub fn remove_stale_temps(dir: &Path, stem: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !is_our_temp(&name.to_string_lossy(), stem) {
            continue;
        }
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_AFTER);
        if old && (meta.is_file() || meta.is_dir()) {
            let _ = if meta.is_dir() {
                std::fs::remove_dir_all(e.path())
            } else {
                std::fs::remove_file(e.path())
            };
        }
    }
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
    let path = &resolve_target(path);
    check_writable_file(path)?;
    let dir = parent_dir(path);
    let stem = path
        .file_name()
        .map_or("file".into(), |s| s.to_string_lossy().into_owned());
    remove_stale_temps(&dir, &stem);
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

/// Creates a new, unique hidden temporary folder in `dir` (named like the temporary files).
fn create_temp_dir(dir: &Path, stem: &str) -> std::io::Result<PathBuf> {
    let (probe, file) = create_temp(dir, stem)?;
    drop(file);
    // Reuse the unique name: swap the probe file for a folder of the same name.
    std::fs::remove_file(&probe)?;
    std::fs::create_dir(&probe)?;
    Ok(probe)
}

/// Writes the files `names` into the folder `dir` as one unit: each is filled (by `fill(i, w)`)
/// in a hidden temporary folder inside `dir`, and only when all are written are they renamed
/// into place (symlinks followed). If any fails, nothing is written and the temporary folder is
/// removed; should a rename itself fail, the error lists the files already in place.
pub fn write_files_atomic(
    dir: &Path,
    names: &[String],
    mut fill: impl FnMut(usize, &mut dyn Write) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    check_writable_dir(dir)?;
    remove_stale_temps(dir, "batch");
    let tmp = create_temp_dir(dir, "batch").map_err(|e| io_err(dir, e))?;
    let result = (|| -> Result<Vec<PathBuf>> {
        for (i, name) in names.iter().enumerate() {
            let p = tmp.join(name);
            let file = File::create(&p).map_err(|e| io_err(&p, e))?;
            let mut w = BufWriter::new(file);
            fill(i, &mut w)?;
            let file = w.into_inner().map_err(|e| io_err(&p, e.into_error()))?;
            file.sync_all().map_err(|e| io_err(&p, e))?;
        }
        let mut written: Vec<PathBuf> = Vec::new();
        for name in names {
            let target = resolve_target(&dir.join(name));
            if let Err(e) = std::fs::rename(tmp.join(name), &target) {
                let done: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
                return Err(Error::format(
                    target.display().to_string(),
                    format!(
                        "cannot move into place: {e} (already written: {})",
                        if done.is_empty() {
                            "none".into()
                        } else {
                            done.join(", ")
                        }
                    ),
                ));
            }
            written.push(target);
        }
        Ok(written)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
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
