//! Writing to stdout and stderr without panicking: a closed pipe (`qscope eval --json | head`)
//! or a full disk (`> /dev/full`) becomes an [`OutputError`] that `main` turns into a quiet
//! non-zero exit; a failed write to stderr is ignored.

use std::io::Write;

/// Writing to stdout failed.
#[derive(Debug, thiserror::Error)]
#[error("stdout")]
pub struct OutputError {
    /// What the operating system said.
    pub source: std::io::Error,
}

impl OutputError {
    /// Whether the reader went away (a closed pipe): exit quietly, there is no one to tell.
    pub fn is_closed_pipe(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes `s` to stdout and flushes it.
pub fn stdout(s: &str) -> Result<(), OutputError> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| OutputError { source })
}

/// Writes `s` to stderr; a failure is ignored (there is nowhere left to report it).
pub fn stderr(s: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(s.as_bytes()).and_then(|()| err.flush());
}

/// `println!` that returns an [`OutputError`] instead of panicking.
macro_rules! outln {
    () => { $crate::cli::out::stdout("\n") };
    ($($t:tt)*) => { $crate::cli::out::stdout(&format!("{}\n", format_args!($($t)*))) };
}

/// `print!` that returns an [`OutputError`] instead of panicking.
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::out::stdout(&format!($($t)*)) };
}

/// `eprintln!` that never panics.
macro_rules! errln {
    ($($t:tt)*) => { $crate::cli::out::stderr(&format!("{}\n", format_args!($($t)*))) };
}

pub(crate) use {errln, out, outln};
