//! The one error type of `pixel-run`.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Core(#[from] pixel_core::CoreError),
    #[error(transparent)]
    Dataset(#[from] pixel_data::datasets::DatasetError),
    #[error(transparent)]
    Data(#[from] pixel_data::DataError),
    #[error(
        "cannot access `{path}`: {source}{}",
        pixel_core::text::read_help(source)
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is malformed: {message}")]
    Format { path: PathBuf, message: String },
    #[error(transparent)]
    Train(#[from] pixel_train::TrainError),
    #[error(transparent)]
    Model(pixel_model::ModelError),
    /// A config value that is wrong on its own or next to another one, by key path.
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The model's errors as the runners report them: a config error keeps its key path (so a
/// runner names the file it read it from), the rest travel whole.
impl From<pixel_model::ModelError> for RunError {
    fn from(error: pixel_model::ModelError) -> Self {
        match error {
            pixel_model::ModelError::Config { key, message } => RunError::Config { key, message },
            other => RunError::Model(other),
        }
    }
}

impl RunError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RunError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = RunError> = std::result::Result<T, E>;

/// A model's loss error as the trainer carries it ([`pixel_train::TrainError::Model`]): whole,
/// so `?` in a `TrainStep::loss` of this crate keeps its message.
impl From<RunError> for pixel_train::TrainError {
    fn from(error: RunError) -> Self {
        pixel_train::TrainError::model(error)
    }
}
