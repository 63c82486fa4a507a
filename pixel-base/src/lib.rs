//! What every pixel-llm crate shares that needs no tensors, so that tensor-free crates
//! (`pixel-metrics`) reach it without dfdx.
//!
//! - [`text`]: reading user text files with errors that say what is wrong.
//! - [`progress`]: progress of long jobs as `tracing` events; the binary draws them.
//! - [`range`]: range-checked numbers for typed configs.
pub mod progress;
pub mod range;
pub mod text;
