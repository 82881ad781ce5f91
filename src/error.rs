//! The library's error type: every variant names the file, tensor or key at fault and the cause.

use std::path::PathBuf;

/// Everything that can go wrong in the quantization core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file's content is malformed (not safetensors, truncated, bad header, ...).
    #[error("{file}: {msg}")]
    Format {
        /// The file (or "bundled model" for embedded assets).
        file: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A tensor is missing, has the wrong shape or dtype, or holds non-finite values.
    #[error("{file}: tensor '{tensor}': {msg}")]
    Tensor {
        /// The file holding the tensor.
        file: String,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The model spec is invalid.
    #[error("{file}: spec: {msg}")]
    Spec {
        /// The spec's source (a path, or the model file for an embedded spec).
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// A configuration value is out of range or unknown.
    #[error("{key}: {msg}")]
    Config {
        /// The key or flag at fault (e.g. `weight_bits`, `layers.fc1.act_bits`).
        key: String,
        /// What is wrong.
        msg: String,
    },
    /// A data set does not fit the model.
    #[error("{file}: {msg}")]
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

/// Longest quotation of user input inside an error message, in characters.
pub const QUOTE_MAX: usize = 120;

/// `s` cut to [`QUOTE_MAX`] characters (with an ellipsis), for quoting user input in errors.
pub fn clip(s: &str) -> String {
    if s.chars().count() <= QUOTE_MAX {
        return s.to_string();
    }
    let mut out: String = s.chars().take(QUOTE_MAX).collect();
    out.push('…');
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
            node: clip(node),
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
