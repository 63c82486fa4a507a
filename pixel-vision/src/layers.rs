//! Layers whose dims may be chosen at run time (`usize`) as well as by type (`Const<N>`).
//!
//! pixel-core's layers fix every dim by type. Inside the vision models only the model widths
//! are types (so presets are types and wiring is checked); inner widths (qkv, MLP hidden, the
//! attention inner dim of SAM's decoder, upscaling channels) are run-time `usize`, which keeps
//! presets writable outside this crate on stable Rust (no `{ 3 * N }` in types).
use dfdx::prelude::*;
use pixel_core::nn::{layer_norm, Activation, LinearWeight};
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_core::Result;
use rand_distr::Uniform;

/// `[batch, tokens, channels]` with any channel dim type.
pub type Tokens<C, D, T = NoneTape> = Tensor<(usize, usize, C), f32, D, T>;

/// `[batch, heads, tokens, head_dim]`.
pub type Heads<D, T = NoneTape> = Tensor<(usize, usize, usize, usize), f32, D, T>;

/// `y = x W^T + b`, `W` stored `[out, in]` as in PyTorch; either dim may be a type or a `usize`.
#[derive(Debug, Clone)]
pub struct Dense<I: Dim, O: Dim, D: Device<f32>> {
    pub weight: LinearWeight<I, O, D>,
    pub bias: Option<Tensor<(O,), f32, D>>,
}

impl<I: Dim, O: Dim, D: Device<f32>> Dense<I, O, D> {
    /// PyTorch's default initialisation `U(-1/sqrt(in), 1/sqrt(in))`.
    pub fn new(dev: &D, input: I, output: O, bias: bool) -> Self {
        let bound = 1.0 / (input.size().max(1) as f32).sqrt();
        let dist = Uniform::new(-bound, bound);
        Dense {
            weight: LinearWeight::Tensor(dev.sample_like(&(output, input), dist)),
            bias: bias.then(|| dev.sample_like(&(output,), dist)),
        }
    }

    pub fn out_dim(&self) -> O {
        O::from_size(self.weight.shape().0).expect("the weight's rows are the output dim")
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Tokens<I, D, T>) -> Tokens<O, D, T> {
        let y = self.weight.matmul_t(x);
        match &self.bias {
            Some(b) => {
                let shape = *y.shape();
                y + b.retaped::<T>().broadcast_like::<_, Axes2<0, 1>>(&shape)
            }
            None => y,
        }
    }
}

impl<I: Dim, O: Dim, D: Device<f32>> Params<D> for Dense<I, O, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(&join(prefix, "weight"), &mut self.weight)?;
        self.bias.visit_params(&join(prefix, "bias"), v)
    }
}

/// LayerNorm over the last axis with affine `weight` and `bias`; also SAM's `LayerNorm2d` when
/// applied to a feature map stored as tokens.
#[derive(Debug, Clone)]
pub struct Norm<C: Dim, D: Device<f32>> {
    pub weight: Tensor<(C,), f32, D>,
    pub bias: Tensor<(C,), f32, D>,
    pub eps: f64,
}

impl<C: Dim, D: Device<f32>> Norm<C, D> {
    pub fn new(dev: &D, channels: C, eps: f64) -> Self {
        Norm {
            weight: dev.ones_like(&(channels,)),
            bias: dev.zeros_like(&(channels,)),
            eps,
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Tokens<C, D, T>) -> Tokens<C, D, T> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

impl<C: Dim, D: Device<f32>> Params<D> for Norm<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(&join(prefix, "weight"), &mut self.weight)?;
        v.visit(&join(prefix, "bias"), &mut self.bias)
    }
}

/// Two linear layers with an activation between: SAM's `MLPBlock` (`lin1`, `lin2`).
#[derive(Debug, Clone)]
pub struct MlpBlock<C: Dim, D: Device<f32>> {
    pub lin1: Dense<C, usize, D>,
    pub lin2: Dense<usize, C, D>,
    pub activation: Activation,
}

impl<C: Dim, D: Device<f32>> MlpBlock<C, D> {
    pub fn new(dev: &D, channels: C, hidden: usize, activation: Activation) -> Self {
        MlpBlock {
            lin1: Dense::new(dev, channels, hidden, true),
            lin2: Dense::new(dev, hidden, channels, true),
            activation,
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Tokens<C, D, T>) -> Tokens<C, D, T> {
        self.lin2
            .forward(self.activation.apply(self.lin1.forward(x)))
    }
}

impl<C: Dim, D: Device<f32>> Params<D> for MlpBlock<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.lin1.visit_params(&join(prefix, "lin1"), v)?;
        self.lin2.visit_params(&join(prefix, "lin2"), v)
    }
}

/// HF's `SamFeedForward` / segment-anything's `MLP`: `depth` linear layers with ReLU between,
/// named `proj_in`, `layers.0 ..`, `proj_out` (HF; official `layers.0 .. layers.{depth-1}` is
/// mapped on load).
#[derive(Debug, Clone)]
pub struct FeedForward<I: Dim, O: Dim, D: Device<f32>> {
    pub proj_in: Dense<I, usize, D>,
    pub layers: Vec<Dense<usize, usize, D>>,
    pub proj_out: Dense<usize, O, D>,
}

impl<I: Dim, O: Dim, D: Device<f32>> FeedForward<I, O, D> {
    pub fn new(dev: &D, input: I, hidden: usize, output: O, depth: usize) -> Self {
        assert!(
            depth >= 2,
            "a feed-forward head needs 2 or more layers, got {depth}"
        );
        FeedForward {
            proj_in: Dense::new(dev, input, hidden, true),
            layers: (0..depth - 2)
                .map(|_| Dense::new(dev, hidden, hidden, true))
                .collect(),
            proj_out: Dense::new(dev, hidden, output, true),
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Tokens<I, D, T>) -> Tokens<O, D, T> {
        let mut h = self.proj_in.forward(x).relu();
        for layer in &self.layers {
            h = layer.forward(h).relu();
        }
        self.proj_out.forward(h)
    }
}

impl<I: Dim, O: Dim, D: Device<f32>> Params<D> for FeedForward<I, O, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.proj_in.visit_params(&join(prefix, "proj_in"), v)?;
        self.layers.visit_params(&join(prefix, "layers"), v)?;
        self.proj_out.visit_params(&join(prefix, "proj_out"), v)
    }
}

/// `[batch, tokens, heads * head_dim]` -> `[batch, heads, tokens, head_dim]` for any channel type.
pub fn to_heads<C: Dim, D: Device<f32>, T: Tape<f32, D>>(
    x: Tokens<C, D, T>,
    heads: usize,
) -> Heads<D, T> {
    let (b, n, c) = *x.shape();
    let c = c.size();
    assert_eq!(c % heads, 0, "{c} channels do not split into {heads} heads");
    x.reshape_like(&(b, n, heads, c / heads))
        .permute::<_, Axes4<0, 2, 1, 3>>()
}

/// `[batch, heads, tokens, head_dim]` -> `[batch, tokens, channels]`.
pub fn from_heads<C: Dim, D: Device<f32>, T: Tape<f32, D>>(
    x: Heads<D, T>,
    channels: C,
) -> Tokens<C, D, T> {
    let (b, h, n, dk) = *x.shape();
    assert_eq!(
        h * dk,
        channels.size(),
        "{h} heads of {dk} do not make {} channels",
        channels.size()
    );
    x.permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(b, n, channels))
}

/// Tokens `[batch, n, C]` sliced to channels `range` (a run-time dim).
pub fn slice_channels<C: Dim, D: Device<f32>, T: Tape<f32, D>>(
    x: Tokens<C, D, T>,
    range: std::ops::Range<usize>,
) -> Tokens<usize, D, T> {
    x.slice((.., .., range))
}

/// Tokens `[batch, n, C]` sliced to tokens `range`.
pub fn slice_tokens<C: Dim, D: Device<f32>, T: Tape<f32, D>>(
    x: Tokens<C, D, T>,
    range: std::ops::Range<usize>,
) -> Tokens<C, D, T> {
    x.slice((.., range, ..))
}

/// A tensor of type `[1 or batch, n, C]` broadcast (no copy) to `[batch, n, C]`.
pub fn expand_batch<C: Dim, D: Device<f32>>(x: &Tokens<C, D>, batch: usize) -> Tokens<C, D> {
    let (b, n, c) = *x.shape();
    if b == batch {
        return x.clone();
    }
    assert_eq!(b, 1, "cannot expand a batch of {b} to {batch}");
    x.clone()
        .reshape_like(&(n, c))
        .broadcast_like::<_, Axis<0>>(&(batch, n, c))
}

/// Moves all of `b`'s recorded operations onto `a`'s tape, so gradients through `b`'s history
/// reach the loss even when the caller only uses `a`.
#[allow(clippy::type_complexity)]
pub fn merge_tapes<S1: Shape, S2: Shape, D: Device<f32>, T: Tape<f32, D>>(
    a: Tensor<S1, f32, D, T>,
    b: Tensor<S2, f32, D, T>,
) -> (Tensor<S1, f32, D, T>, Tensor<S2, f32, D, T>) {
    let (a, ta) = a.split_tape();
    let (b, tb) = b.split_tape();
    (a.put_tape(ta.merge(tb)), b.put_tape(T::default()))
}

/// Re-types a tensor's dims (e.g. `Const<N>` <-> `usize`) without copying; panics if the sizes
/// differ, which is a wiring bug.
pub fn realize<S1: Shape, S2: Shape<Concrete = S1::Concrete>, D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor<S1, f32, D, T>,
) -> Tensor<S2, f32, D, T> {
    match x.try_realize::<S2>() {
        Ok(t) => t,
        Err(t) => panic!(
            "cannot re-type a tensor of shape {:?}",
            t.shape().concrete()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::params::ParamTensor;
    use pixel_core::testing::assert_close;

    #[test]
    fn dense_with_runtime_dims_matches_a_direct_loop() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let lin = Dense::<usize, usize, Cpu>::new(&dev, 3, 2, true);
        let x: Tokens<usize, Cpu> = dev.sample_normal_like(&(2, 4, 3));
        let y = lin.forward(x.clone()).as_vec();
        let (xv, w, b) = (
            x.as_vec(),
            lin.weight.values(),
            lin.bias.as_ref().unwrap().as_vec(),
        );
        let want: Vec<f32> = xv
            .chunks(3)
            .flat_map(|row| {
                (0..2)
                    .map(|o| b[o] + (0..3).map(|i| w[o * 3 + i] * row[i]).sum::<f32>())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_close(&y, &want, 1e-5);
    }

    #[test]
    fn dense_weights_receive_gradients() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let lin = Dense::<Const<3>, usize, Cpu>::new(&dev, Const, 5, true);
        let x: Tokens<Const<3>, Cpu> = dev.sample_normal_like(&(1, 2, Const));
        let loss = lin.forward(x.leaky_trace()).square().sum();
        let grads = loss.backward();
        assert!(lin.weight.grad(&grads).iter().any(|g| *g != 0.0));
        assert!(grads
            .get(lin.bias.as_ref().unwrap())
            .as_vec()
            .iter()
            .any(|g| *g != 0.0));
    }
}
