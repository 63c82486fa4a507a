//! `pixel demo` killed with SIGKILL at several moments (early in training, among checkpoint
//! writes, near the end or during the evaluation) and resumed ends exactly as an uninterrupted
//! run: the same final weights bit for bit, the same `metrics.json` but for wall times, and a
//! log with each step once.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The demo config made small: 24 steps of 4 examples, a checkpoint every 3 steps, a short
/// evaluation, and no EVA02 pretraining (a cached stage would make the killed runs shorter than
/// the uninterrupted one they are timed by).
fn small_config(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(repo.join("configs/demo.toml")).unwrap();
    let (text, _pretraining) = text.split_once("[pretrain_eva]").unwrap();
    let mut text = text.replacen("steps = 3600", "steps = 24", 1);
    for (from, to) in [
        ("batch_size = 16", "batch_size = 4"),
        ("warmup_steps = 60", "warmup_steps = 4"),
        ("log_every = 10", "log_every = 1"),
        ("checkpoint_every = 400", "checkpoint_every = 3"),
        ("validation_images = 150", "validation_images = 6"),
        ("baseline_images = 400", "baseline_images = 6"),
        ("sample_images = 8", "sample_images = 2"),
    ] {
        assert!(text.contains(from), "{from}");
        text = text.replacen(from, to, 1);
    }
    let path = dir.join("small.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn demo(config: &Path, out: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pixel"));
    cmd.args([
        "demo",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .env("RAYON_NUM_THREADS", "1")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

fn run_to_end(mut cmd: Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `metrics.json` without the fields that measure time.
fn metrics_without_times(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("metrics.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let train = json["train"].as_object_mut().unwrap();
    train.remove("train_wall_s");
    train.remove("eval_wall_s");
    json
}

fn final_weights(out: &Path) -> Vec<u8> {
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    std::fs::read(
        out.join("checkpoints")
            .join(latest.trim())
            .join("model.safetensors"),
    )
    .unwrap()
}

fn logged_steps(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_killed_and_resumed_demo_ends_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let straight = dir.path().join("straight");
    let started = Instant::now();
    run_to_end(demo(&config, &straight, false));
    let whole = started.elapsed();
    assert_eq!(logged_steps(&straight), (1..=24).collect::<Vec<_>>());

    for fraction in [0.15, 0.45, 0.75, 0.95] {
        let out = dir.path().join(format!("killed-{fraction}"));
        let mut child = demo(&config, &out, false).spawn().unwrap();
        let deadline = Instant::now() + whole.mul_f64(fraction);
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SIGKILL: no destructor, no flush, no chance to clean up.
        let _ = child.kill();
        child.wait().unwrap();
        if fraction < 0.5 {
            assert!(
                !out.join("metrics.json").exists(),
                "the kill at {fraction} came too late"
            );
        }
        run_to_end(demo(&config, &out, true));
        assert_eq!(
            final_weights(&out),
            final_weights(&straight),
            "killed at {fraction}"
        );
        assert_eq!(
            metrics_without_times(&out),
            metrics_without_times(&straight),
            "killed at {fraction}"
        );
        assert_eq!(
            logged_steps(&out),
            (1..=24).collect::<Vec<_>>(),
            "killed at {fraction}"
        );
        let leftovers: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("step-") && n != "step-0000024")
            .collect();
        assert!(leftovers.is_empty(), "killed at {fraction}: {leftovers:?}");
    }
}
