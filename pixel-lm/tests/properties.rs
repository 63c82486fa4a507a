//! Properties of the T5 implementation that hold for any weights: cached decoding equals
//! full-sequence decoding, fresh LoRA adapters change nothing, names equal HF's, checkpoints
//! round-trip, and bad checkpoints or configs fail with one message listing every problem.
use dfdx::prelude::*;
use pixel_core::checkpoint::{StoredTensor, TensorStore};
use pixel_core::optim::alloc_grads;
use pixel_core::params::{list_params, ParamTensor, ParamVisitor, Params, Trainable};
use pixel_core::testing::assert_close;
use pixel_lm::presets::{FlanT5Test, T5Test};
use pixel_lm::{AnyT5, GenerateOptions, T5Config, T5Dims, T5};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn config(name: &str) -> T5Config {
    T5Config::from_file(&fixture(name).join("config.json")).unwrap()
}

/// A random model of the preset, with a padded batch of 2 encoded.
#[allow(clippy::type_complexity)]
fn random<P: T5Dims>(
    name: &str,
    seed: u64,
) -> (T5<P, Cpu>, pixel_core::nn::Seq<P::Model, Cpu>, Vec<bool>) {
    let dev = Cpu::seed_from_u64(seed);
    let model = T5::<P, Cpu>::new(&dev, &config(name)).unwrap();
    let ids: Vec<usize> = (0..2 * 7)
        .map(|i| 5 + (i * 37 + seed as usize) % 500)
        .collect();
    let mask: Vec<bool> = (0..14).map(|i| i < 7 || i < 7 + 4).collect();
    let enc = model.encode::<NoneTape>(model.ids(&ids, 2), &mask);
    (model, enc, mask)
}

fn cached_decoding_equals_full_sequence_decoding<P: T5Dims>(name: &str) {
    let (model, enc, mask) = random::<P>(name, 3);
    let out = model.generate_greedy(&enc, &mask, 6);
    let uncached = model.generate_greedy_uncached(&enc, &mask, 6);
    assert_eq!(out.sequences, uncached.sequences);
    assert_close(&out.hidden.as_vec(), &uncached.hidden.as_vec(), 1e-5);
    // Teacher forcing on the generated prefix gives the same features.
    let len = out.sequences[0].len();
    let prefix: Vec<usize> = out
        .sequences
        .iter()
        .flat_map(|s| s[..len - 1].to_vec())
        .collect();
    let full = model.decode::<NoneTape>(model.ids(&prefix, 2), enc.clone(), &mask);
    assert_close(&out.hidden.as_vec(), &full.as_vec(), 1e-5);

    // Beam search: the features of the returned hypotheses are those of teacher forcing.
    let beam = model.generate(
        &enc,
        &mask,
        &GenerateOptions {
            max_new_tokens: 5,
            num_beams: 3,
            length_penalty: 1.0,
        },
    );
    let len = beam.sequences[0].len();
    let prefix: Vec<usize> = beam
        .sequences
        .iter()
        .flat_map(|s| s[..len - 1].to_vec())
        .collect();
    let full = model
        .decode::<NoneTape>(model.ids(&prefix, 2), enc, &mask)
        .as_vec();
    let got = beam.hidden.as_vec();
    let d = P::Model::SIZE;
    for (b, seq) in beam.sequences.iter().enumerate() {
        let n = seq[1..]
            .iter()
            .position(|&t| t == 1)
            .map_or(len - 1, |p| p + 1);
        let range = b * (len - 1) * d..(b * (len - 1) + n) * d;
        assert_close(&got[range.clone()], &full[range], 1e-5);
    }
}

#[test]
fn kv_cache_decoding_equals_full_sequence_decoding_t5() {
    cached_decoding_equals_full_sequence_decoding::<T5Test>("t5-test");
}

#[test]
fn kv_cache_decoding_equals_full_sequence_decoding_flan() {
    cached_decoding_equals_full_sequence_decoding::<FlanT5Test>("flan-t5-test");
}

#[test]
fn lora_with_zero_b_equals_base() {
    let (mut model, enc, mask) = random::<FlanT5Test>("flan-t5-test", 5);
    let ids: Vec<usize> = vec![0, 7, 9, 0, 11, 13];
    let before = model
        .lm_logits(model.decode::<NoneTape>(model.ids(&ids, 2), enc.clone(), &mask))
        .as_vec();
    let dev = model.device();
    model.add_lora(&dev, 4, 2.0);
    let enc2 = model.encode::<NoneTape>(model.ids(&[5; 14], 2), &mask);
    let _ = enc2;
    let after = model
        .lm_logits(model.decode::<NoneTape>(model.ids(&ids, 2), enc, &mask))
        .as_vec();
    assert_close(&after, &before, 1e-6);
    let names: Vec<String> = list_params(&mut model)
        .into_iter()
        .map(|p| p.name)
        .filter(|n| n.contains("lora"))
        .collect();
    // q and v of 3 encoder self-attentions and 2 x 2 decoder attentions, A and B each.
    assert_eq!(names.len(), (3 + 4) * 2 * 2);
    assert!(names.contains(&"decoder.block.1.layer.1.EncDecAttention.v.lora_B.weight".to_string()));
}

#[test]
fn params_names_equal_the_hf_state_dict_names() {
    // flan-t5-test: HF's shard index lists every tensor of the untied model.
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("flan-t5-test").join("model.safetensors.index.json"))
            .unwrap(),
    )
    .unwrap();
    let mut hf: Vec<String> = index["weight_map"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let dev: Cpu = Default::default();
    let mut flan = T5::<FlanT5Test, Cpu>::new(&dev, &config("flan-t5-test")).unwrap();
    let mut ours: Vec<String> = list_params(&mut flan).into_iter().map(|p| p.name).collect();
    hf.sort();
    ours.sort();
    assert_eq!(ours, hf);
    // t5-test: the tied model's single file.
    let store = TensorStore::read(&fixture("t5-test").join("model.safetensors")).unwrap();
    let hf: Vec<String> = store.tensors.keys().cloned().collect();
    let mut t5 = T5::<T5Test, Cpu>::new(&dev, &config("t5-test")).unwrap();
    let mut ours: Vec<String> = list_params(&mut t5).into_iter().map(|p| p.name).collect();
    ours.sort();
    assert_eq!(ours, hf);
    assert!(ours.contains(
        &"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight".to_string()
    ));
    assert!(ours.contains(&"decoder.block.1.layer.2.DenseReluDense.wo.weight".to_string()));
}

#[test]
fn checkpoint_save_load_round_trip() {
    let (mut model, enc, mask) = random::<FlanT5Test>("flan-t5-test", 9);
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path()).unwrap();
    let dev: Cpu = Default::default();
    let loaded = T5::<FlanT5Test, Cpu>::from_pretrained(dir.path(), &dev).unwrap();
    let ids = model.ids(&[0, 4, 0, 8], 2);
    let a = model
        .lm_logits(model.decode::<NoneTape>(ids.clone(), enc.clone(), &mask))
        .as_vec();
    let b = loaded
        .lm_logits(loaded.decode::<NoneTape>(ids.clone(), enc.clone(), &mask))
        .as_vec();
    assert_eq!(a, b);

    // LoRA adapters go to their own file and come back with rank and scale.
    model.add_lora(&dev, 3, 0.5);
    for block in &mut model.decoder.block {
        let lora = block.self_attention.v.lora.as_mut().unwrap();
        lora.b = dev.sample_normal_like(lora.b.shape());
    }
    let lora_path = dir.path().join("lora.safetensors");
    model.save_lora(&lora_path).unwrap();
    let mut with_lora = loaded.clone();
    with_lora.load_lora(&lora_path).unwrap();
    assert_eq!(with_lora.lora(), Some((3, 0.5)));
    let a = model
        .lm_logits(model.decode::<NoneTape>(ids.clone(), enc.clone(), &mask))
        .as_vec();
    let c = with_lora
        .lm_logits(with_lora.decode::<NoneTape>(ids, enc, &mask))
        .as_vec();
    assert_eq!(a, c);
    assert_ne!(a, b);
    // The adapter file holds adapters only.
    let store = TensorStore::read(&lora_path).unwrap();
    assert!(store.tensors.keys().all(|k| k.contains(".lora_")));
    assert_eq!(store.tensors.len(), (3 + 4) * 2 * 2);
}

#[test]
fn a_bad_checkpoint_fails_with_one_message_listing_every_problem() {
    let dev: Cpu = Default::default();
    let mut model = T5::<T5Test, Cpu>::new(&dev, &config("t5-test")).unwrap();
    let mut store = TensorStore::read(&fixture("t5-test").join("model.safetensors")).unwrap();
    store
        .tensors
        .remove("encoder.block.1.layer.1.DenseReluDense.wo.weight");
    store.insert(
        "encoder.block.9.layer.0.SelfAttention.q.weight",
        StoredTensor::f32(vec![1], vec![0.0]),
    );
    store.insert(
        "decoder.final_layer_norm.weight",
        StoredTensor::f32(vec![63], vec![1.0; 63]),
    );
    let message = model.load_store(&store).unwrap_err().to_string();
    assert!(
        message.contains("missing tensor `encoder.block.1.layer.1.DenseReluDense.wo.weight`"),
        "{message}"
    );
    assert!(
        message.contains("unexpected tensor `encoder.block.9.layer.0.SelfAttention.q.weight`"),
        "{message}"
    );
    assert!(
        message
            .contains("`decoder.final_layer_norm.weight` has shape [63], the model expects [64]"),
        "{message}"
    );
}

#[test]
fn tied_embedding_copies_are_accepted_when_equal() {
    let dev: Cpu = Default::default();
    let mut model = T5::<T5Test, Cpu>::new(&dev, &config("t5-test")).unwrap();
    let mut store = TensorStore::read(&fixture("t5-test").join("model.safetensors")).unwrap();
    let shared = store.get("shared.weight").unwrap().clone();
    store.insert("encoder.embed_tokens.weight", shared.clone());
    store.insert("decoder.embed_tokens.weight", shared.clone());
    model.load_store(&store).unwrap();
    let mut other = shared;
    other.values =
        pixel_core::checkpoint::TensorValues::F32(vec![0.5; other.shape.iter().product()]);
    store.insert("decoder.embed_tokens.weight", other);
    let message = model.load_store(&store).unwrap_err().to_string();
    assert!(
        message.contains("`decoder.embed_tokens.weight` differs from `shared.weight`"),
        "{message}"
    );
}

/// `store` split into two shards with a HF index in `dir`: the tensors alternate between
/// shards, so `shared.weight` and its copies land in different ones.
fn write_shards(dir: &Path, store: &TensorStore) {
    let mut shards = [TensorStore::default(), TensorStore::default()];
    let mut weight_map = serde_json::Map::new();
    for (i, (name, tensor)) in store.tensors.iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(name.clone(), serde_json::Value::String(file));
        shards[i % 2].insert(name.clone(), tensor.clone());
    }
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        shard.write(&dir.join(file)).unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// A sharded checkpoint loads shard by shard into what the single file gives; a tied copy is
/// checked against `shared.weight` in another shard; a tensor in no shard is named.
#[test]
fn a_sharded_checkpoint_loads_shard_by_shard_as_the_single_file_does() {
    let dev: Cpu = Default::default();
    let mut store = TensorStore::read(&fixture("t5-test").join("model.safetensors")).unwrap();
    let shared = store.get("shared.weight").unwrap().clone();
    store.insert("encoder.embed_tokens.weight", shared.clone());
    let mut single = T5::<T5Test, Cpu>::new(&dev, &config("t5-test")).unwrap();
    single.load_store(&store).unwrap();

    let dir = tempfile::tempdir().unwrap();
    write_shards(dir.path(), &store);
    let mut sharded = T5::<T5Test, Cpu>::new(&dev, &config("t5-test")).unwrap();
    sharded.load_checkpoint(dir.path()).unwrap();
    let values = |m: &mut T5<T5Test, Cpu>| -> Vec<(String, Vec<f32>)> {
        let mut out = TensorStore::default();
        pixel_core::checkpoint::collect_params(m, &mut out, "").unwrap();
        out.tensors
            .into_iter()
            .map(|(n, t)| (n, t.to_f32()))
            .collect()
    };
    assert_eq!(values(&mut sharded), values(&mut single));

    // A copy that differs, and a tensor gone from its shard but still in the index.
    let mut other = shared;
    other.values =
        pixel_core::checkpoint::TensorValues::F32(vec![0.5; other.shape.iter().product()]);
    store.insert("encoder.embed_tokens.weight", other);
    write_shards(dir.path(), &store);
    let first = dir.path().join("model-00001-of-00002.safetensors");
    let mut shard = TensorStore::read(&first).unwrap();
    let gone = shard
        .tensors
        .keys()
        .find(|n| n.ends_with("wo.weight"))
        .unwrap()
        .clone();
    shard.tensors.remove(&gone);
    shard.write(&first).unwrap();
    let message = sharded.load_checkpoint(dir.path()).unwrap_err().to_string();
    for says in [
        "`encoder.embed_tokens.weight` differs from `shared.weight`".to_string(),
        format!("missing tensor `{gone}`"),
        "model.safetensors.index.json".to_string(),
    ] {
        assert!(message.contains(&says), "{message}");
    }
}

#[test]
fn a_config_matching_no_preset_names_the_dims_that_differ() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config("flan-t5-test");
    c.vocab_size = 32000;
    c.num_heads = 2;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&c).unwrap(),
    )
    .unwrap();
    let dev: Cpu = Default::default();
    let message = AnyT5::from_pretrained(dir.path(), &dev)
        .unwrap_err()
        .to_string();
    assert!(message.contains("matches no preset"), "{message}");
    assert!(message.contains("`flan-t5-test`"), "{message}");
    assert!(
        message.contains("num_heads * d_kv is 32, the preset has 64"),
        "{message}"
    );
    assert!(
        message.contains("vocab_size is 32000, the preset has 32128"),
        "{message}"
    );
    // And a typed preset refuses a config of other dims.
    let message = T5::<T5Test, Cpu>::new(&dev, &config("flan-t5-test"))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("d_ff is 96, the preset has 128"),
        "{message}"
    );
}

/// Gradient norms of every parameter, by name.
struct GradNorms<'a> {
    grads: &'a Gradients<f32, Cpu>,
    norms: Vec<(String, f32)>,
}

impl ParamVisitor<Cpu> for GradNorms<'_> {
    fn visit(&mut self, name: &str, t: &mut dyn ParamTensor<Cpu>) -> pixel_core::Result<()> {
        let g = t.grad(self.grads);
        self.norms.push((
            name.to_string(),
            g.iter().map(|v| v * v).sum::<f32>().sqrt(),
        ));
        Ok(())
    }
}

#[test]
fn gradients_reach_encoder_decoder_position_bias_and_lora() {
    let dev = Cpu::seed_from_u64(1);
    let mut model = T5::<FlanT5Test, Cpu>::new(&dev, &config("flan-t5-test")).unwrap();
    model.add_lora(&dev, 2, 1.0);
    let grads = alloc_grads(&mut model, &Trainable::all()).unwrap();
    let mask = vec![true, true, true, true, true, false];
    let embeds = model
        .embed_tokens::<NoneTape>(model.ids(&[5, 6, 7, 8, 9, 0], 2))
        .traced(grads);
    let enc = model.encode_embeds(embeds, &mask);
    let hidden = model.decode(model.ids(&[0, 3, 0, 4], 2), enc, &mask);
    let loss = model.lm_logits(hidden).square().mean();
    let grads = loss.backward();
    let mut visitor = GradNorms {
        grads: &grads,
        norms: Vec::new(),
    };
    model.visit_params("", &mut visitor).unwrap();
    for (name, norm) in &visitor.norms {
        // lora_A's gradient is zero while B is zero: d/dA (B A x) = B^T (...).
        if name.contains("lora_A") {
            continue;
        }
        assert!(*norm > 0.0, "no gradient reaches `{name}`");
    }
}

/// A preset defined outside pixel-lm, as pixel-run' demo does.
#[derive(Debug, Clone, Copy, Default)]
struct Tiny;

impl T5Dims for Tiny {
    const NAME: &'static str = "tiny";
    type Vocab = Const<50>;
    type Model = Const<16>;
    type Inner = Const<24>;
    type Ff = Const<32>;
}

#[test]
fn a_preset_defined_outside_the_crate_trains_and_generates() {
    let config: T5Config = serde_json::from_str(
        r#"{"vocab_size":50,"d_model":16,"d_kv":8,"num_heads":3,"d_ff":32,"num_layers":1,
            "num_decoder_layers":2,"relative_attention_num_buckets":8,
            "relative_attention_max_distance":16,"feed_forward_proj":"gated-gelu",
            "tie_word_embeddings":false}"#,
    )
    .unwrap();
    let dev = Cpu::seed_from_u64(4);
    let model = T5::<Tiny, Cpu>::new(&dev, &config).unwrap();
    let mask = vec![true, true, true, false];
    let enc = model.encode::<NoneTape>(model.ids(&[4, 5, 6, 0], 1), &mask);
    let greedy = model.generate_greedy(&enc, &mask, 4);
    let beam = model.generate(
        &enc,
        &mask,
        &GenerateOptions {
            max_new_tokens: 4,
            num_beams: 2,
            length_penalty: 1.0,
        },
    );
    assert_eq!(greedy.hidden.shape().1 + 1, greedy.sequences[0].len());
    assert_eq!(beam.hidden.shape().1 + 1, beam.sequences[0].len());
    assert!(beam.sequences[0].iter().all(|&t| t < 50));
}

fn host_decoder_step_equals_dfdx_decode_step<P: T5Dims>(name: &str) {
    let (mut model, enc, mask) = random::<P>(name, 11);
    let dev = model.device();
    model.add_lora(&dev, 2, 0.7);
    for block in &mut model.decoder.block {
        let lora = block.self_attention.q.lora.as_mut().unwrap();
        lora.b = dev.sample_normal_like(lora.b.shape());
        let lora = block
            .cross_attention
            .as_mut()
            .unwrap()
            .0
            .v
            .lora
            .as_mut()
            .unwrap();
        lora.b = dev.sample_normal_like(lora.b.shape());
    }
    let mut cache = model.start_decoding(&enc, &mask);
    let mut host = model.host_decoder(&enc, &mask);
    for ids in [[0, 0], [17, 4], [3, 99], [1, 0]] {
        let hidden = model.decode_step(&ids, &mut cache);
        let logits = model.lm_logits(hidden.clone()).as_vec();
        let (h, l) = model.host_step(&mut host, &ids);
        assert_close(&h, &hidden.as_vec(), 1e-5);
        assert_close(&l, &logits, 1e-5);
    }
    cache.reorder(&[1, 1]);
    host.reorder(&[1, 1]);
    let hidden = model.decode_step(&[5, 6], &mut cache);
    let (h, _) = model.host_step(&mut host, &[5, 6]);
    assert_close(&h, &hidden.as_vec(), 1e-5);
}

#[test]
fn host_decoder_step_equals_dfdx_decode_step_t5() {
    host_decoder_step_equals_dfdx_decode_step::<T5Test>("t5-test");
}

#[test]
fn host_decoder_step_equals_dfdx_decode_step_flan() {
    host_decoder_step_equals_dfdx_decode_step::<FlanT5Test>("flan-t5-test");
}

#[test]
fn loading_weights_refreshes_the_generation_snapshot() {
    let (mut a, enc, mask) = random::<FlanT5Test>("flan-t5-test", 21);
    let (mut b, _, _) = random::<FlanT5Test>("flan-t5-test", 22);
    let before = a.generate_greedy(&enc, &mask, 4);
    let mut store = TensorStore::default();
    pixel_core::checkpoint::collect_params(&mut b, &mut store, "").unwrap();
    a.load_store(&store).unwrap();
    let after = a.generate_greedy(&enc, &mask, 4);
    let want = b.generate_greedy(&enc, &mask, 4);
    assert_eq!(after.sequences, want.sequences);
    assert_eq!(after.hidden.as_vec(), want.hidden.as_vec());
    assert_ne!(before.hidden.as_vec(), after.hidden.as_vec());
}

/// An unordered prefix of 0 is the plain encoder; one that covers every token equals the
/// encoder with a zero relative-bias table; in between, the tokens after the prefix still
/// see their bias (the output differs from both).
#[test]
fn an_unordered_prefix_drops_the_relative_bias_of_its_pairs_only() {
    let dev = Cpu::seed_from_u64(5);
    let mut model = T5::<FlanT5Test, Cpu>::new(&dev, &config("flan-t5-test")).unwrap();
    let ids: Vec<usize> = (0..2 * 6).map(|i| 7 + i * 31 % 400).collect();
    let mask = vec![true; 12];
    fn embeds(
        model: &T5<FlanT5Test, Cpu>,
        ids: &[usize],
    ) -> pixel_core::nn::Seq<<FlanT5Test as T5Dims>::Model, Cpu> {
        model.embed_tokens::<NoneTape>(model.ids(ids, 2))
    }
    let plain = model.encode_embeds(embeds(&model, &ids), &mask).as_vec();
    let none = model
        .encode_embeds_with_unordered_prefix(embeds(&model, &ids), &mask, 0)
        .as_vec();
    assert_eq!(plain, none);
    let all = model
        .encode_embeds_with_unordered_prefix(embeds(&model, &ids), &mask, 6)
        .as_vec();
    let part = model
        .encode_embeds_with_unordered_prefix(embeds(&model, &ids), &mask, 3)
        .as_vec();
    let table = model.encoder.block[0]
        .self_attention
        .relative_attention_bias
        .as_mut()
        .unwrap();
    *table = dev.zeros_like(table.shape());
    let zero_bias = model.encode_embeds(embeds(&model, &ids), &mask).as_vec();
    assert_close(&all, &zero_bias, 1e-6);
    let differs = |a: &[f32], b: &[f32]| a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-4);
    assert!(differs(&part, &plain) && differs(&part, &zero_bias));
}
