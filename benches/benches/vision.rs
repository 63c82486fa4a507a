//! Image-encoder forward passes on CPU, batch 1: SAM ViT-B at 1024 px and EVA02-L at 448 px
//! (random weights; the cost does not depend on them). `tools/time_torch_vision.py` times the
//! PyTorch references on the same shapes.
//!
//!     cargo bench -p pixel-benches --bench vision
//!
//! Criterion's minimum of 10 samples makes this slow: about 10 forward passes per model
//! (~30 s each for SAM ViT-B and ~17 s for EVA02-L on 2 cores), so ~8 minutes in all.
use criterion::{criterion_group, criterion_main, Criterion};
use dfdx::prelude::*;
use pixel_vision::presets::{Eva02Large, Eva02Preset, SamPreset, SamVitB};
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
    group.bench_function("sam_vit_b_1024", |b| {
        b.iter(|| sam.image_embeddings(image.clone()).tokens.as_vec())
    });
    drop(sam);

    let eva = Eva02Large::build(&dev).unwrap();
    let image: Tensor<(usize, usize, usize, usize), f32, Cpu> =
        dev.sample_normal_like(&(1, 3, 448, 448));
    group.bench_function("eva02_large_448", |b| {
        b.iter(|| eva.forward_features(image.clone()).0.as_vec())
    });
    group.finish();
}

criterion_group!(benches, encoders);
criterion_main!(benches);
