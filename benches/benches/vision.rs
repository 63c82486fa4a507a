//! Image-encoder forward passes on CPU, batch 1: SAM ViT-B at 1024 px and EVA02-L at 448 px
//! (random weights; the cost does not depend on them), each both as the dfdx model (`*_dfdx`,
//! what training runs, here without a tape) and as its host inference path
//! (`HostSamImageEncoder`, `HostEva02`: the rows without a suffix). `tools/time_torch_vision.py` times the
//! PyTorch references on the same shapes. Also one EVA02-L attention at 384 px trained
//! (forward and backward): dfdx's ops against the fused host kernel `nn::attention` takes.
//!
//!     cargo bench -p pixel-benches --bench vision
//!     cargo bench -p pixel-benches --bench vision -- attention_taped --noplot   # attention only
//!
//! Criterion's minimum of 10 samples makes this slow: about 10 forward passes per model
//! (~30 s each for SAM ViT-B and ~17 s for EVA02-L on 2 cores), so ~8 minutes in all.
use criterion::{criterion_group, criterion_main, Criterion};
use dfdx::prelude::*;
use pixel_core::host_matrix::Dtype;
use pixel_vision::presets::{Eva02Large, Eva02Preset, SamPreset, SamVitB};
use pixel_vision::sam::HostSamImageEncoder;
use pixel_vision::HostEva02;
use std::time::Duration;

fn encoders(c: &mut Criterion) {
    let dev: Cpu = Cpu::seed_from_u64(0);
    let mut group = c.benchmark_group("vision");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(20));

    let sam = SamVitB::build(&dev).unwrap();
    let image: Tensor<(usize, usize, usize, usize), f32, Cpu> =
        dev.sample_normal_like(&(1, 3, 1024, 1024));
    group.bench_function("sam_vit_b_1024_dfdx", |b| {
        b.iter(|| sam.image_embeddings(image.clone()).tokens.as_vec())
    });
    let host = HostSamImageEncoder::new(&sam.vision_encoder, Dtype::F32);
    drop(sam);
    group.bench_function("sam_vit_b_1024", |b| {
        b.iter(|| host.forward(image.clone()).tokens.as_vec())
    });
    drop(host);

    let eva = Eva02Large::build(&dev).unwrap();
    let image: Tensor<(usize, usize, usize, usize), f32, Cpu> =
        dev.sample_normal_like(&(1, 3, 448, 448));
    group.bench_function("eva02_large_448_dfdx", |b| {
        b.iter(|| eva.forward_features(image.clone()).0.as_vec())
    });
    let host = HostEva02::new(&eva, Dtype::F32);
    drop(eva);
    group.bench_function("eva02_large_448", |b| {
        b.iter(|| host.forward_features(image.clone()).0.as_vec())
    });
    group.finish();
}

/// `(q, k, v)` gradients of `sum(attention(q, k, v) * r)` through `attend`.
fn attention_step(
    q: &Heads,
    k: &Heads,
    v: &Heads,
    r: &Heads,
    attend: impl Fn(Taped, Taped, Taped) -> Taped,
) -> f32 {
    let grads = Gradients::leaky();
    let out = attend(
        q.clone().traced(grads.clone()),
        k.clone().traced(grads.clone()),
        v.clone().traced(grads),
    );
    let grads = (out * r.clone()).sum().backward();
    grads.get(q).as_vec()[0]
}

type Heads = Tensor<(usize, usize, usize, usize), f32, Cpu>;
type Taped = Tensor<(usize, usize, usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>;

/// One EVA02-L attention at 384 px (16 heads, 730 tokens, head dim 64), forward and backward.
fn attention_taped(c: &mut Criterion) {
    let dev: Cpu = Cpu::seed_from_u64(0);
    let mut group = c.benchmark_group("attention_taped");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10));
    let shape = (1, 16, 730, 64);
    let (q, k, v, r): (Heads, Heads, Heads, Heads) = (
        dev.sample_normal_like(&shape),
        dev.sample_normal_like(&shape),
        dev.sample_normal_like(&shape),
        dev.sample_normal_like(&shape),
    );
    let scale = 0.125;
    group.bench_function("dfdx_eva02_large_384", |b| {
        b.iter(|| {
            attention_step(&q, &k, &v, &r, |q, k, v| {
                (q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * scale)
                    .softmax::<Axis<3>>()
                    .matmul(v)
            })
        })
    });
    group.bench_function("fused_eva02_large_384", |b| {
        b.iter(|| {
            attention_step(&q, &k, &v, &r, |q, k, v| {
                pixel_core::nn::attention(q, k, v, scale)
            })
        })
    });
    group.finish();
}

criterion_group!(benches, encoders, attention_taped);
criterion_main!(benches);
