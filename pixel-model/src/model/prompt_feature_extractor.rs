//! The prompt feature extractor (scenic's `PromptAdaptor`): learnable output tokens and the
//! location prompt attend to the image features through SAM's two-way transformer; each output
//! token is then mapped by its own linear layer to the extractor's output width (`sparse`
//! fusion, the official default), or every updated image token is mapped by one linear layer
//! (`dense` fusion, scenic's `prompt_fuse_fn = 'dense'`).
//!
//! Widths: the image features `V`, the location prompt `Pr` (SAM's prompt encoder), the
//! transformer `C` (scenic's `transformer_dim`) and the output `M` (`output_dim`). When `Pr`
//! differs from `C`, the prompt embeddings and the image position encoding are first projected
//! to `C` (scenic's `prompt_embedding_projection_mlp`, `image_pe_projection_mlp`).
use dfdx::prelude::*;
use pixel_core::nn::{Linear, Seq};
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_vision::layers::{expand_batch, realize};
use pixel_vision::TwoWayTransformer;
use serde::{Deserialize, Serialize};

/// Which transformer outputs become the language model's visual tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFuse {
    /// The learnable output tokens (N of them).
    Sparse,
    /// The prompt-conditioned image tokens (one per grid cell).
    Dense,
}

#[derive(Debug, Clone)]
pub struct PromptFeatureExtractor<
    V: ConstDim,
    Pr: ConstDim,
    C: ConstDim,
    M: ConstDim,
    D: Device<f32>,
> {
    /// `[num_outputs, C]`, N(0, 1) initialised as in scenic.
    pub output_tokens: Tensor<(usize, C), f32, D>,
    /// Image features (`V` = SAM + EVA02 channels) -> transformer width.
    pub image_projection: Linear<V, C, D>,
    /// Sparse and dense prompt embeddings, prompt width -> transformer width (when they differ).
    pub prompt_projection: Option<Linear<Pr, C, D>>,
    /// The image position encoding, prompt width -> transformer width (when they differ).
    pub image_pe_projection: Option<Linear<Pr, C, D>>,
    pub transformer: TwoWayTransformer<C, D>,
    /// Sparse fusion: one linear map per output token, transformer width -> output width.
    pub output_hypernetworks: Vec<Linear<C, M, D>>,
    /// Dense fusion: one linear map for every image token (plus its position encoding).
    pub dense_output: Option<Linear<C, M, D>>,
}

/// The two-way transformer's run-time shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoWayShape {
    pub depth: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    /// The cross-attentions' inner width is `C / downsample_rate`.
    pub downsample_rate: usize,
    /// The blocks' LayerNorm epsilon.
    pub eps: f64,
}

impl<V: ConstDim, Pr: ConstDim, C: ConstDim, M: ConstDim, D: Device<f32>>
    PromptFeatureExtractor<V, Pr, C, M, D>
{
    pub fn new(dev: &D, num_outputs: usize, shape: TwoWayShape, fuse: PromptFuse) -> Self {
        let sparse = fuse == PromptFuse::Sparse;
        let project_prompt = Pr::SIZE != C::SIZE;
        PromptFeatureExtractor {
            output_tokens: dev.sample_normal_like(&(num_outputs, C::default())),
            image_projection: Linear::new(dev, true),
            prompt_projection: project_prompt.then(|| Linear::new(dev, true)),
            image_pe_projection: project_prompt.then(|| Linear::new(dev, true)),
            transformer: TwoWayTransformer::new(
                dev,
                shape.depth,
                shape.heads,
                shape.mlp_dim,
                shape.downsample_rate,
                shape.eps,
            ),
            output_hypernetworks: match fuse {
                PromptFuse::Sparse => (0..num_outputs).map(|_| Linear::new(dev, true)).collect(),
                PromptFuse::Dense => Vec::new(),
            },
            dense_output: (!sparse).then(|| Linear::new(dev, true)),
        }
    }

    /// Learnable output tokens (queries of the two-way transformer).
    pub fn num_outputs(&self) -> usize {
        self.output_tokens.shape().0
    }

    /// `image` `[B, HW, V]`, its position encoding `[1, HW, Pr]`, the dense prompt `[B, HW, Pr]`
    /// and the sparse (location) prompt `[B, P, Pr]` -> visual tokens `[B, N, M]` (sparse
    /// fusion) or `[B, HW, M]` (dense).
    pub fn forward<T: Tape<f32, D>>(
        &self,
        image: Seq<V, D, T>,
        image_pe: &Seq<Pr, D>,
        dense_prompt: Seq<Pr, D, T>,
        sparse_prompt: Seq<Pr, D, T>,
    ) -> Seq<M, D, T> {
        let batch = image.shape().0;
        let n = self.num_outputs();
        let (dense_prompt, sparse_prompt): (Seq<C, D, T>, Seq<C, D, T>) =
            match &self.prompt_projection {
                Some(p) => (p.forward(dense_prompt), p.forward(sparse_prompt)),
                None => (realize(dense_prompt), realize(sparse_prompt)),
            };
        let src = self.image_projection.forward(image) + dense_prompt;
        let outputs = self
            .output_tokens
            .retaped::<T>()
            .broadcast_like::<_, Axis<0>>(&(batch, n, C::default()));
        let queries = (outputs, sparse_prompt).concat_along(Axis::<1>);
        // A projected position encoding trains: the projection's op travels on `pe_tape`, merged
        // into the output's, and every use of `pe` below (the same tensor id, broadcast as a
        // view) adds to its gradient.
        let (pe, pe_tape): (Seq<C, D>, T) = match &self.image_pe_projection {
            Some(p) => p.forward(image_pe.retaped::<T>()).split_tape(),
            None => (realize(image_pe.clone()), T::default()),
        };
        let (hs, keys) = self.transformer.forward(src, &pe, queries);
        if let Some(dense) = &self.dense_output {
            // The LM's position bias is relative and 1-D: without the image position encoding a
            // dense visual token would not say where in the image it lies.
            let keys = keys + expand_batch(&pe, batch);
            let (out, tape) = dense.forward(keys).split_tape();
            let (_, hs_tape) = hs.split_tape();
            return out.put_tape(tape.merge(hs_tape).merge(pe_tape));
        }
        let mut tokens: Option<Seq<M, D, T>> = None;
        for (i, hyper) in self.output_hypernetworks.iter().enumerate() {
            let token = hyper.forward(hs.retaped::<T>().slice((.., i..i + 1, ..)));
            tokens = Some(match tokens {
                None => token,
                Some(prev) => (prev, token).concat_along(Axis::<1>),
            });
        }
        // The queries' tape carries every recorded op; merge it into the output.
        let (out, tape) = tokens.expect("at least one output token").split_tape();
        let (_, hs_tape) = hs.split_tape();
        out.put_tape(tape.merge(hs_tape).merge(pe_tape))
    }
}

impl<V: ConstDim, Pr: ConstDim, C: ConstDim, M: ConstDim, D: Device<f32>> Params<D>
    for PromptFeatureExtractor<V, Pr, C, M, D>
{
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        v.visit(
            &join(prefix, "output_tokens.weight"),
            &mut self.output_tokens,
        )?;
        self.image_projection
            .visit_params(&join(prefix, "image_projection_mlp.layers.0"), v)?;
        self.prompt_projection
            .visit_params(&join(prefix, "prompt_embedding_projection_mlp.layers.0"), v)?;
        self.image_pe_projection
            .visit_params(&join(prefix, "image_pe_projection_mlp.layers.0"), v)?;
        self.transformer
            .visit_params(&join(prefix, "transformer"), v)?;
        for (i, hyper) in self.output_hypernetworks.iter_mut().enumerate() {
            hyper.visit_params(
                &join(prefix, &format!("output_hypernetworks_mlps.{i}.layers.0")),
                v,
            )?;
        }
        self.dense_output
            .visit_params(&join(prefix, "dense_output_mlp.layers.0"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::params::ParamTensor;

    type Extractor = PromptFeatureExtractor<Const<6>, Const<4>, Const<8>, Const<5>, Cpu>;

    /// `sum(out²)` of the extractor on fixed inputs.
    fn loss<T: Tape<f32, Cpu>>(pfe: &Extractor, tape: T) -> Tensor<(), f32, Cpu, T> {
        let inputs: Cpu = Cpu::seed_from_u64(9);
        let image: Seq<Const<6>, Cpu> = inputs.sample_normal_like(&(2, 4, Const));
        let pe: Seq<Const<4>, Cpu> = inputs.sample_normal_like(&(1, 4, Const));
        let dense: Seq<Const<4>, Cpu> = inputs.sample_normal_like(&(2, 4, Const));
        let sparse: Seq<Const<4>, Cpu> = inputs.sample_normal_like(&(2, 2, Const));
        let out = pfe.forward(image.put_tape(tape), &pe, dense.retaped(), sparse.retaped());
        out.square().sum()
    }

    /// With a prompt width other than the transformer's, the projections of the prompt and of
    /// the image position encoding train, and their gradients are the loss's (central
    /// differences), in both fusions.
    #[test]
    fn the_prompt_and_position_projections_get_the_losss_gradient() {
        for fuse in [PromptFuse::Sparse, PromptFuse::Dense] {
            let dev: Cpu = Cpu::seed_from_u64(0);
            let shape = TwoWayShape {
                depth: 2,
                heads: 2,
                mlp_dim: 16,
                downsample_rate: 2,
                eps: 1e-5,
            };
            let mut pfe = Extractor::new(&dev, 3, shape, fuse);
            let grads = loss(&pfe, OwnedTape::default()).backward();
            let analytic = [
                pfe.image_pe_projection
                    .as_ref()
                    .unwrap()
                    .weight
                    .grad(&grads),
                pfe.prompt_projection.as_ref().unwrap().weight.grad(&grads),
            ];
            for (which, analytic) in analytic.iter().enumerate() {
                for i in [0, 7, 19, 31] {
                    let step = 1e-2;
                    let at = |pfe: &mut Extractor, delta: f32| {
                        let layer = if which == 0 {
                            pfe.image_pe_projection.as_mut().unwrap()
                        } else {
                            pfe.prompt_projection.as_mut().unwrap()
                        };
                        let mut w = layer.weight.values();
                        w[i] += delta;
                        layer.weight.set_values(&w).unwrap();
                    };
                    at(&mut pfe, step);
                    let up = loss(&pfe, NoneTape).array();
                    at(&mut pfe, -2.0 * step);
                    let down = loss(&pfe, NoneTape).array();
                    at(&mut pfe, step);
                    let numeric = (up - down) / (2.0 * step);
                    let g = analytic[i];
                    assert!(
                        (numeric - g).abs() <= 2e-2 * g.abs().max(1e-1),
                        "{fuse:?} projection {which} weight {i}: analytic {g}, numeric {numeric}"
                    );
                }
            }
        }
    }
}
