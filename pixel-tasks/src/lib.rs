//! PixelLLM assembled from its parts (model, output heads, tasks, evaluation, pretraining), and
//! the runners behind the `pixel` command (demo, eval, ablate, grads, predict). Data, metrics,
//! pictures and the training loop are crates of their own (docs/ARCHITECTURE.md).
pub mod ablate;
pub mod demo;
pub mod error;
pub mod eval_attention;
pub mod eval_heads;
pub mod eval_run;
pub mod experiment;
pub mod grads;
pub mod head_conformance;
pub mod predict;
pub mod pretrain;
pub mod pretrain_eva;
pub mod pretrain_sam;

pub use error::{Result, TaskError};
