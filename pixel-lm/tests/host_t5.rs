//! [`HostT5`]: T5 inference with weights stored as f32, bf16 or f16.
//!
//! - On the parity fixtures, whose reference outputs HF computed in f32 from the stored
//!   half-precision weights, the 16-bit model in the checkpoint's own dtype matches them as the
//!   f32 model does (1e-4 x max|reference|, identical greedy and beam ids): it computes the
//!   same function, reading the weights' bits as stored.
//! - Against HF run in bf16 (activations rounded to bf16 too; `bf16_run.safetensors`) the
//!   logits agree within [`BF16_RUN_TOLERANCE`] and greedy ids are equal. Beam search is
//!   compared on the rows where HF's bf16 and f32 runs agree: on the fixture's second row HF's
//!   bf16 activations flip a close beam choice that f32 accumulation does not.
//! - Batched decoding: each row of a padded batch equals that sequence decoded alone.
use dfdx::prelude::*;
use pixel_core::checkpoint::TensorStore;
use pixel_core::testing::max_abs_diff;
use pixel_lm::presets::{FlanT5Test, T5Test};
use pixel_lm::{Dtype, GenerateOptions, HostT5, T5Dims, T5};
use std::path::{Path, PathBuf};

/// Max abs difference between our bf16 logits (f32 activations) and HF's bf16 run, relative to
/// max |logit|: bf16 keeps 8 significant bits (relative step 2^-8 = 3.9e-3) and HF rounds
/// every activation to it, over 5 layers.
const BF16_RUN_TOLERANCE: f32 = 3e-2;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Case {
    inputs: TensorStore,
    outputs: TensorStore,
}

impl Case {
    fn read(name: &str) -> Self {
        let dir = fixtures().join(name);
        Case {
            inputs: TensorStore::read(&dir.join("inputs.safetensors")).unwrap(),
            outputs: TensorStore::read(&dir.join("outputs.safetensors")).unwrap(),
        }
    }

    /// An i64 tensor of inputs or outputs as ids and its `[rows, len]`.
    fn ids(&self, store: &TensorStore, name: &str) -> (Vec<usize>, usize, usize) {
        let t = store.get(name).unwrap();
        let v = t.as_i64().unwrap().iter().map(|&x| x as usize).collect();
        (v, t.shape[0], t.shape.get(1).copied().unwrap_or(1))
    }

    fn scalar(&self, name: &str) -> usize {
        self.ids(&self.outputs, name).0[0]
    }
}

fn rows(v: &[usize], len: usize) -> Vec<Vec<usize>> {
    v.chunks(len).map(|c| c.to_vec()).collect()
}

fn check_close(name: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(got, want);
    eprintln!(
        "{name}: max abs error {err:.3e}, relative {:.3e}",
        err / scale
    );
    assert!(
        err <= tolerance * scale,
        "{name}: {err} > {tolerance} x {scale}"
    );
}

/// The fixture in the checkpoint's own 16-bit dtype against HF's f32 outputs on those weights.
fn parity_in_dtype(name: &str, dtype: Dtype) {
    let model = HostT5::from_pretrained(&fixtures().join(name), dtype).unwrap();
    assert_eq!(model.dtype(), dtype);
    let case = Case::read(name);
    let (input_ids, batch, _) = case.ids(&case.inputs, "input_ids");
    let mask: Vec<bool> = case
        .ids(&case.inputs, "attention_mask")
        .0
        .iter()
        .map(|&m| m == 1)
        .collect();
    let (dec_ids, _, _) = case.ids(&case.inputs, "decoder_input_ids");
    let out = model.forward(&input_ids, &mask, batch, &dec_ids);
    let want = |k: &str| case.outputs.get(k).unwrap().to_f32();
    check_close(
        &format!("{name} {dtype} encoder"),
        &out.encoder_hidden,
        &want("encoder_last_hidden_state"),
        1e-4,
    );
    check_close(
        &format!("{name} {dtype} decoder"),
        &out.decoder_hidden,
        &want("decoder_hidden"),
        1e-4,
    );
    check_close(
        &format!("{name} {dtype} logits"),
        &out.logits,
        &want("logits"),
        1e-4,
    );
    let inputs: Vec<Vec<usize>> = input_ids
        .chunks(input_ids.len() / batch)
        .zip(mask.chunks(input_ids.len() / batch))
        .map(|(ids, m)| {
            ids.iter()
                .zip(m)
                .filter(|(_, &m)| m)
                .map(|(&i, _)| i)
                .collect()
        })
        .collect();
    for (key, beams) in [
        ("greedy_sequences", 1),
        ("beam_sequences", case.scalar("num_beams")),
    ] {
        let options = GenerateOptions {
            max_new_tokens: case.scalar("max_new_tokens"),
            num_beams: beams,
            length_penalty: 1.0,
        };
        let got = model.generate(&inputs, &options);
        let (want, _, len) = case.ids(&case.outputs, key);
        assert_eq!(got.sequences, rows(&want, len), "{name} {dtype} {key}");
    }
}

#[test]
fn a_bf16_checkpoint_in_bf16_matches_hf() {
    parity_in_dtype("flan-t5-test", Dtype::Bf16);
}

#[test]
fn an_f16_checkpoint_in_f16_matches_hf() {
    parity_in_dtype("t5-test", Dtype::F16);
}

#[test]
fn bf16_matches_hf_run_in_bf16() {
    let name = "flan-t5-test";
    let model = HostT5::from_pretrained(&fixtures().join(name), Dtype::Bf16).unwrap();
    let case = Case::read(name);
    let run = TensorStore::read(&fixtures().join(name).join("bf16_run.safetensors")).unwrap();
    let (input_ids, batch, _) = case.ids(&case.inputs, "input_ids");
    let mask: Vec<bool> = case
        .ids(&case.inputs, "attention_mask")
        .0
        .iter()
        .map(|&m| m == 1)
        .collect();
    let (dec_ids, _, _) = case.ids(&case.inputs, "decoder_input_ids");
    let out = model.forward(&input_ids, &mask, batch, &dec_ids);
    let hf = run.get("logits").unwrap();
    let live = hf.shape[2];
    let vocab = model.config.vocab_size;
    let ours: Vec<f32> = out
        .logits
        .chunks(vocab)
        .flat_map(|r| r[..live].to_vec())
        .collect();
    check_close(
        "bf16 logits vs HF bf16",
        &ours,
        &hf.to_f32(),
        BF16_RUN_TOLERANCE,
    );

    let seqs = |store: &TensorStore, key: &str| {
        let (v, _, len) = case.ids(store, key);
        rows(&v, len)
    };
    let mut inputs = Vec::new();
    let per = input_ids.len() / batch;
    for b in 0..batch {
        inputs.push(
            (0..per)
                .filter(|&i| mask[b * per + i])
                .map(|i| input_ids[b * per + i])
                .collect::<Vec<_>>(),
        );
    }
    let options = |num_beams| GenerateOptions {
        max_new_tokens: case.scalar("max_new_tokens"),
        num_beams,
        length_penalty: 1.0,
    };
    let greedy = model.generate(&inputs, &options(1));
    assert_eq!(
        greedy.sequences,
        seqs(&run, "greedy_sequences"),
        "greedy vs HF bf16"
    );
    let beam = model.generate(&inputs, &options(case.scalar("num_beams")));
    let (hf_bf16, hf_f32) = (
        seqs(&run, "beam_sequences"),
        seqs(&case.outputs, "beam_sequences"),
    );
    let mut compared = 0;
    for (b, got) in beam.sequences.iter().enumerate() {
        if hf_bf16[b] == hf_f32[b] {
            assert_eq!(got, &hf_bf16[b], "beam row {b} vs HF bf16");
            compared += 1;
        }
    }
    assert!(
        compared > 0,
        "no beam row where HF's bf16 and f32 runs agree"
    );
}

/// f32 [`HostT5`] computes what the dfdx [`T5`] computes.
fn host_f32_equals_dfdx<P: T5Dims>(name: &str) {
    let dev: Cpu = Default::default();
    let dir = fixtures().join(name);
    let t5 = T5::<P, Cpu>::from_pretrained(&dir, &dev).unwrap();
    for host in [
        HostT5::from_model(&t5, Dtype::F32),
        HostT5::from_pretrained(&dir, Dtype::F32).unwrap(),
    ] {
        let ids: Vec<usize> = (0..2 * 9).map(|i| 2 + (i * 389) % 2000).collect();
        let mask: Vec<bool> = (0..18)
            .map(|i| i < 9 || (i % 9 != 2 && i % 9 < 7))
            .collect();
        let want = t5.encode::<NoneTape>(t5.ids(&ids, 2), &mask);
        let got = host.encode(&ids, &mask, 2);
        let rows_real: Vec<usize> = (0..18).filter(|&i| mask[i]).collect();
        let pick = |v: &[f32]| -> Vec<f32> {
            rows_real
                .iter()
                .flat_map(|&r| v[r * 64..(r + 1) * 64].to_vec())
                .collect()
        };
        let real = host.encode_real(&ids, &mask, 2);
        assert!((0..18)
            .filter(|&i| !mask[i])
            .all(|i| real[i * 64..(i + 1) * 64].iter().all(|&v| v == 0.0)));
        check_close(
            &format!("{name} host encoder, real positions only"),
            &pick(&real),
            &pick(&got),
            1e-6,
        );
        check_close(
            &format!("{name} host encoder"),
            &pick(&got),
            &pick(&want.as_vec()),
            1e-5,
        );
        for beams in [1, 3] {
            let options = GenerateOptions {
                max_new_tokens: 6,
                num_beams: beams,
                length_penalty: 1.0,
            };
            let a = t5.generate(&want, &mask, &options);
            let b = host.generate_encoded(&want.as_vec(), &mask, 2, &options);
            assert_eq!(a.sequences, b.sequences, "{name} beams {beams}");
            check_close(
                &format!("{name} host features"),
                &b.hidden,
                &a.hidden.as_vec(),
                1e-5,
            );
        }
    }
}

#[test]
fn f32_host_t5_equals_the_dfdx_model_t5() {
    host_f32_equals_dfdx::<T5Test>("t5-test");
}

#[test]
fn f32_host_t5_equals_the_dfdx_model_flan() {
    host_f32_equals_dfdx::<FlanT5Test>("flan-t5-test");
}

/// Every row of a padded batch, greedy and beam, equals that input decoded alone: ids exactly,
/// decoder features and logits within 1e-5 x max.
#[test]
fn each_row_of_a_batched_decode_equals_the_row_decoded_alone() {
    let dir = fixtures().join("flan-t5-test");
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let model = HostT5::from_pretrained(&dir, dtype).unwrap();
        let d = model.config.d_model;
        let inputs: Vec<Vec<usize>> = [11, 3, 7, 1, 9]
            .iter()
            .enumerate()
            .map(|(r, &n)| {
                (0..n)
                    .map(|i| 2 + (r * 977 + i * 131) % 2000)
                    .chain([1])
                    .collect()
            })
            .collect();
        for beams in [1, 3] {
            let options = GenerateOptions {
                max_new_tokens: 7,
                num_beams: beams,
                length_penalty: 1.0,
            };
            let batched = model.generate(&inputs, &options);
            let steps = batched.sequences[0].len() - 1;
            for (r, input) in inputs.iter().enumerate() {
                let alone = model.generate(std::slice::from_ref(input), &options);
                let len = alone.sequences[0].len();
                let row = &batched.sequences[r];
                assert_eq!(
                    &row[..len],
                    &alone.sequences[0][..],
                    "{dtype} beams {beams} row {r}"
                );
                let fill = if beams == 1 { 0 } else { 1 };
                assert!(
                    row[len..].iter().all(|&t| t == fill),
                    "{dtype} row {r} padding {row:?}"
                );
                let features = &batched.hidden[r * steps * d..(r * steps + len - 1) * d];
                check_close(
                    &format!("{dtype} beams {beams} row {r} features"),
                    features,
                    &alone.hidden,
                    1e-5,
                );
            }
        }
        // Logits of one teacher-forced step, batched against alone.
        let (ids, mask) = pixel_lm::host_t5::pad_batch(&inputs, 0);
        let per = ids.len() / inputs.len();
        let dec: Vec<usize> = (0..inputs.len()).flat_map(|r| [0, 5 + r, 40 + r]).collect();
        let batched = model.forward(&ids, &mask, inputs.len(), &dec);
        let vocab = model.config.vocab_size;
        for (r, input) in inputs.iter().enumerate() {
            let alone = model.forward(input, &vec![true; input.len()], 1, &dec[r * 3..(r + 1) * 3]);
            check_close(
                &format!("{dtype} row {r} logits"),
                &batched.logits[r * 3 * vocab..(r + 1) * 3 * vocab],
                &alone.logits,
                1e-5,
            );
            assert_eq!(per, 12);
        }
    }
}

#[test]
fn bf16_weights_halve_the_bytes_a_step_reads() {
    let dir = fixtures().join("flan-t5-test");
    let f32 = HostT5::from_pretrained(&dir, Dtype::F32).unwrap();
    let bf16 = HostT5::from_pretrained(&dir, Dtype::Bf16).unwrap();
    assert_eq!(
        f32.decoder_weights().step_bytes(),
        2 * bf16.decoder_weights().step_bytes()
    );
}

#[test]
fn a_checkpoint_missing_a_tensor_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("t5-test");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let store = TensorStore::read(&src.join("model.safetensors")).unwrap();
    let mut cut = store.clone();
    cut.tensors
        .remove("decoder.block.1.layer.2.DenseReluDense.wo.weight");
    cut.write(&tmp.path().join("model.safetensors")).unwrap();
    let err = HostT5::from_pretrained(tmp.path(), Dtype::Bf16)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing tensor `decoder.block.1.layer.2.DenseReluDense.wo.weight`"),
        "{err}"
    );
}

/// `pixel lm forward|generate --dtype bf16` on the fixture files.
#[test]
fn bf16_tensor_files_in_and_out_match_hf() {
    let dir = fixtures().join("flan-t5-test");
    let model = HostT5::from_pretrained(&dir, Dtype::Bf16).unwrap();
    let inputs = TensorStore::read(&dir.join("inputs.safetensors")).unwrap();
    let case = Case::read("flan-t5-test");
    let out = model.forward_tensors(&inputs).unwrap();
    for key in ["encoder_last_hidden_state", "decoder_hidden", "logits"] {
        let (got, want) = (out.get(key).unwrap(), case.outputs.get(key).unwrap());
        assert_eq!(got.shape, want.shape, "{key}");
        check_close(&format!("file {key}"), &got.to_f32(), &want.to_f32(), 1e-4);
    }
    for (key, num_beams) in [
        ("greedy_sequences", 1),
        ("beam_sequences", case.scalar("num_beams")),
    ] {
        let options = GenerateOptions {
            max_new_tokens: case.scalar("max_new_tokens"),
            num_beams,
            length_penalty: 1.0,
        };
        let out = model.generate_tensors(&inputs, &options).unwrap();
        assert_eq!(
            out.get("sequences").unwrap(),
            case.outputs.get(key).unwrap(),
            "{key}"
        );
    }
}
