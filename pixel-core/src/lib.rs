//! Shared building blocks of pixel-llm.
//!
//! - [`error`]: the crate's error type.
//! - [`config`]: typed TOML loading that names the file and key path of every problem.
//! - [`geometry`]: normalized and pixel points and boxes, IoU, clipping, box <-> corners.
//! - [`params`]: named parameters ([`params::Params`]) and freezing ([`params::Trainable`]).
//! - [`checkpoint`]: strict safetensors loading, atomic saving.
//! - [`nn`]: layers with compile-time channel dims (linear + LoRA, norms, MLP, attention,
//!   position encodings).
//! - [`loss`]: label-smoothed cross-entropy and masked L1.
//! - [`optim`]: AdamW over the trainable parameters, warmup + cosine schedule, clipping.
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod geometry;
pub mod loss;
pub mod nn;
pub mod optim;
pub mod params;
pub mod testing;
pub mod text;

pub use error::{CoreError, Result};

/// The device models run on: CPU, or CUDA with the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub type DefaultDevice = dfdx::tensor::Cpu;
/// The device models run on: CPU, or CUDA with the `cuda` feature.
#[cfg(feature = "cuda")]
pub type DefaultDevice = dfdx::tensor::Cuda;
