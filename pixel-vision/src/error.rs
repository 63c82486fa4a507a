//! The one error type of `pixel-vision`.
use pixel_core::CoreError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("cannot decode image `{path}`: {message}")]
    Image { path: PathBuf, message: String },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("unknown preset `{name}`; known presets: {known}")]
    UnknownPreset { name: String, known: String },
}

impl VisionError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        VisionError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type VisionResult<T> = std::result::Result<T, VisionError>;
