//! Exporting and loading quantization parameters (formats.md §5) and quantized models (§6).
//! Every write goes to a temporary file in the target folder and is renamed into place.

use crate::error::{Error, Result};
use crate::model::Model;
use crate::params::ModelParams;
use std::path::Path;

/// Writes `params` of `model` as JSON or TOML (by the extension of `path`).
pub fn save_params(path: &Path, model: &Model, params: &ModelParams) -> Result<()> {
    let _ = (model, params);
    Err(Error::format(
        path.display().to_string(),
        "parameter export is not implemented yet",
    ))
}

/// Loads parameters for `model` from a JSON or TOML file; a file made for another model is
/// refused unless `force`.
pub fn load_params(path: &Path, model: &Model, force: bool) -> Result<ModelParams> {
    let _ = (model, force);
    Err(Error::format(
        path.display().to_string(),
        "parameter loading is not implemented yet",
    ))
}
