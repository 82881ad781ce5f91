//! The bundled models and MNIST data, embedded in the binary so `qscope` runs from any folder
//! (how they were made: assets/README.md).

use crate::error::{Error, Result};
use crate::model::{Dataset, Model, load_dataset_bytes, load_model_bytes};

/// The bundled MLP 784-256-128-10 (spec embedded).
pub const MLP: &[u8] = include_bytes!("../assets/mnist-mlp.safetensors");
/// The bundled CNN (spec embedded).
pub const CNN: &[u8] = include_bytes!("../assets/mnist-cnn.safetensors");
/// The bundled residual CNN (ONNX; normalization inside the graph).
pub const RESNET: &[u8] = include_bytes!("../assets/mnist-resnet.onnx");
/// 1,000 MNIST calibration digits (U8).
pub const CALIB: &[u8] = include_bytes!("../assets/mnist-calib.safetensors");
/// 2,000 MNIST test digits (U8).
pub const TEST: &[u8] = include_bytes!("../assets/mnist-test.safetensors");

/// Names of the bundled models.
pub const MODEL_NAMES: [&str; 3] = ["mnist-mlp", "mnist-cnn", "mnist-resnet"];

/// The raw bytes of a bundled model by name.
pub fn model_bytes(name: &str) -> Option<&'static [u8]> {
    match name {
        "mnist-mlp" => Some(MLP),
        "mnist-cnn" => Some(CNN),
        "mnist-resnet" => Some(RESNET),
        _ => None,
    }
}

/// Loads a bundled model by name (`mnist-mlp` or `mnist-cnn`).
pub fn model(name: &str) -> Result<Model> {
    let bytes = model_bytes(name).ok_or_else(|| {
        Error::config(
            "model",
            format!(
                "no bundled model '{name}' (bundled: {})",
                MODEL_NAMES.join(", ")
            ),
        )
    })?;
    let label = format!("bundled {name}");
    if name == "mnist-resnet" {
        return crate::model::onnx::load_onnx_bytes(&label, name, bytes, None);
    }
    load_model_bytes(&label, name, bytes, None)
}

/// The bundled calibration set.
pub fn calib() -> Dataset {
    load_dataset_bytes("bundled mnist-calib", CALIB).expect("the bundled calibration set is valid")
}

/// The bundled test set.
pub fn test() -> Dataset {
    load_dataset_bytes("bundled mnist-test", TEST).expect("the bundled test set is valid")
}
