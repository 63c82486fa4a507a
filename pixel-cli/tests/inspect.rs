//! `pixel inspect` on a PixelLLM preset: parameters per part, trainable and frozen, as JSON; a
//! config of another preset, or a PixelLLM-only flag on an image-encoder preset, is an error
//! that says so. `pixel step` trains a preset composed from reference-format checkpoints.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pixel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pixel"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

#[test]
fn a_pixelllm_preset_is_counted_per_part_with_what_trains() {
    let out = pixel(&["inspect", "--preset", "pixelllm-test", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = json["parts"].as_array().unwrap();
    let row = |name: &str| {
        parts
            .iter()
            .find(|p| p["part"] == name)
            .unwrap_or_else(|| panic!("no {name} in {json}"))
    };
    // configs/models/pixelllm-test.toml freezes SAM, its prompt encoder and T5 (LoRA trains).
    for frozen in ["SAM image encoder", "prompt encoder", "T5"] {
        assert_eq!(row(frozen)["trainable"], 0, "{json}");
    }
    for trained in [
        "EVA02",
        "prompt feature extractor",
        "visual projection",
        "LoRA",
    ] {
        assert_eq!(
            row(trained)["trainable"],
            row(trained)["parameters"],
            "{json}"
        );
    }
    let total: u64 = parts
        .iter()
        .map(|p| p["parameters"].as_u64().unwrap())
        .sum();
    assert_eq!(json["parameters"].as_u64().unwrap(), total);
}

#[test]
fn a_config_of_another_preset_or_a_model_flag_on_an_encoder_is_an_error() {
    for (args, says) in [
        (
            &[
                "inspect",
                "--preset",
                "pixelllm-test",
                "--config",
                "configs/demo.toml",
            ][..],
            "model.preset is `pixel-tiny`, not `pixelllm-test`",
        ),
        (
            &["inspect", "--preset", "sam-vit-test", "--json"][..],
            "--config and --json are for PixelLLM presets",
        ),
    ] {
        let out = pixel(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
}

/// `pixel step` composes `pixelllm-test` from the reference-format checkpoints of
/// tools/make_paper_fixtures.py and trains two timed steps.
#[test]
fn pixel_step_trains_a_preset_composed_from_checkpoints_and_reports_time_and_memory() {
    let fixtures = repo().join("pixel-model/tests/fixtures/pixelllm-test");
    let shipped =
        std::fs::read_to_string(repo().join("configs/models/pixelllm-test.toml")).unwrap();
    let config = format!(
        "{shipped}\n[model.checkpoints]\nsam = \"{0}/sam\"\neva02 = \"{0}/eva02.safetensors\"\nt5 = \"{0}/t5\"\n",
        fixtures.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.toml");
    std::fs::write(&path, config).unwrap();
    let out = pixel(&[
        "step",
        "--config",
        path.to_str().unwrap(),
        "--steps",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["preset"], "pixelllm-test");
    let report = json["load_report"].as_str().unwrap();
    assert!(report.contains("from scratch: LoRA"), "{report}");
    let steps = json["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for step in steps {
        assert!(step["loss"].as_f64().unwrap().is_finite(), "{json}");
        assert!(step["forward_s"].as_f64().unwrap() > 0.0, "{json}");
    }
}
