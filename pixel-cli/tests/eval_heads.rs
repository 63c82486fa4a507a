//! `pixel eval` scores the heads that read the image when the config has them: a tiny model
//! with the point, mask and detection heads trains a few steps with `pixel demo`, and `pixel
//! eval` reports referring segmentation and dense captioning for every validation expression
//! and image, with numbers in [0, 1]. The scores' values are tested against perfect predictions
//! next to the adapters (`pixel_run::eval_heads`); this test holds the wiring.
use pixel_run::ablate::deep_merge;
use pixel_run::eval_run::EvalResults;
use std::path::{Path, PathBuf};
use std::process::Command;

const VALIDATION_IMAGES: u64 = 3;
const MAX_PROPOSALS: usize = 2;

/// `configs/densecap.toml` shrunk to a few seconds, with a mask head too. The detection threshold
/// is low so that a barely trained head proposes boxes and the captioning path runs.
const TINY: &str = r#"
[data]
min_objects = 2
max_objects = 3

[[model.heads]]
kind = "point"
weight = 0.1

[[model.heads]]
kind = "mask"
prompt = "point"

[[model.heads]]
kind = "detection"
threshold = 0.01

[tasks]
max_target_tokens = 16

[train]
steps = 3
batch_size = 4
warmup_steps = 1
checkpoint_every = 0

[eval]
validation_images = 3
baseline_images = 4
sample_images = 1
max_new_tokens = 6
batch_size = 8
densecap_max_proposals = 2
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Writes the shipped dense-captioning config with `patch` merged into it to `dir/name`.
fn config_file(dir: &Path, name: &str, patch: &str) -> PathBuf {
    let base = std::fs::read_to_string(repo().join("configs/densecap.toml")).unwrap();
    let mut config: toml::Table = toml::from_str(&base).unwrap();
    deep_merge(&mut config, &toml::from_str(patch).unwrap());
    let path = dir.join(name);
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

/// Runs `pixel ARGS...`, returning whether it succeeded and its stderr.
fn pixel(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixel"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "pixel {args:?}:\n{stderr}");
    (out.status.success(), stderr)
}

fn unit(v: f64) -> bool {
    v.is_finite() && (0.0..=1.0).contains(&v)
}

#[test]
fn eval_scores_the_mask_and_detection_heads_of_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "tiny.toml", TINY);
    let config = config.to_str().unwrap();
    let run = dir.path().join("run");
    let out = dir.path().join("eval");
    let (ok, err) = pixel(&["demo", "--config", config, "--out", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, err) = pixel(&[
        "eval",
        "--config",
        config,
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");

    let results: EvalResults =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let seg = results
        .referring_segmentation
        .as_ref()
        .expect("a mask head is configured");
    // Every ShapesLN object has a mask, so every referring expression is scored.
    assert_eq!(seg.count, results.eval.referring_localization.count);
    assert!(seg.count >= 2 * VALIDATION_IMAGES as usize, "{seg:?}");
    for v in [
        seg.ciou,
        seg.giou,
        seg.acc50,
        seg.baseline_ciou,
        seg.baseline_giou,
        seg.baseline_acc50,
    ] {
        assert!(unit(v), "{seg:?}");
    }
    let dense = results
        .dense_captioning
        .as_ref()
        .expect("a detection head is configured");
    assert_eq!(dense.images, VALIDATION_IMAGES as usize);
    assert!(dense.regions >= 2 * dense.images, "{dense:?}");
    assert_eq!(dense.max_proposals, MAX_PROPOSALS);
    assert_eq!(dense.proposals, MAX_PROPOSALS * dense.images, "{dense:?}");
    assert!(unit(dense.map) && unit(dense.map_detection), "{dense:?}");

    // What a person looks at: captioned proposals and masks over their images.
    for png in ["densecap.png", "masks.png"] {
        let image = image::open(out.join(png)).unwrap();
        assert!(image.width() > 256 && image.height() > 256, "{png}");
    }

    let table = std::fs::read_to_string(out.join("results.md")).unwrap();
    for row in [
        "| referring segmentation | cIoU |",
        "| referring segmentation | gIoU |",
        "| referring segmentation | mask Acc@0.5 |",
        "| dense captioning | mAP |",
        "| dense captioning | detection mAP |",
    ] {
        assert!(table.contains(row), "`{row}` missing from\n{table}");
    }
}

#[test]
fn zero_densecap_proposals_fail_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "zero.toml",
        "[eval]\ndensecap_max_proposals = 0\n",
    );
    let (ok, err) = pixel(&[
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--checkpoint",
        dir.path().join("nowhere").to_str().unwrap(),
        "--out",
        dir.path().join("eval").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("eval.densecap_max_proposals: must be at least 1"),
        "{err}"
    );
}
