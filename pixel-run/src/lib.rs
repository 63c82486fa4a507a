//! The runners behind the `pixel` command, as a library: one experiment's config
//! ([`experiment`]), the demo, `pixel eval`, ablations, gradient dumps, predictions on one's own
//! images and the pretraining stages the demo installs. Each takes the head registry it builds
//! the model with. The model, heads and tasks are `pixel-model`; data, metrics, pictures and the
//! training loop are crates of their own (docs/ARCHITECTURE.md).
pub mod ablate;
pub mod demo;
pub mod error;
pub mod eval_attention;
pub mod eval_heads;
pub mod eval_run;
pub mod experiment;
pub mod grads;
pub mod head_conformance;
pub mod model_step;
pub mod predict;
pub mod pretrain;
pub mod pretrain_eva;
pub mod pretrain_sam;

pub use error::{Result, RunError};
