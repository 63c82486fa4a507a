//! The language model of pixel-llm: T5 / Flan-T5 equal to HF's `T5ForConditionalGeneration`.
//!
//! - [`t5`]: the model, module for module with HF's state-dict names; generic over the tape so
//!   it trains (encoder, decoder, LoRA).
//! - [`presets`]: the published checkpoints' and the test presets' dims, and [`AnyT5`], chosen
//!   from `config.json`.
//! - [`dims`]: the channel dims as types ([`T5Dims`]) and the check of a config against them.
//! - [`config`]: HF `config.json` ([`T5Config`]).
//! - [`load`]: HF checkpoints (single file or shards; f32/f16/bf16), LoRA adapter files.
//! - [`generate`]: KV-cached greedy and beam search with HF `generate` semantics, returning the
//!   decoder features of every generated position for PixelLLM's output heads.
//! - [`tokenizer`]: the T5 SentencePiece vocabulary.
//! - [`host_t5`]: [`HostT5`], inference on f32/bf16/f16 weights; [`host_weights`] and
//!   [`host_decoder`]: the host decoder weights and step both models generate with.
pub mod config;
pub mod dims;
pub mod error;
pub mod generate;
pub mod host;
pub mod host_decoder;
mod host_layers;
pub mod host_t5;
pub mod host_weights;
pub mod load;
pub mod presets;
pub mod t5;
pub mod tokenizer;

pub use config::T5Config;
pub use error::{LmError, Result};
pub use generate::{DecoderCache, GenerateOptions, Generation, HostGeneration};
pub use host_t5::HostT5;
pub use pixel_core::host_matrix::Dtype;
pub use presets::{AnyT5, T5Dims};
pub use t5::{relative_position_bucket, Ids, T5};
pub use tokenizer::T5Tokenizer;
