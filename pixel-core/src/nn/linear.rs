//! Linear layers, with an optional LoRA adapter.
use crate::error::{CoreError, Result};
use crate::host_matrix::{Dtype, HostMatrix};
use crate::nn::{frozen_matmul_t, Seq};
use crate::params::{join, ParamTensor, ParamVisitor, Params};
use dfdx::prelude::*;
use rand_distr::Uniform;
use std::any::TypeId;
use std::sync::Arc;

/// `y = x W^T + b`, with `W` stored `[out, in]` as in PyTorch checkpoints.
#[derive(Debug, Clone)]
pub struct Linear<I: ConstDim, O: ConstDim, D: Device<f32>> {
    pub weight: LinearWeight<I, O, D>,
    pub bias: Option<Tensor<(O,), f32, D>>,
}

/// Where a linear layer's `[out, in]` weight lives ([`Linear`]; pixel-vision's `Dense`, whose
/// dims may be run-time `usize`).
///
/// A frozen weight kept as a dfdx tensor still costs what a trained one does: f32 storage, and
/// in every backward pass a weight gradient as large as the weight. A frozen 2.85 G-parameter
/// T5 under LoRA then needs 11.4 GB of weights and another 11.4 GB of gradients. Kept on the
/// host in bf16 it needs 5.7 GB and no gradient ([`frozen_matmul_t`]).
#[derive(Debug, Clone)]
pub enum LinearWeight<I: Dim, O: Dim, D: Device<f32>> {
    /// On the device, trainable.
    Tensor(Tensor<(O, I), f32, D>),
    /// Frozen on the host in f32, bf16 or f16 (CPU device only); gradients reach the input,
    /// never the weight.
    Host(Arc<HostMatrix>),
}

impl<I: Dim, O: Dim, D: Device<f32>> LinearWeight<I, O, D> {
    /// The dfdx tensor, when the weight is one.
    pub fn tensor(&self) -> Option<&Tensor<(O, I), f32, D>> {
        match self {
            LinearWeight::Tensor(t) => Some(t),
            LinearWeight::Host(_) => None,
        }
    }

    /// The host matrix, when the weight is frozen on the host.
    pub fn host(&self) -> Option<&Arc<HostMatrix>> {
        match self {
            LinearWeight::Tensor(_) => None,
            LinearWeight::Host(m) => Some(m),
        }
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            LinearWeight::Tensor(t) => (t.shape().0.size(), t.shape().1.size()),
            LinearWeight::Host(m) => (m.rows(), m.cols()),
        }
    }

    /// `x W^T` for every token of a `[batch, tokens, in]` tensor.
    pub fn matmul_t<T: Tape<f32, D>>(
        &self,
        x: Tensor<(usize, usize, I), f32, D, T>,
    ) -> Tensor<(usize, usize, O), f32, D, T> {
        match self {
            LinearWeight::Tensor(w) => x.matmul(w.retaped::<T>().permute::<(I, O), Axes2<1, 0>>()),
            LinearWeight::Host(w) => frozen_matmul_t(x, w),
        }
    }
}

impl<I: Dim, O: Dim, D: Device<f32>> ParamTensor<D> for LinearWeight<I, O, D> {
    fn dims(&self) -> Vec<usize> {
        let (out, inp) = self.shape();
        vec![out, inp]
    }

    fn values(&self) -> Vec<f32> {
        match self {
            LinearWeight::Tensor(t) => t.as_vec(),
            LinearWeight::Host(m) => m.to_f32(),
        }
    }

    fn set_values(&mut self, values: &[f32]) -> Result<()> {
        match self {
            LinearWeight::Tensor(t) => t.set_values(values),
            LinearWeight::Host(m) => {
                let (rows, cols) = (m.rows(), m.cols());
                if values.len() != rows * cols {
                    return Err(CoreError::Shape(format!(
                        "{} values for a [{rows}, {cols}] weight",
                        values.len()
                    )));
                }
                *m = Arc::new(HostMatrix::from_f32(rows, cols, values.to_vec(), m.dtype()));
                Ok(())
            }
        }
    }

    fn alloc_grad(&self, grads: &mut Gradients<f32, D>) -> Result<()> {
        match self {
            LinearWeight::Tensor(t) => t.alloc_grad(grads),
            LinearWeight::Host(m) => Err(CoreError::Invalid(format!(
                "the weight is frozen on the host in {}: it cannot be trained",
                m.dtype()
            ))),
        }
    }

    fn grad(&self, grads: &Gradients<f32, D>) -> Vec<f32> {
        match self {
            LinearWeight::Tensor(t) => t.grad(grads),
            LinearWeight::Host(_) => panic!("a weight frozen on the host has no gradient"),
        }
    }

    fn host_dtype(&self) -> Option<Dtype> {
        self.host().map(|m| m.dtype())
    }

    fn keep_frozen_on_host(&mut self, dtype: Dtype) -> Result<bool> {
        if TypeId::of::<D>() != TypeId::of::<Cpu>() {
            return Err(CoreError::Invalid(
                "frozen weights can be kept on the host only with the CPU device".into(),
            ));
        }
        let (rows, cols) = self.shape();
        let values = self.values();
        *self = LinearWeight::Host(Arc::new(HostMatrix::from_f32(rows, cols, values, dtype)));
        Ok(true)
    }
}

impl<I: ConstDim, O: ConstDim, D: Device<f32>> Linear<I, O, D> {
    /// PyTorch's default initialisation: `U(-1/sqrt(in), 1/sqrt(in))` for weight and bias.
    pub fn new(dev: &D, bias: bool) -> Self {
        let bound = 1.0 / (I::SIZE as f32).sqrt();
        let dist = Uniform::new(-bound, bound);
        Linear {
            weight: LinearWeight::Tensor(dev.sample_like(&(O::default(), I::default()), dist)),
            bias: bias.then(|| dev.sample_like(&(O::default(),), dist)),
        }
    }

    /// Applies the layer to every token of a `[batch, tokens, in]` tensor.
    pub fn forward<T: Tape<f32, D>>(&self, x: Seq<I, D, T>) -> Seq<O, D, T> {
        let y = self.weight.matmul_t(x);
        match &self.bias {
            Some(b) => {
                let shape = *y.shape();
                y + b.clone().broadcast_like::<_, Axes2<0, 1>>(&shape)
            }
            None => y,
        }
    }
}

impl<I: ConstDim, O: ConstDim, D: Device<f32>> Params<D> for Linear<I, O, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(&join(prefix, "weight"), &mut self.weight)?;
        self.bias.visit_params(&join(prefix, "bias"), v)
    }
}

/// The low-rank update `scale * B A x` of LoRA (Hu et al. 2021), with a rank chosen at run time.
#[derive(Debug, Clone)]
pub struct LoraAdapter<I: ConstDim, O: ConstDim, D: Device<f32>> {
    /// `[rank, in]`, Kaiming-uniform initialised as in peft.
    pub a: Tensor<(usize, I), f32, D>,
    /// `[out, rank]`, zero initialised so that a fresh adapter leaves the base layer unchanged.
    pub b: Tensor<(O, usize), f32, D>,
    pub scale: f32,
}

impl<I: ConstDim, O: ConstDim, D: Device<f32>> LoraAdapter<I, O, D> {
    pub fn new(dev: &D, rank: usize, scale: f32) -> Self {
        let bound = 1.0 / (I::SIZE as f32).sqrt();
        LoraAdapter {
            a: dev.sample_like(&(rank, I::default()), Uniform::new(-bound, bound)),
            b: dev.zeros_like(&(O::default(), rank)),
            scale,
        }
    }

    pub fn rank(&self) -> usize {
        self.a.shape().0
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Seq<I, D, T>) -> Seq<O, D, T> {
        let rank = self.rank();
        let down = x.matmul(self.a.clone().permute::<(I, usize), Axes2<1, 0>>());
        let up = down.matmul(self.b.clone().permute::<(usize, O), Axes2<1, 0>>());
        debug_assert_eq!(rank, self.b.shape().1);
        up * self.scale
    }
}

impl<I: ConstDim, O: ConstDim, D: Device<f32>> Params<D> for LoraAdapter<I, O, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(&join(prefix, "lora_A.weight"), &mut self.a)?;
        v.visit(&join(prefix, "lora_B.weight"), &mut self.b)
    }
}

/// A linear layer that may carry a LoRA adapter. The base keeps the reference checkpoint's
/// names (`q.weight`); the adapter adds `q.lora_A.weight` and `q.lora_B.weight` (peft's names).
#[derive(Debug, Clone)]
pub struct LoraLinear<I: ConstDim, O: ConstDim, D: Device<f32>> {
    pub base: Linear<I, O, D>,
    pub lora: Option<LoraAdapter<I, O, D>>,
}

impl<I: ConstDim, O: ConstDim, D: Device<f32>> LoraLinear<I, O, D> {
    pub fn new(dev: &D, bias: bool) -> Self {
        LoraLinear {
            base: Linear::new(dev, bias),
            lora: None,
        }
    }

    /// Attaches a fresh adapter (B = 0, so outputs are unchanged until it is trained).
    pub fn add_lora(&mut self, dev: &D, rank: usize, scale: f32) {
        self.lora = Some(LoraAdapter::new(dev, rank, scale));
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Seq<I, D, T>) -> Seq<O, D, T> {
        match &self.lora {
            Some(lora) => {
                let update = lora.forward(x.retaped::<T>());
                self.base.forward(x) + update
            }
            None => self.base.forward(x),
        }
    }
}

impl<I: ConstDim, O: ConstDim, D: Device<f32>> Params<D> for LoraLinear<I, O, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.base.visit_params(prefix, v)?;
        self.lora.visit_params(prefix, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_close;
    use proptest::prelude::*;

    type L = LoraLinear<Const<6>, Const<5>, Cpu>;

    #[test]
    fn linear_matches_a_direct_loop() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let lin = Linear::<Const<3>, Const<2>, Cpu>::new(&dev, true);
        let x = dev.sample_normal_like(&(2usize, 4usize, Const::<3>));
        let y = lin.forward(x.clone()).as_vec();
        let (xv, w, b) = (
            x.as_vec(),
            lin.weight.values(),
            lin.bias.as_ref().unwrap().as_vec(),
        );
        for t in 0..8 {
            for o in 0..2 {
                let expected: f32 =
                    (0..3).map(|i| xv[t * 3 + i] * w[o * 3 + i]).sum::<f32>() + b[o];
                assert!((y[t * 2 + o] - expected).abs() < 1e-5);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn lora_with_zero_b_equals_base(seed in 0u64..1000, rank in 1usize..5, scale in -4.0f32..4.0) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let mut layer = L::new(&dev, true);
            let x = dev.sample_normal_like(&(2usize, 3usize, Const::<6>));
            let base = layer.forward(x.clone()).as_vec();
            layer.add_lora(&dev, rank, scale);
            assert_close(&layer.forward(x).as_vec(), &base, 1e-6);
        }

        #[test]
        fn lora_adds_scale_times_b_a_x(seed in 0u64..1000, rank in 1usize..5) {
            let dev: Cpu = Cpu::seed_from_u64(seed);
            let mut layer = L::new(&dev, false);
            layer.add_lora(&dev, rank, 2.0);
            let lora = layer.lora.as_mut().unwrap();
            lora.b = dev.sample_normal_like(&(Const::<5>, rank));
            let x = dev.sample_normal_like(&(1usize, 1usize, Const::<6>));
            let (xv, a, b, w) = (x.as_vec(), lora.a.as_vec(), lora.b.as_vec(), layer.base.weight.values());
            let y = layer.forward(x).as_vec();
            for o in 0..5 {
                let base: f32 = (0..6).map(|i| w[o * 6 + i] * xv[i]).sum();
                let ax: Vec<f32> = (0..rank).map(|r| (0..6).map(|i| a[r * 6 + i] * xv[i]).sum()).collect();
                let update: f32 = (0..rank).map(|r| b[o * rank + r] * ax[r]).sum();
                prop_assert!((y[o] - (base + 2.0 * update)).abs() < 1e-4);
            }
        }
    }
}
