//! Parity with HF transformers on the fixtures written by `tools/make_t5_fixtures.py`:
//! encoder and decoder hidden states and logits within 1e-4 x max|reference|, identical greedy
//! and beam sequences, for T5 v1.0 (`t5-test`, f16 single file) and Flan-T5 (`flan-t5-test`,
//! bf16 shards).
use dfdx::prelude::*;
use pixel_core::checkpoint::TensorStore;
use pixel_core::testing::max_abs_diff;
use pixel_lm::presets::{FlanT5Test, T5Test};
use pixel_lm::{relative_position_bucket, AnyT5, GenerateOptions, T5Dims, T5};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Case {
    store_in: TensorStore,
    store_out: TensorStore,
}

impl Case {
    fn read(name: &str) -> Self {
        let dir = fixtures().join(name);
        Case {
            store_in: TensorStore::read(&dir.join("inputs.safetensors")).unwrap(),
            store_out: TensorStore::read(&dir.join("outputs.safetensors")).unwrap(),
        }
    }

    fn ids(&self, name: &str) -> (Vec<usize>, usize, usize) {
        let t = self
            .store_in
            .get(name)
            .or_else(|| self.store_out.get(name))
            .unwrap();
        let v = t.as_i64().unwrap().iter().map(|&x| x as usize).collect();
        (v, t.shape[0], t.shape.get(1).copied().unwrap_or(1))
    }

    fn mask(&self) -> Vec<bool> {
        self.ids("attention_mask")
            .0
            .iter()
            .map(|&m| m == 1)
            .collect()
    }

    fn floats(&self, name: &str) -> Vec<f32> {
        self.store_out.get(name).unwrap().to_f32()
    }

    fn scalar(&self, name: &str) -> usize {
        self.ids(name).0[0]
    }
}

/// Asserts the max abs error is within `1e-4 * max|reference|` and returns the relative error.
fn check_close(name: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(got, want);
    eprintln!(
        "{name}: max abs error {err:.3e}, max |reference| {scale:.3e}, ratio {:.3e}",
        err / scale
    );
    assert!(
        err <= 1e-4 * scale,
        "{name}: max abs error {err} > 1e-4 x {scale}"
    );
    err / scale
}

fn rows(v: &[usize], len: usize) -> Vec<Vec<usize>> {
    v.chunks(len).map(|c| c.to_vec()).collect()
}

fn parity<P: T5Dims>(name: &str) {
    let dev: Cpu = Default::default();
    let model = T5::<P, Cpu>::from_pretrained(&fixtures().join(name), &dev).unwrap();
    let case = Case::read(name);
    let (input_ids, batch, _) = case.ids("input_ids");
    let mask = case.mask();
    let (dec_ids, _, _) = case.ids("decoder_input_ids");

    let enc: Seq<P, Cpu> = model.encode(model.ids(&input_ids, batch), &mask);
    check_close(
        &format!("{name} encoder"),
        &enc.as_vec(),
        &case.floats("encoder_last_hidden_state"),
    );
    let hidden = model.decode::<NoneTape>(model.ids(&dec_ids, batch), enc.clone(), &mask);
    check_close(
        &format!("{name} decoder"),
        &hidden.as_vec(),
        &case.floats("decoder_hidden"),
    );
    let logits = model.lm_logits(hidden);
    check_close(
        &format!("{name} logits"),
        &logits.as_vec(),
        &case.floats("logits"),
    );

    let max_new_tokens = case.scalar("max_new_tokens");
    let greedy = model.generate(
        &enc,
        &mask,
        &GenerateOptions {
            max_new_tokens,
            ..Default::default()
        },
    );
    let (want, _, len) = case.ids("greedy_sequences");
    assert_eq!(greedy.sequences, rows(&want, len), "{name} greedy");

    let num_beams = case.scalar("num_beams");
    let beam = model.generate(
        &enc,
        &mask,
        &GenerateOptions {
            max_new_tokens,
            num_beams,
            length_penalty: 1.0,
        },
    );
    let (want, _, len) = case.ids("beam_sequences");
    assert_eq!(beam.sequences, rows(&want, len), "{name} beam");
}

type Seq<P, D> = pixel_core::nn::Seq<<P as T5Dims>::Model, D>;

#[test]
fn t5_v1_0_matches_hf_on_an_f16_checkpoint() {
    parity::<T5Test>("t5-test");
}

#[test]
fn flan_t5_matches_hf_on_a_sharded_bf16_checkpoint() {
    parity::<FlanT5Test>("flan-t5-test");
}

#[test]
fn any_t5_picks_the_preset_from_config_json() {
    let dev: Cpu = Default::default();
    let t5 = AnyT5::from_pretrained(&fixtures().join("t5-test"), &dev).unwrap();
    assert_eq!(t5.preset_name(), "t5-test");
    let flan = AnyT5::from_pretrained(&fixtures().join("flan-t5-test"), &dev).unwrap();
    assert_eq!(flan.preset_name(), "flan-t5-test");
}

#[test]
fn relative_position_buckets_equal_hf() {
    let store = TensorStore::read(&fixtures().join("buckets.safetensors")).unwrap();
    let rel = store
        .get("relative_position")
        .unwrap()
        .as_i64()
        .unwrap()
        .to_vec();
    let mut checked = 0;
    for (key, t) in &store.tensors {
        if key == "relative_position" {
            continue;
        }
        let parts: Vec<&str> = key.split('_').collect();
        let (bi, nb, md) = (
            parts[0] == "bi",
            parts[1].parse().unwrap(),
            parts[2].parse().unwrap(),
        );
        for (r, &want) in rel.iter().zip(t.as_i64().unwrap()) {
            assert_eq!(
                relative_position_bucket(*r, bi, nb, md) as i64,
                want,
                "{key} at {r}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6 * 601);
}

/// The tensors-in, tensors-out path of `pixel lm forward|generate` on the fixture files.
#[test]
fn tensor_files_in_and_out_match_hf() {
    let dev: Cpu = Default::default();
    for name in ["t5-test", "flan-t5-test"] {
        let dir = fixtures().join(name);
        let model = AnyT5::from_pretrained(&dir, &dev).unwrap();
        let inputs = TensorStore::read(&dir.join("inputs.safetensors")).unwrap();
        let want = Case::read(name);
        let out = model.forward_tensors(&inputs).unwrap();
        for key in ["encoder_last_hidden_state", "logits"] {
            let got = out.get(key).unwrap();
            assert_eq!(got.shape, want.store_out.get(key).unwrap().shape);
            check_close(
                &format!("{name} file {key}"),
                &got.to_f32(),
                &want.floats(key),
            );
        }
        for (key, beams) in [
            ("greedy_sequences", 1),
            ("beam_sequences", want.scalar("num_beams")),
        ] {
            let options = GenerateOptions {
                max_new_tokens: want.scalar("max_new_tokens"),
                num_beams: beams,
                length_penalty: 1.0,
            };
            let out = model.generate_tensors(&inputs, &options).unwrap();
            assert_eq!(
                out.get("sequences").unwrap(),
                want.store_out.get(key).unwrap(),
                "{name} {key}"
            );
        }
    }
}
