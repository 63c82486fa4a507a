//! The one error type of `pixel-model`.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Core(#[from] pixel_core::CoreError),
    #[error(transparent)]
    Data(#[from] pixel_data::DataError),
    /// A config value that is wrong on its own or next to another one, by key path.
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// The model's loss error as the trainer carries it ([`pixel_train::TrainError::Model`]):
/// whole, so `?` in a `TrainStep::loss` keeps its message.
impl From<ModelError> for pixel_train::TrainError {
    fn from(error: ModelError) -> Self {
        pixel_train::TrainError::model(error)
    }
}
