//! PixelLLM itself: the model ([`model`]) with its presets and sub-vocabulary, the output heads
//! as plug-ins ([`heads`]), the tasks as training examples and batches ([`tasks`],
//! [`task_mix`]), and the evaluation core the model is scored with ([`eval`]). The runners that
//! train and evaluate it are `pixel-run` (docs/ARCHITECTURE.md).
pub mod error;
pub mod eval;
pub mod heads;
pub mod model;
pub mod presets;
pub mod task_mix;
pub mod tasks;
pub mod testing;
pub mod vocab;

pub use error::{ModelError, Result};
