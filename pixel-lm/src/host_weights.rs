//! The host copies of a T5 decoder's weights that generation runs on (`host_decoder`), and
//! the model's cache of them: plain vectors, so the model (`t5`) holds the cache without
//! depending on the decoder step that fills and reads it.
use pixel_core::nn::Activation;
use std::sync::Arc;

/// `y = W x (+ b) (+ scale * B A x)` on host vectors, `W` row-major `[out, in]`.
pub(crate) struct HostLinear {
    pub(crate) w: Vec<f32>,
    pub(crate) bias: Option<Vec<f32>>,
    pub(crate) out: usize,
    pub(crate) inp: usize,
    /// `A` `[rank, in]`, `B` `[out, rank]`, scale.
    pub(crate) lora: Option<(Vec<f32>, Vec<f32>, usize, f32)>,
}

pub(crate) enum HostFf {
    Plain(HostLinear, HostLinear, Activation),
    Gated(HostLinear, HostLinear, HostLinear, Activation),
}

pub(crate) struct HostBlock {
    pub(crate) self_norm: Vec<f32>,
    pub(crate) q: HostLinear,
    pub(crate) k: HostLinear,
    pub(crate) v: HostLinear,
    pub(crate) o: HostLinear,
    pub(crate) cross_norm: Vec<f32>,
    pub(crate) cq: HostLinear,
    pub(crate) co: HostLinear,
    pub(crate) ff_norm: Vec<f32>,
    pub(crate) ff: HostFf,
}

/// Host copies of the decoder and LM-head weights, made once per model and shared by every
/// `HostDecoder` (see `T5::host_weights`).
pub struct HostWeights {
    pub(crate) blocks: Vec<HostBlock>,
    pub(crate) final_norm: Vec<f32>,
    pub(crate) head: HostLinear,
    pub(crate) head_scale: f32,
    /// `[buckets, heads]`.
    pub(crate) position_table: Vec<f32>,
    pub(crate) buckets: usize,
    pub(crate) max_distance: usize,
    pub(crate) heads: usize,
    pub(crate) eps: f64,
}

impl std::fmt::Debug for HostWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostWeights {{ blocks: {}, .. }}", self.blocks.len())
    }
}

/// The lazily made [`HostWeights`] of a model. Every `&mut` access to the model's parameters
/// through [`pixel_core::params::Params`] (optimizers, loaders) and `add_lora` clears it; code
/// that assigns weights through the public fields directly must call
/// `T5::clear_host_weights`.
#[derive(Debug, Clone, Default)]
pub struct HostWeightsCache(pub(crate) std::sync::OnceLock<Arc<HostWeights>>);

impl HostWeightsCache {
    pub fn clear(&mut self) {
        self.0 = std::sync::OnceLock::new();
    }
}
