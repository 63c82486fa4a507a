//! One training step of the demo's model (`pixel-tiny`, the built-in `configs/demo.toml`) on
//! a demo batch of 16: the loss forward alone, forward + backward on one thread, and forward +
//! backward as the demo's training runs it (the batch in `train.shards` data-parallel shards).
//! The demo's wall time is about `steps x (forward + backward + optimizer)`, so this is the
//! number to push down.
//!
//! Run: `cargo bench -p pixel-benches --bench train_step`.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dfdx::prelude::*;
use pixel_core::optim::alloc_grads;
use pixel_data::shapes_ln::ShapesLn;
use pixel_lm::tokenizer::T5Tokenizer;
use pixel_model::model::TinyPixelLlm;
use pixel_model::task_mix::training_examples;
use pixel_model::tasks::ExampleBuilder;
use pixel_run::experiment::ExperimentConfig;
use pixel_train::{forward_backward, TrainStep};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let config = ExperimentConfig::builtin().unwrap();
    let mut model = TinyPixelLlm::build(&config.model, 0).unwrap();
    let tokenizer = T5Tokenizer::bundled().unwrap();
    let vocab = model.vocab.clone();
    let builder = ExampleBuilder {
        tokenizer: &tokenizer,
        vocab: &vocab,
        max_target_tokens: config.tasks.max_target_tokens,
    };
    let data = ShapesLn::new(config.data.clone(), config.seed).unwrap();
    let batch_size = config.train.batch_size;
    let examples = training_examples(&data, &builder, &config.tasks, batch_size, 0, 0).unwrap();
    let trainable = config.model.trainable();
    // Fresh gradient slots for every iteration, cloned from one allocation.
    let grads = alloc_grads(&mut model, &trainable).unwrap();

    let mut g = c.benchmark_group(format!("pixel-tiny train step b{batch_size}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    g.bench_function("loss forward", |b| {
        b.iter_batched(
            || grads.clone(),
            |grads| model.loss(&examples, grads).unwrap(),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("loss forward + backward", |b| {
        b.iter_batched(
            || grads.clone(),
            |grads| model.loss(&examples, grads).unwrap().0.backward(),
            BatchSize::LargeInput,
        )
    });
    let shards = config.train.shards;
    g.bench_function(
        format!("loss forward + backward, {shards} shards (the demo's step)"),
        |b| {
            b.iter_batched(
                || examples.clone(),
                |examples| forward_backward(&mut model, &trainable, examples, shards).unwrap(),
                BatchSize::LargeInput,
            )
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
