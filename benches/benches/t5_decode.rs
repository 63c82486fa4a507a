//! T5 decoding speed at flan-t5-small dims (random weights), batch 1, 64 input tokens:
//! encoder forward, greedy decoding of 32 tokens with and without the KV cache (encoder
//! included), and one decoding step with and without a point head (PixelLLM's 4-layer MLP,
//! hidden 512 -> 4, on the decoder features). `tools/time_hf_t5.py` times HF on the same work.
//!
//! A decoding step at batch 1 reads every decoder and LM-head weight once (154 MB in f32), far
//! more than the caches hold, so its floor is those bytes over the memory bandwidth. The
//! step's products split the weight rows between all threads (one thread reads about half the
//! bandwidth two do here), so "stream the step's weight bytes" measures that floor in the same
//! run the same way: a summing read of a buffer of the same size, split between all threads.
//!
//! The same work with weights stored as bf16 ([`HostT5`], f32 arithmetic): its step reads half
//! the bytes, so its floor is half the f32 stream time. Batched decoding: greedy 32 new tokens
//! for 8 inputs of 64 down to 15 tokens (padded), one weight read per step for all 8 rows.
//!
//! Run: `cargo bench -p pixel-benches --bench t5_decode`; `tools/compare_speed.sh` runs it beside
//! HF transformers and prints the ratios.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dfdx::prelude::*;
use pixel_core::nn::{Activation, Mlp};
use pixel_core::params::ParamTensor;
use pixel_lm::host_decoder::{HostDecoder, HostMlp};
use pixel_lm::host_t5::pad_batch;
use pixel_lm::presets::FlanT5Small;
use pixel_lm::{Dtype, GenerateOptions, HostT5, T5Config, T5};
use std::time::Duration;

const INPUT_TOKENS: usize = 64;
const NEW_TOKENS: usize = 32;
const BATCH: usize = 8;

/// f32 values a decoding step reads: per decoder block self-attention q, k, v, o and
/// cross-attention q, o (`d_model x inner` each), the gated FFN (`3 x d_model x d_ff`), and the
/// LM head (`vocab x d_model`). Norms and the cached keys/values are small next to these.
const STEP_WEIGHTS: usize = 8 * (6 * 512 * 384 + 3 * 512 * 1024) + 32128 * 512;

/// Sum with 16 independent lanes (as the decoder's dot products), so the read is the limit;
/// one part per thread.
fn stream(values: &[f32]) -> f32 {
    use rayon::prelude::*;
    let part = values.len().div_ceil(rayon::current_num_threads());
    rayon::scope(|_| values.par_chunks(part).map(stream_part).sum())
}

fn stream_part(values: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for c in values.chunks_exact(16) {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum()
}

/// A copy of `dec` with room for one more token, as a generation reserves its cache up front
/// (`HostDecoder::reserve`): a clone has none, and its first step would copy the cache.
fn reserved(dec: &HostDecoder) -> HostDecoder {
    let mut dec = dec.clone();
    dec.reserve(1);
    dec
}

/// flan-t5-small's config.json.
fn flan_t5_small() -> T5Config {
    serde_json::from_str(
        r#"{"d_ff":1024,"d_kv":64,"d_model":512,"decoder_start_token_id":0,"dense_act_fn":"gelu_new",
        "eos_token_id":1,"feed_forward_proj":"gated-gelu","is_gated_act":true,"layer_norm_epsilon":1e-06,
        "num_decoder_layers":8,"num_heads":6,"num_layers":8,"pad_token_id":0,
        "relative_attention_max_distance":128,"relative_attention_num_buckets":32,
        "tie_word_embeddings":false,"vocab_size":32128}"#,
    )
    .unwrap()
}

fn model(dev: &Cpu) -> T5<FlanT5Small, Cpu> {
    let mut model = T5::<FlanT5Small, Cpu>::new(dev, &flan_t5_small()).unwrap();
    // EOS's output row is zero so that greedy search always runs the full 32 steps.
    let head = model.lm_head.as_mut().unwrap();
    let mut w = head.weight.values();
    w[512..1024].iter_mut().for_each(|v| *v = 0.0);
    head.weight.set_values(&w).unwrap();
    model
}

fn bench(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let model = model(&dev);
    let ids: Vec<usize> = (0..INPUT_TOKENS)
        .map(|i| 100 + (i * 7919) % 30000)
        .collect();
    let mask = vec![true; INPUT_TOKENS];
    let encode = || model.encode::<NoneTape>(model.ids(&ids, 1), &mask);
    let enc = encode();
    let out = model.generate_greedy(&enc, &mask, NEW_TOKENS);
    assert_eq!(
        out.sequences[0].len(),
        NEW_TOKENS + 1,
        "greedy stopped early"
    );

    let mut g = c.benchmark_group("t5_decode flan-t5-small b1 s64");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("encoder forward", |b| b.iter(encode));
    g.bench_function("greedy 32 tokens, KV cache, encoder included", |b| {
        b.iter(|| model.generate_greedy(&encode(), &mask, NEW_TOKENS))
    });
    g.bench_function("greedy 32 tokens, no cache, encoder included", |b| {
        b.iter(|| model.generate_greedy_uncached(&encode(), &mask, NEW_TOKENS))
    });

    // One step at position 16 (16 cached tokens), LM head included, as `generate` runs it.
    let mut host = model.host_decoder(&enc, &mask);
    let mut cache = model.start_decoding(&enc, &mask);
    for &t in &out.sequences[0][..16] {
        model.host_step(&mut host, &[t]);
        model.decode_step(&[t], &mut cache);
    }
    let point_head = Mlp::<Const<512>, Const<512>, Const<4>, Cpu>::new(&dev, 4, Activation::Relu);
    let host_point_head = HostMlp::new(&point_head);
    let next = [out.sequences[0][16]];
    let weights: Vec<f32> = (0..STEP_WEIGHTS).map(|i| (i % 7) as f32).collect();
    g.bench_function(
        format!(
            "stream the step's weight bytes ({} MB)",
            STEP_WEIGHTS * 4 / 1_000_000
        ),
        |b| b.iter(|| stream(std::hint::black_box(&weights))),
    );
    g.bench_function("one decoding step", |b| {
        b.iter_batched(
            || host.clone(),
            |mut host| model.host_step(&mut host, &next),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("one decoding step + point head (host MLP)", |b| {
        b.iter_batched(
            || host.clone(),
            |mut host| {
                let (hidden, logits) = model.host_step(&mut host, &next);
                (logits, host_point_head.forward(&hidden))
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("one decoding step + point head (dfdx MLP)", |b| {
        b.iter_batched(
            || host.clone(),
            |mut host| {
                let (hidden, logits) = model.host_step(&mut host, &next);
                let h = dev.tensor_from_vec(hidden, (1, 1, Const::<512>));
                (logits, point_head.forward(h).as_vec())
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("one decoding step, dfdx ops (DecoderCache)", |b| {
        b.iter_batched(
            || cache.clone(),
            |mut cache| {
                model
                    .lm_logits(model.decode_step(&next, &mut cache))
                    .as_vec()
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // 16-bit weights and batched decoding.
    let greedy = GenerateOptions {
        max_new_tokens: NEW_TOKENS,
        ..Default::default()
    };
    let batch: Vec<Vec<usize>> = (0..BATCH)
        .map(|r| ids[..INPUT_TOKENS - 7 * r].to_vec())
        .collect();
    let mut g = c.benchmark_group("t5_decode flan-t5-small 16-bit and batched");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let host = HostT5::from_model(&model, dtype);
        let out = host.generate(std::slice::from_ref(&ids), &greedy);
        assert_eq!(
            out.sequences[0].len(),
            NEW_TOKENS + 1,
            "greedy stopped early"
        );
        g.bench_function(format!("HostT5 {dtype} encoder forward"), |b| {
            b.iter(|| host.encode(&ids, &mask, 1))
        });
        g.bench_function(
            format!("HostT5 {dtype} greedy 32 tokens, encoder included"),
            |b| b.iter(|| host.generate(std::slice::from_ref(&ids), &greedy)),
        );
        let enc = host.encode(&ids, &mask, 1);
        let mut dec = host.start(&enc, &mask, 1);
        for &t in &out.sequences[0][..16] {
            host.step(&mut dec, &[t]);
        }
        g.bench_function(format!("HostT5 {dtype} one decoding step"), |b| {
            b.iter_batched(
                || reserved(&dec),
                |mut dec| host.step(&mut dec, &next),
                BatchSize::PerIteration,
            )
        });
        let (batch_ids, batch_mask) = pad_batch(&batch, 0);
        let batch_enc = host.encode_real(&batch_ids, &batch_mask, BATCH);
        let mut batch_dec = host.start(&batch_enc, &batch_mask, BATCH);
        for &t in &out.sequences[0][..16] {
            host.step(&mut batch_dec, &[t; BATCH]);
        }
        g.bench_function(
            format!("HostT5 {dtype} one decoding step batch {BATCH}"),
            |b| {
                b.iter_batched(
                    || reserved(&batch_dec),
                    |mut dec| host.step(&mut dec, &[next[0]; BATCH]),
                    BatchSize::PerIteration,
                )
            },
        );
        g.bench_function(
            format!("HostT5 {dtype} greedy 32 tokens batch {BATCH}, encoder included"),
            |b| b.iter(|| host.generate(&batch, &greedy)),
        );
        eprintln!(
            "HostT5 {dtype}: a decoding step reads {:.1} MB of weights",
            host.decoder_weights().step_bytes() as f64 / 1e6
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
