//! Layers with compile-time channel dims and run-time batch and token counts.
//!
//! Every layer works on `[batch, tokens, channels]` tensors ([`Seq`]); the channel dims are
//! types (`Const<N>`) chosen by a model preset, so a wrong wiring fails to compile.
pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod frozen_linear;
pub mod fused_attention;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod position;
pub mod recording;

use dfdx::prelude::*;

/// A gradient buffer of the CPU device as a slice, for backward ops that compute on the host.
///
/// Panics for another device: the ops that call it run only on the CPU device.
pub(crate) fn host_grad_mut<V: std::any::Any>(buffer: &mut V) -> &mut [f32] {
    let buffer: &mut dyn std::any::Any = buffer;
    buffer
        .downcast_mut::<<Cpu as Storage<f32>>::Vec>()
        .expect("host backward ops run on the CPU device only")
}

/// A `[batch, tokens, channels]` tensor.
pub type Seq<C, D, T = NoneTape> = Tensor<(usize, usize, C), f32, D, T>;

/// A `[batch, heads, tokens, head_dim]` tensor, as attention works on it.
pub type Heads<D, T = NoneTape> = Tensor<(usize, usize, usize, usize), f32, D, T>;

pub use attention::{
    attention, attention_with_bias, causal_bias, merge_heads, padding_bias, split_heads,
    MultiHeadAttention,
};
pub use embedding::Embedding;
pub use frozen_linear::frozen_matmul_t;
pub use linear::{Linear, LinearWeight, LoraAdapter, LoraLinear};
pub use mlp::{gelu, Activation, Mlp};
pub use norm::{layer_norm, rms_norm, LayerNorm, RmsNorm};
pub use position::{sincos_1d, sincos_2d, RandomFourierEncoding};
pub use recording::{record_attention, AttentionMap};
