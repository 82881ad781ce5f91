//! Sharded checkpoints: the Hugging Face `model.safetensors.index.json`
//! (`{"metadata": {..}, "weight_map": {tensor: shard file}}`) and the folder that holds one.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The index file name Hugging Face writes beside the shards.
pub const INDEX_NAME: &str = "model.safetensors.index.json";

/// A parsed index: which shard holds each tensor.
#[derive(Debug, Clone)]
pub struct Index {
    /// The index file (names it in errors).
    pub label: String,
    /// Shard files in the order they are inspected (sorted by name), paths resolved against
    /// the index's folder, each with the name the index gives it.
    pub shards: Vec<(String, PathBuf)>,
    /// Tensor name → shard name, as the index says.
    pub weight_map: BTreeMap<String, String>,
}

/// Whether `path` names an index rather than a safetensors file (by its `.json` ending).
pub fn is_index(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// The checkpoint file a folder stands for: its index, or its single `model.safetensors`.
pub fn in_folder(dir: &Path) -> Result<PathBuf> {
    let index = dir.join(INDEX_NAME);
    if index.is_file() {
        return Ok(index);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".safetensors.index.json"))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 if dir.join("model.safetensors").is_file() => Ok(dir.join("model.safetensors")),
        n => Err(Error::format(
            dir.display().to_string(),
            format!(
                "is a folder with {n} *.safetensors.index.json files; give the index or a safetensors file"
            ),
        )),
    }
}

/// Parses the index at `path` (`text` is its content).
pub fn parse(path: &Path, text: &str) -> Result<Index> {
    let label = path.display().to_string();
    let bad = |msg: String| Error::format(&label, msg);
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| bad(format!("not a safetensors index (JSON): {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("not a safetensors index: no \"weight_map\" object".into()))?;
    let mut weight_map = BTreeMap::new();
    for (tensor, shard) in map {
        let tensor_name = crate::error::clip(tensor, crate::error::NAME_MAX);
        let shard = shard.as_str().ok_or_else(|| {
            bad(format!(
                "weight_map entry for tensor '{tensor_name}' is not a file name"
            ))
        })?;
        // Shards sit beside the index: a path (absolute, with a folder, or `..`) is refused, so
        // an index cannot make inspect read files elsewhere.
        let plain = Path::new(shard).file_name().is_some_and(|n| n == shard)
            && !shard.contains(['/', '\\']);
        if !plain {
            return Err(bad(format!(
                "weight_map entry for tensor '{tensor_name}' names '{}', not a file beside the index",
                crate::error::clip(shard, crate::error::NAME_MAX)
            )));
        }
        weight_map.insert(tensor.clone(), shard.to_string());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut names: Vec<&String> = weight_map.values().collect();
    names.sort();
    names.dedup();
    let shards = names
        .into_iter()
        .map(|n| (n.clone(), dir.join(n)))
        .collect();
    Ok(Index {
        label,
        shards,
        weight_map,
    })
}

impl Index {
    /// Checks that shard `shard` holds exactly the tensors the index puts there: every tensor
    /// of `names` is mapped to this shard (or not listed at all) and every tensor mapped here is
    /// in `names`.
    pub fn check_shard(&self, shard: &str, names: &[String]) -> Result<()> {
        let here: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        for n in names {
            if let Some(other) = self.weight_map.get(n).filter(|s| *s != shard) {
                return Err(Error::format(
                    &self.label,
                    format!("tensor '{n}' is in shard '{shard}' but the index says '{other}'"),
                ));
            }
        }
        let missing = self
            .weight_map
            .iter()
            .find(|(t, s)| *s == shard && !here.contains(t.as_str()));
        match missing {
            Some((t, _)) => Err(Error::format(
                &self.label,
                format!("tensor '{t}' is not in shard '{shard}' where the index puts it"),
            )),
            None => Ok(()),
        }
    }

    /// The error for shard `shard` that cannot be opened.
    pub fn missing_shard(&self, shard: &str, cause: &Error) -> Error {
        let tensor = self
            .weight_map
            .iter()
            .find(|(_, s)| *s == shard)
            .map_or(String::new(), |(t, _)| format!(" (holding tensor '{t}')"));
        Error::format(
            &self.label,
            format!("shard '{shard}'{tensor} cannot be read: {cause}"),
        )
    }
}
