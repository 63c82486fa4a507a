//! AdamW over the trainable parameters, a warmup + cosine schedule, and global-norm clipping.
//!
//! The update runs on host vectors: it touches each parameter once per step, which is cheap next
//! to the forward and backward passes, and it keeps freezing, clipping and the resumable state
//! in one plain place.
use crate::checkpoint::{StoredTensor, TensorStore};
use crate::error::{CoreError, Result};
use crate::params::{ParamTensor, ParamVisitor, Params, Trainable};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Gradients with a slot for every trainable parameter of `model`, ready for `x.traced(grads)`.
pub fn alloc_grads<D: Device<f32>, M: Params<D> + ?Sized>(
    model: &mut M,
    trainable: &Trainable,
) -> Result<Gradients<f32, D>> {
    struct Alloc<'a, D: Device<f32>> {
        grads: Gradients<f32, D>,
        trainable: &'a Trainable,
    }
    impl<'a, D: Device<f32>> ParamVisitor<D> for Alloc<'a, D> {
        fn visit(&mut self, name: &str, t: &mut dyn ParamTensor<D>) -> Result<()> {
            if self.trainable.is_trainable(name) {
                t.alloc_grad(&mut self.grads)
                    .map_err(|e| CoreError::Invalid(format!("`{name}`: {e}")))?;
            }
            Ok(())
        }
    }
    let mut alloc = Alloc {
        grads: Gradients::leaky(),
        trainable,
    };
    model.visit_params("", &mut alloc)?;
    Ok(alloc.grads)
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// In [0, 1).
    #[serde(deserialize_with = "crate::config::range::decay_rate")]
    pub beta1: f32,
    /// In [0, 1).
    #[serde(deserialize_with = "crate::config::range::decay_rate")]
    pub beta2: f32,
    /// > 0.
    #[serde(deserialize_with = "crate::config::range::positive")]
    pub eps: f32,
    /// Decoupled weight decay, applied to matrices only (not to biases and norm scales); >= 0.
    #[serde(deserialize_with = "crate::config::range::non_negative")]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value (> 0); absent disables clipping.
    #[serde(default, deserialize_with = "crate::config::range::optional_positive")]
    pub clip_grad_norm: Option<f32>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            clip_grad_norm: Some(1.0),
        }
    }
}

/// What one optimizer step saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub lr: f32,
}

/// AdamW (Loshchilov & Hutter) with moments kept per parameter name.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    moments: HashMap<String, (Vec<f32>, Vec<f32>)>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            moments: HashMap::new(),
        }
    }

    /// Updates the trainable parameters of `model` from `grads` with learning rate `lr`.
    /// Errors, changing nothing, when a gradient is not finite; errors when an updated weight
    /// would not be finite (that tensor keeps its old values, those updated before it do not:
    /// the caller abandons the model, as the trainer does).
    pub fn update<D: Device<f32>, M: Params<D> + ?Sized>(
        &mut self,
        model: &mut M,
        grads: &Gradients<f32, D>,
        trainable: &Trainable,
        lr: f32,
    ) -> Result<StepStats> {
        self.update_summed(model, std::slice::from_ref(grads), trainable, lr)
    }

    /// [`AdamW::update`] from the sum of several gradients of the same parameters (the shards
    /// of a data-parallel step), added in the order given.
    pub fn update_summed<D: Device<f32>, M: Params<D> + ?Sized>(
        &mut self,
        model: &mut M,
        grads: &[Gradients<f32, D>],
        trainable: &Trainable,
        lr: f32,
    ) -> Result<StepStats> {
        struct Gather<'a, D: Device<f32>> {
            grads: &'a [Gradients<f32, D>],
            trainable: &'a Trainable,
            found: Vec<(String, Vec<f32>)>,
        }
        impl<'a, D: Device<f32>> ParamVisitor<D> for Gather<'a, D> {
            fn visit(&mut self, name: &str, t: &mut dyn ParamTensor<D>) -> Result<()> {
                if !self.trainable.is_trainable(name) {
                    return Ok(());
                }
                let Some((first, rest)) = self.grads.split_first() else {
                    return Err(CoreError::Invalid("no gradients to apply".into()));
                };
                let mut sum = t.grad(first);
                for shard in rest {
                    for (s, g) in sum.iter_mut().zip(t.grad(shard)) {
                        *s += g;
                    }
                }
                self.found.push((name.to_string(), sum));
                Ok(())
            }
        }
        let mut gather = Gather {
            grads,
            trainable,
            found: Vec::new(),
        };
        model.visit_params("", &mut gather)?;
        let mut sum_squares = 0.0f64;
        for (name, g) in &gather.found {
            let s: f64 = g.iter().map(|&v| (v as f64) * (v as f64)).sum();
            if !s.is_finite() {
                return Err(CoreError::Invalid(format!(
                    "the gradient of `{name}` is not finite (NaN or inf)"
                )));
            }
            sum_squares += s;
        }
        let grad_norm = sum_squares.sqrt() as f32;
        let clip = match self.config.clip_grad_norm {
            Some(max) if grad_norm > max => max / grad_norm,
            _ => 1.0,
        };
        self.step += 1;
        let grads: HashMap<String, Vec<f32>> = gather.found.into_iter().collect();
        let mut apply = Apply {
            opt: self,
            grads: &grads,
            lr,
            clip,
        };
        model.visit_params("", &mut apply)?;
        Ok(StepStats { grad_norm, lr })
    }

    /// The moments and step as tensors `m.<name>`, `v.<name>`, for resumable checkpoints.
    pub fn state(&self) -> TensorStore {
        let mut store = TensorStore::default();
        for (name, (m, v)) in &self.moments {
            store.insert(
                format!("m.{name}"),
                StoredTensor::f32(vec![m.len()], m.clone()),
            );
            store.insert(
                format!("v.{name}"),
                StoredTensor::f32(vec![v.len()], v.clone()),
            );
        }
        store.metadata.insert("step".into(), self.step.to_string());
        store
    }

    /// Restores what [`AdamW::state`] saved.
    pub fn load_state(&mut self, store: &TensorStore) -> Result<()> {
        let step = store
            .metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CoreError::CheckpointFormat {
                path: store.origin.clone(),
                message: "optimizer state has no `step` metadata".into(),
            })?;
        let mut moments = HashMap::new();
        for (key, tensor) in &store.tensors {
            if let Some(name) = key.strip_prefix("m.") {
                let v = store.require(&format!("v.{name}"))?;
                moments.insert(name.to_string(), (tensor.to_f32(), v.to_f32()));
            }
        }
        self.step = step;
        self.moments = moments;
        Ok(())
    }
}

struct Apply<'a> {
    opt: &'a mut AdamW,
    grads: &'a HashMap<String, Vec<f32>>,
    lr: f32,
    clip: f32,
}

impl<'a, D: Device<f32>> ParamVisitor<D> for Apply<'a> {
    fn visit(&mut self, name: &str, t: &mut dyn ParamTensor<D>) -> Result<()> {
        let Some(grad) = self.grads.get(name) else {
            return Ok(());
        };
        let c = self.opt.config;
        let mut values = t.values();
        let (m, v) = self
            .opt
            .moments
            .entry(name.to_string())
            .or_insert_with(|| (vec![0.0; values.len()], vec![0.0; values.len()]));
        if m.len() != values.len() {
            return Err(CoreError::Shape(format!(
                "optimizer state of `{name}` has {} entries, the parameter {}",
                m.len(),
                values.len()
            )));
        }
        let step = self.opt.step as i32;
        let bias1 = 1.0 - c.beta1.powi(step);
        let bias2 = 1.0 - c.beta2.powi(step);
        let decay = if t.dims().len() >= 2 {
            c.weight_decay
        } else {
            0.0
        };
        for i in 0..values.len() {
            let g = grad[i] * self.clip;
            m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g;
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g * g;
            let update = (m[i] / bias1) / ((v[i] / bias2).sqrt() + c.eps);
            values[i] -= self.lr * (update + decay * values[i]);
        }
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(CoreError::Invalid(format!(
                "the update of `{name}` gives a non-finite weight ({bad}) at learning rate {}",
                self.lr
            )));
        }
        t.set_values(&values)
    }
}

/// Linear warmup from 0 to `peak_lr`, then cosine decay to `peak_lr * final_ratio`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupCosine {
    pub peak_lr: f32,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub final_ratio: f32,
}

impl WarmupCosine {
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f32 / span as f32).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
        self.peak_lr * (self.final_ratio + (1.0 - self.final_ratio) * cosine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Linear;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = WarmupCosine {
            peak_lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            final_ratio: 0.1,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-6);
        assert!((s.lr(9) - 1.0).abs() < 1e-6);
        assert!((s.lr(10) - 1.0).abs() < 1e-6);
        assert!((s.lr(110) - 0.1).abs() < 1e-6);
        assert!(s.lr(60) < 1.0 && s.lr(60) > 0.1);
    }

    #[test]
    fn adamw_fits_a_linear_map_and_skips_frozen_params() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let mut lin = Linear::<Const<3>, Const<1>, Cpu>::new(&dev, true);
        let frozen_bias = lin.bias.as_ref().unwrap().as_vec();
        let trainable = Trainable::all().freeze("bias");
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        });
        let x: Tensor<(usize, usize, Const<3>), f32, Cpu> = dev.sample_normal_like(&(1, 64, Const));
        let target: Vec<f32> = x
            .as_vec()
            .chunks(3)
            .map(|r| r[0] - 2.0 * r[1] + 0.5 * r[2] + frozen_bias[0])
            .collect();
        let mut last = f32::MAX;
        for _ in 0..300 {
            let grads = alloc_grads(&mut lin, &trainable).unwrap();
            let y = lin.forward(x.clone().traced(grads));
            let loss = crate::loss::masked_l1(y, &target, &vec![1.0; 64]).unwrap();
            last = loss.array();
            let grads = loss.backward();
            opt.update(&mut lin, &grads, &trainable, 0.05).unwrap();
        }
        assert!(last < 0.05, "loss {last}");
        assert_eq!(lin.bias.as_ref().unwrap().as_vec(), frozen_bias);
        let w = lin.weight.values();
        assert!((w[1] + 2.0).abs() < 0.1, "{w:?}");
    }

    #[test]
    fn shard_gradients_update_as_their_sum_does() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let lin = Linear::<Const<3>, Const<2>, Cpu>::new(&dev, true);
        let x: Tensor<(usize, usize, Const<3>), f32, Cpu> = dev.sample_normal_like(&(2, 5, Const));
        let loss_of = |lin: &mut Linear<Const<3>, Const<2>, Cpu>, rows: std::ops::Range<usize>| {
            let grads = alloc_grads(lin, &Trainable::all()).unwrap();
            let part = x
                .clone()
                .slice((rows, .., ..))
                .realize::<(usize, usize, Const<3>)>();
            lin.forward(part.traced(grads)).square().sum()
        };
        let (mut whole, mut sharded) = (lin.clone(), lin);
        let mut opt_whole = AdamW::new(AdamWConfig::default());
        let mut opt_sharded = AdamW::new(AdamWConfig::default());
        let both = loss_of(&mut whole, 0..2).backward();
        opt_whole
            .update(&mut whole, &both, &Trainable::all(), 0.1)
            .unwrap();
        let shards = [
            loss_of(&mut sharded, 0..1).backward(),
            loss_of(&mut sharded, 1..2).backward(),
        ];
        let stats = opt_sharded
            .update_summed(&mut sharded, &shards, &Trainable::all(), 0.1)
            .unwrap();
        assert!(stats.grad_norm > 0.0);
        for (a, b) in whole.weight.values().iter().zip(sharded.weight.values()) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert!(opt_sharded
            .update_summed(&mut sharded, &[], &Trainable::all(), 0.1)
            .is_err());
    }

    #[test]
    fn a_frozen_layer_kept_on_the_host_stays_put_while_the_rest_trains() {
        struct TwoLayers {
            first: Linear<Const<4>, Const<4>, Cpu>,
            second: Linear<Const<4>, Const<2>, Cpu>,
        }
        impl Params<Cpu> for TwoLayers {
            fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<Cpu>) -> Result<()> {
                self.first
                    .visit_params(&crate::params::join(prefix, "first"), v)?;
                self.second
                    .visit_params(&crate::params::join(prefix, "second"), v)
            }
        }
        let dev: Cpu = Cpu::seed_from_u64(5);
        let mut model = TwoLayers {
            first: Linear::new(&dev, true),
            second: Linear::new(&dev, true),
        };
        let trainable = Trainable::all().freeze("second.*");
        let moved = crate::params::keep_frozen_on_host(
            &mut model,
            "",
            &trainable,
            crate::host_matrix::Dtype::Bf16,
        )
        .unwrap();
        // The weight moves; the bias, frozen too, stays a tensor.
        assert_eq!((moved.tensors, moved.scalars, moved.bytes), (1, 8, 16));
        assert_eq!(crate::params::frozen_on_host(&mut model), moved);
        assert!(model.first.weight.tensor().is_some());
        let frozen = model.second.weight.values();
        let first_before = model.first.weight.values();
        let mut opt = AdamW::new(AdamWConfig::default());
        let x: Tensor<(usize, usize, Const<4>), f32, Cpu> = dev.sample_normal_like(&(2, 3, Const));
        for _ in 0..3 {
            let grads = alloc_grads(&mut model, &trainable).unwrap();
            let h = model.first.forward(x.clone().traced(grads)).tanh();
            let loss = model.second.forward(h).square().mean();
            opt.update(&mut model, &loss.backward(), &trainable, 0.1)
                .unwrap();
        }
        assert_eq!(model.second.weight.values(), frozen);
        assert_ne!(model.first.weight.values(), first_before);
        // Training a host weight is refused, naming it.
        let err = alloc_grads(&mut model, &Trainable::all())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`second.weight`"), "{err}");
    }

    #[test]
    fn state_round_trips() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let mut lin = Linear::<Const<2>, Const<2>, Cpu>::new(&dev, false);
        let mut opt = AdamW::new(AdamWConfig::default());
        let grads = alloc_grads(&mut lin, &Trainable::all()).unwrap();
        let x: Tensor<(usize, usize, Const<2>), f32, Cpu> = dev.ones_like(&(1, 1, Const));
        let loss = lin.forward(x.traced(grads)).sum();
        opt.update(&mut lin, &loss.backward(), &Trainable::all(), 0.1)
            .unwrap();
        let mut restored = AdamW::new(AdamWConfig::default());
        restored.load_state(&opt.state()).unwrap();
        assert_eq!(restored.step, 1);
        assert_eq!(restored.moments, opt.moments);
    }

    #[test]
    fn an_update_to_a_non_finite_weight_is_an_error_naming_the_tensor() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let mut lin = Linear::<Const<2>, Const<2>, Cpu>::new(&dev, false);
        let before = lin.weight.values();
        let mut opt = AdamW::new(AdamWConfig::default());
        let grads = alloc_grads(&mut lin, &Trainable::all()).unwrap();
        let x: Tensor<(usize, usize, Const<2>), f32, Cpu> = dev.ones_like(&(1, 1, Const));
        let loss = lin.forward(x.traced(grads)).sum();
        let err = opt
            .update(&mut lin, &loss.backward(), &Trainable::all(), f32::MAX)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("the update of `weight` gives a non-finite weight"),
            "{err}"
        );
        assert_eq!(lin.weight.values(), before, "the tensor keeps its values");
    }
}
