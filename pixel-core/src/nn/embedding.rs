//! Token embedding table.
use crate::error::Result;
use crate::nn::Seq;
use crate::params::{join, ParamVisitor, Params};
use dfdx::prelude::*;

/// A `[vocab, dim]` lookup table (`weight`, as in PyTorch).
#[derive(Debug, Clone)]
pub struct Embedding<V: ConstDim, M: ConstDim, D: Device<f32>> {
    pub weight: Tensor<(V, M), f32, D>,
}

impl<V: ConstDim, M: ConstDim, D: Device<f32>> Embedding<V, M, D> {
    /// Standard-normal initialisation, as PyTorch's `nn.Embedding`.
    pub fn new(dev: &D) -> Self {
        Embedding {
            weight: dev.sample_normal_like(&(V::default(), M::default())),
        }
    }

    /// Looks up `[batch, tokens]` ids; the result carries a tape of type `T` so the table trains.
    pub fn forward<T: Tape<f32, D>>(&self, ids: Tensor<(usize, usize), usize, D>) -> Seq<M, D, T> {
        self.weight.retaped::<T>().gather(ids)
    }
}

impl<V: ConstDim, M: ConstDim, D: Device<f32>> Params<D> for Embedding<V, M, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(&join(prefix, "weight"), &mut self.weight)
    }
}
