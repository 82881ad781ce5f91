//! The library's error type: every variant names the file, tensor or key at fault and the cause.

use std::path::PathBuf;

/// Everything that can go wrong in the quantization core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", clip(&path.display().to_string(), NAME_MAX))]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file's content is malformed (not safetensors, truncated, bad header, ...).
    #[error("{}: {}", clip(file, NAME_MAX), clip(msg, MSG_MAX))]
    Format {
        /// The file (or "bundled model" for embedded assets).
        file: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A tensor is missing, has the wrong shape or dtype, or holds non-finite values.
    #[error(
        "{}: tensor '{}': {}",
        clip(file, NAME_MAX),
        clip(tensor, NAME_MAX),
        clip(msg, MSG_MAX)
    )]
    Tensor {
        /// The file holding the tensor.
        file: String,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The model spec is invalid.
    #[error("{}: spec: {}", clip(file, NAME_MAX), clip(msg, MSG_MAX))]
    Spec {
        /// The spec's source (a path, or the model file for an embedded spec).
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// A configuration value is out of range or unknown.
    #[error("{}: {}", clip(key, NAME_MAX), clip(msg, MSG_MAX))]
    Config {
        /// The key or flag at fault (e.g. `weight_bits`, `layers.fc1.act_bits`).
        key: String,
        /// What is wrong.
        msg: String,
    },
    /// A data set does not fit the model.
    #[error("{}: {}", clip(file, NAME_MAX), clip(msg, MSG_MAX))]
    Data {
        /// The data set's file.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// A node of a graph is malformed, unsupported, or failed while running.
    #[error("{file}: node '{node}' ({op}): {msg}")]
    Node {
        /// The model file.
        file: String,
        /// The node's name.
        node: String,
        /// Its op type.
        op: String,
        /// What is wrong.
        msg: String,
    },
    /// The computation was cancelled (a newer job superseded it).
    #[error("cancelled")]
    Cancelled,
}

/// Longest file, tensor or key name an error message shows (longer ones are cut in the middle).
pub const NAME_MAX: usize = 160;
/// Longest cause an error message shows (a cause quoting a long input is cut in the middle).
pub const MSG_MAX: usize = 400;

/// `s` cut to at most `max` characters (plus the ellipsis): its head, `…`, and its tail, so that
/// an error quoting a user's input stays readable on one line. Control characters (a quoted
/// newline or escape sequence) are shown as spaces.
pub fn clip(s: &str, max: usize) -> String {
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    let n = s.chars().count();
    if n <= max {
        return s.chars().map(clean).collect();
    }
    let head = max * 2 / 3;
    let tail = max.saturating_sub(head + 1);
    let mut out: String = s.chars().take(head).map(clean).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail).map(clean));
    out
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A configuration error for `key`.
    pub fn config(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            msg: msg.into(),
        }
    }

    /// A format error in `file`.
    pub fn format(file: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Format {
            file: file.into(),
            msg: msg.into(),
        }
    }

    /// A tensor error in `file`.
    pub fn tensor(
        file: impl Into<String>,
        tensor: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            file: file.into(),
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }

    /// A spec error in `file`.
    pub fn spec(file: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Spec {
            file: file.into(),
            msg: msg.into(),
        }
    }

    /// A node error in `file`.
    pub fn node(
        file: impl Into<String>,
        node: &str,
        op: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Node {
            file: file.into(),
            node: clip(node, NAME_MAX),
            op: op.into(),
            msg: msg.into(),
        }
    }

    /// A data set error in `file`.
    pub fn data(file: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Data {
            file: file.into(),
            msg: msg.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_inputs_are_cut_in_the_middle_and_short_ones_kept() {
        assert_eq!(clip("short\nline", 20), "short line");
        let long = format!("start{}end", "x".repeat(10_000));
        let c = clip(&long, 200);
        assert!(c.starts_with("start") && c.ends_with("end") && c.contains('…'));
        assert!(c.chars().count() <= 201, "{}", c.chars().count());
        let e = Error::config("k".repeat(5000), "y".repeat(50_000)).to_string();
        assert!(e.len() < 1000, "{}", e.len());
    }
}
