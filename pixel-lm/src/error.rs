//! The one error type of `pixel-lm`.
use pixel_core::CoreError;
use std::path::PathBuf;

/// Everything that can go wrong when loading or running the language model.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("invalid T5 config `{path}`: {message}")]
    Config { path: PathBuf, message: String },
    #[error(
        "T5 config `{path}` matches no preset: {message}\n  (presets: {presets}; add one in pixel-lm/src/presets.rs)"
    )]
    NoPreset {
        path: PathBuf,
        message: String,
        /// The preset names, comma-separated.
        presets: String,
    },
    #[error(
        "model folder `{0}` has neither `model.safetensors` nor `model.safetensors.index.json`"
    )]
    NoCheckpoint(PathBuf),
    #[error("tokenizer `{path}`: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = LmError> = std::result::Result<T, E>;
