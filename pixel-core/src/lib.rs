//! Shared building blocks of pixel-llm.
//!
//! - [`error`]: the crate's error type.
//! - [`config`]: typed TOML loading that names the file and key path of every problem.
//! - [`geometry`]: normalized and pixel points and boxes, IoU, clipping, box <-> corners.
//! - [`params`]: named parameters ([`params::Params`]) and freezing ([`params::Trainable`]).
//! - [`checkpoint`]: strict safetensors loading, atomic saving.
//! - [`nn`]: layers with compile-time channel dims (linear + LoRA, norms, MLP, attention,
//!   position encodings).
//! - [`host_matrix`]: frozen weights on the host in f32, bf16 or f16, with f32-accumulating
//!   AVX2 / portable kernels (16-bit inference).
//! - [`loss`]: label-smoothed cross-entropy and masked L1.
//! - [`optim`]: AdamW over the trainable parameters, warmup + cosine schedule, clipping.
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod geometry;
pub mod host_matrix;
pub mod loss;
pub mod nn;
pub mod optim;
pub mod params;
pub mod testing;
/// Reading user text files; lives in `pixel-base` so that tensor-free crates reach it too.
pub use pixel_base::text;

pub use error::{CoreError, Result};

/// What a data-parallel training step needs of a model, its batches and gradients: on the CPU,
/// to be shared between threads. dfdx's CUDA device holds raw stream handles that are neither
/// `Send` nor `Sync`, so with the `cuda` feature this asks nothing and shards run one after
/// another on the GPU.
#[cfg(not(feature = "cuda"))]
pub trait ThreadSafe: Send + Sync {}
#[cfg(not(feature = "cuda"))]
impl<T: Send + Sync + ?Sized> ThreadSafe for T {}
/// What a data-parallel training step needs (nothing with the `cuda` feature; see the CPU doc).
#[cfg(feature = "cuda")]
pub trait ThreadSafe {}
#[cfg(feature = "cuda")]
impl<T: ?Sized> ThreadSafe for T {}

/// The device models run on: CPU, or CUDA with the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub type DefaultDevice = dfdx::tensor::Cpu;
/// The device models run on: CPU, or CUDA with the `cuda` feature.
#[cfg(feature = "cuda")]
pub type DefaultDevice = dfdx::tensor::Cuda;
