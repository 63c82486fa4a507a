//! Training fidelity: one training step's gradients equal the PyTorch twin's (`tools/twin/`).
//!
//! Each fixture folder under `tests/fixtures/twin/` holds the config, the batch and the twin's
//! gradients (float64 twin, stored as f32) of `pixel grads --batch-size 6`; the model's initial
//! weights are rebuilt here from the config's seed. Regenerate with
//! `tools/make_twin_fixtures.sh` after a change to initialisation, data or the model.
use pixel_core::checkpoint::TensorStore;
use pixel_model::heads::HeadRegistry;
use pixel_run::experiment::ExperimentConfig;
use pixel_run::grads::write_grads;
use std::path::{Path, PathBuf};

/// Largest allowed `max|a - b| / max|b|` per tensor.
const TENSOR_TOLERANCE: f32 = 1e-4;
/// Largest allowed difference of a loss term.
const LOSS_TOLERANCE: f32 = 1e-5;
/// Below this fraction of the largest gradient entry of any tensor, a float32 difference is
/// rounding noise (a key bias's true gradient is exactly zero; ours is ~1e-10).
const NOISE_FLOOR: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/twin")
        .join(name)
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Recomputes the step of fixture `name` and compares it with the twin's, tensor by tensor.
fn gradients_match_the_twin(name: &str) {
    let dir = fixture(name);
    let config = ExperimentConfig::load(&dir.join("config.toml")).unwrap();
    let out = tempfile::tempdir().unwrap();
    write_grads(&config, 0, 0, out.path(), &HeadRegistry::builtin()).unwrap();

    let batch = TensorStore::read(&out.path().join("batch.safetensors")).unwrap();
    let expected_batch = TensorStore::read(&dir.join("batch.safetensors")).unwrap();
    assert_eq!(
        batch.tensors, expected_batch.tensors,
        "{name}: the batch differs from the fixture's (data changed? regenerate the fixtures)"
    );

    let ours = TensorStore::read(&out.path().join("grads.safetensors")).unwrap();
    let twin = TensorStore::read(&dir.join("twin_grads.safetensors")).unwrap();
    let names = |s: &TensorStore| s.tensors.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&twin), "{name}: tensor names differ");

    let largest = twin
        .tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("loss/"))
        .map(|(_, t)| max_abs(&t.to_f32()))
        .fold(0.0f32, f32::max);
    let mut failures = Vec::new();
    for (key, reference) in &twin.tensors {
        let a = ours.require(key).unwrap().to_f32();
        let b = reference.to_f32();
        assert_eq!(a.len(), b.len(), "{name}: `{key}` has another size");
        let diff = a
            .iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        if key.starts_with("loss/") {
            if diff > LOSS_TOLERANCE {
                failures.push(format!(
                    "{key}: ours {} twin {} (|diff| {diff:.2e})",
                    a[0], b[0]
                ));
            }
            continue;
        }
        let error = diff / max_abs(&b).max(NOISE_FLOOR * largest);
        if error > TENSOR_TOLERANCE {
            failures.push(format!("{key}: relative error {error:.2e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} tensors differ from the twin:\n{}",
        failures.len(),
        twin.tensors.len(),
        failures.join("\n")
    );
}

#[test]
fn demo_gradients_match_the_pytorch_twin() {
    gradients_match_the_twin("demo");
}

#[test]
fn lora_box_gradients_match_the_pytorch_twin() {
    gradients_match_the_twin("lora-box");
}
