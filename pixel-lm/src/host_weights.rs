//! The host weights of a T5 decoder and LM head that generation runs on ([`DecoderWeights`],
//! over [`HostMatrix`]: f32, bf16 or f16), and the f32 model's cache of them: data only, so the
//! model (`t5`) holds the cache without depending on the decoder step (`host_decoder`) that
//! fills and reads it.
use crate::host_layers::{HostAttention, HostFf};
use pixel_core::host_matrix::HostMatrix;
use std::sync::Arc;

pub(crate) struct DecoderBlock {
    pub self_norm: Vec<f32>,
    pub self_attention: HostAttention,
    pub cross_norm: Vec<f32>,
    pub cross_attention: HostAttention,
    pub ff_norm: Vec<f32>,
    pub ff: HostFf,
}

/// The decoder and LM-head weights on the host, shared by every `HostDecoder` of a model.
pub struct DecoderWeights {
    pub(crate) blocks: Vec<DecoderBlock>,
    pub(crate) final_norm: Vec<f32>,
    /// `lm_head`, or `shared` for tied models (then scaled by `head_scale`).
    pub(crate) head: Arc<HostMatrix>,
    pub(crate) head_scale: f32,
    /// `[buckets, heads]`.
    pub(crate) position_table: Vec<f32>,
    pub(crate) buckets: usize,
    pub(crate) max_distance: usize,
    pub(crate) heads: usize,
    pub(crate) eps: f64,
}

impl std::fmt::Debug for DecoderWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DecoderWeights {{ blocks: {}, {} }}",
            self.blocks.len(),
            self.head.dtype()
        )
    }
}

impl DecoderWeights {
    /// Weight bytes one decoding step reads whatever the batch: every block's projections and
    /// feed-forward (cross-attention keys and values excluded: computed once per input) and the
    /// LM head.
    pub fn step_bytes(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                let c = &b.cross_attention;
                b.self_attention.bytes() + c.q.bytes() + c.o.bytes() + b.ff.bytes()
            })
            .sum();
        blocks + self.head.bytes()
    }
}

/// The lazily made f32 [`DecoderWeights`] of a model. Every `&mut` access to the model's
/// parameters through [`pixel_core::params::Params`] (optimizers, loaders) and `add_lora`
/// clears it; code that assigns weights through the public fields directly must call
/// `T5::clear_host_weights`.
#[derive(Debug, Clone, Default)]
pub struct HostWeightsCache(pub(crate) std::sync::OnceLock<Arc<DecoderWeights>>);

impl HostWeightsCache {
    pub fn clear(&mut self) {
        self.0 = std::sync::OnceLock::new();
    }
}
