//! The example's binary, as a user runs it: `demo`, `eval` and `ablate` with the circle head,
//! which no pixel-* crate knows, and its own metrics in their reports. Short runs (a few steps,
//! few images); the full-length configs are `demo.toml` and `ablation.toml` next to this
//! crate's Cargo.toml.
use std::path::{Path, PathBuf};
use std::process::Command;

fn custom_head() -> Command {
    Command::new(env!("CARGO_BIN_EXE_custom-head"))
}

fn example_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// The example's demo config, shortened for a test.
fn short_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(example_file("demo.toml")).unwrap();
    let short = text
        .replace("steps = 1600", "steps = 6")
        .replace("warmup_steps = 60", "warmup_steps = 2")
        .replace("checkpoint_every = 400", "checkpoint_every = 3")
        .replace("validation_images = 150", "validation_images = 6")
        .replace("baseline_images = 400", "baseline_images = 6")
        .replace("sample_images = 8", "sample_images = 1");
    assert_ne!(text, short, "the example config changed; update the test");
    let path = dir.join("demo.toml");
    std::fs::write(&path, short).unwrap();
    path
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{cmd:?}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn demo_then_eval_with_the_circle_head() {
    let dir = tempfile::tempdir().unwrap();
    let config = short_config(dir.path());
    let run = dir.path().join("run");
    let stdout = run_ok(
        custom_head()
            .args(["demo", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&run),
    );
    assert!(
        stdout.contains("referring localization: Acc@0.5"),
        "{stdout}"
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["train"]["steps"], 6);
    // The head's own metrics, which no pixel-* crate knows, reach the report and the terminal.
    assert!(
        metrics["heads"]["circle"]["centre_error_px"].is_f64(),
        "{metrics}"
    );
    assert!(stdout.contains("head circle: centre_error_px"), "{stdout}");
    let weights = std::fs::read(run.join("checkpoints/step-0000006/model.safetensors")).unwrap();
    let names = String::from_utf8_lossy(&weights[..weights.len().min(1 << 16)]).to_string();
    assert!(
        names.contains("heads.circle.mlp"),
        "the checkpoint holds the head's tensors"
    );

    let eval = dir.path().join("eval");
    run_ok(
        custom_head()
            .args(["eval", "--config"])
            .arg(&config)
            .arg("--checkpoint")
            .arg(&run)
            .arg("--out")
            .arg(&eval),
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval.join("results.json")).unwrap()).unwrap();
    let acc = results["referring_localization"]["acc50"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    for metric in ["centre_error_px", "radius_error_px"] {
        let px = results["heads"]["circle"][metric].as_f64().unwrap();
        assert!((0.0..=64.0 * 1.5).contains(&px), "{metric} {px}");
    }
    let table = std::fs::read_to_string(eval.join("results.md")).unwrap();
    assert!(table.contains("| circle | radius_error_px |"), "{table}");
}

#[test]
fn ablate_with_the_circle_head() {
    let dir = tempfile::tempdir().unwrap();
    short_config(dir.path());
    let text = std::fs::read_to_string(example_file("ablation.toml")).unwrap();
    let short = text
        .replace("train.steps = 600", "train.steps = 4")
        .replace("train.warmup_steps = 40", "train.warmup_steps = 1")
        .replace("train.checkpoint_every = 200", "train.checkpoint_every = 2");
    assert_ne!(text, short, "the example ablation changed; update the test");
    let config = dir.path().join("ablation.toml");
    std::fs::write(&config, short).unwrap();
    let out = dir.path().join("ablate");
    run_ok(
        custom_head()
            .args(["ablate", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&out),
    );
    let table = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        table.contains("circle") && table.contains("point"),
        "{table}"
    );
}
