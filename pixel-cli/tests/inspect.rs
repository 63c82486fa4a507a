//! `pixel inspect` on a PixelLLM preset: parameters per part, trainable and frozen, as JSON; a
//! config of another preset, or a PixelLLM-only flag on an image-encoder preset, is an error
//! that says so.
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
