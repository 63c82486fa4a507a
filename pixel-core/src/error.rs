//! The one error type of `pixel-core`.
use std::path::PathBuf;

/// Everything that can go wrong in the shared building blocks.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("cannot read `{path}`: {source}{}", crate::text::read_help(source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config `{path}`: at key `{key}`: {message}")]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("checkpoint `{path}` does not fit the model:\n  - {}", problems.join("\n  - "))]
    CheckpointMismatch {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("checkpoint `{path}` is not a valid safetensors file: {message}")]
    CheckpointFormat { path: PathBuf, message: String },
    #[error("invalid geometry: {0}")]
    Geometry(String),
    #[error("invalid shape: {0}")]
    Shape(String),
    #[error("{0}")]
    Invalid(String),
}

impl CoreError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
