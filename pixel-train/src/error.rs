//! The one error type of `pixel-train`.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Core(#[from] pixel_core::CoreError),
    /// What the model's own loss failed with ([`crate::TrainStep::loss`]), kept whole.
    #[error(transparent)]
    Model(Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "cannot access `{path}`: {source}{}",
        pixel_base::text::read_help(source)
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is malformed: {message}")]
    Format { path: PathBuf, message: String },
    #[error("the loss became {} at step {step} ({parts}); nothing was saved for this step{}",
        if loss.is_nan() { "NaN" } else { "infinite" },
        checkpoint.as_ref().map(|c| format!(", the last good checkpoint is `{}`", c.display())).unwrap_or_default())]
    NonFiniteLoss {
        step: u64,
        loss: f32,
        /// Each loss part with its value and weight, so the one that failed shows.
        parts: String,
        checkpoint: Option<PathBuf>,
    },
    #[error("a gradient became non-finite at step {step}: {message}; nothing was saved for this step{}",
        checkpoint.as_ref().map(|c| format!(", the last good checkpoint is `{}`", c.display())).unwrap_or_default())]
    NonFiniteGradient {
        step: u64,
        message: String,
        checkpoint: Option<PathBuf>,
    },
    #[error("training diverged at step {step}: the smoothed loss {loss} is over {factor} x its lowest, {lowest} at step {lowest_step}; nothing was saved for this step{}\n  help: lower train.peak_lr or set train.clip_grad_norm; train.divergence_factor = 0 switches this check off",
        checkpoint.as_ref().map(|c| format!(", the last good checkpoint is `{}`", c.display())).unwrap_or_default())]
    Diverged {
        step: u64,
        loss: f32,
        lowest: f32,
        lowest_step: u64,
        factor: f32,
        checkpoint: Option<PathBuf>,
    },
    /// A training setting that does not fit the run, by key path.
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    /// A model's loss error, for [`crate::TrainStep::loss`] implementations.
    pub fn model(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        TrainError::Model(Box::new(error))
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
