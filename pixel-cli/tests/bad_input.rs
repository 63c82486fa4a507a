//! Bad tensors given to `pixel lm forward|generate`, `pixel vision forward` and `pixel sam
//! predict` end the command with an error that names the tensor and its expected and actual
//! shape, never with a panic. Models are the parity fixtures of pixel-lm and pixel-vision.
use pixel_core::checkpoint::{StoredTensor, TensorStore};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn t5_model() -> PathBuf {
    repo().join("pixel-lm/tests/fixtures/t5-test")
}

fn sam_model() -> PathBuf {
    repo().join("pixel-vision/tests/fixtures/sam-vit-test")
}

fn eva_model() -> PathBuf {
    repo().join("pixel-vision/tests/fixtures/eva02-test.safetensors")
}

/// Writes `tensors` to `inputs.safetensors` in `dir`.
fn inputs(dir: &Path, tensors: Vec<(&str, StoredTensor)>) -> PathBuf {
    let path = dir.join("inputs.safetensors");
    let mut store = TensorStore::default();
    for (name, t) in tensors {
        store.insert(name, t);
    }
    store.write(&path).unwrap();
    path
}

/// Input tensors and the parts the error message must contain.
type Case = (Vec<(&'static str, StoredTensor)>, &'static [&'static str]);

fn f32s(shape: &[usize]) -> StoredTensor {
    let n = shape.iter().product();
    StoredTensor::f32(
        shape.to_vec(),
        (0..n).map(|i| (i % 7) as f32 * 0.1).collect(),
    )
}

fn ids(shape: &[usize]) -> StoredTensor {
    let n = shape.iter().product();
    StoredTensor::i64(
        shape.to_vec(),
        (0..n).map(|i| 2 + (i as i64 % 50)).collect(),
    )
}

/// Runs `pixel ARGS...` and returns its stderr after checking that it failed without a panic.
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pixel"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "pixel {args:?} succeeded");
    assert!(
        !stderr.contains("panicked"),
        "pixel {args:?} panicked:\n{stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn assert_mentions(stderr: &str, parts: &[&str]) {
    for part in parts {
        assert!(stderr.contains(part), "`{part}` missing from:\n{stderr}");
    }
}

/// `pixel <subcommand...> --model MODEL --inputs IN --out OUT` on the given tensors.
fn run_with(
    subcommand: &[&str],
    model: &Path,
    extra: &[&str],
    tensors: Vec<(&str, StoredTensor)>,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = inputs(dir.path(), tensors);
    let out = dir.path().join("out.safetensors");
    let mut args: Vec<&str> = subcommand.to_vec();
    let (model, input, out) = (
        model.to_string_lossy().to_string(),
        input.to_string_lossy().to_string(),
        out.to_string_lossy().to_string(),
    );
    args.extend(["--model", &model, "--inputs", &input, "--out", &out]);
    args.extend(extra);
    fails(&args)
}

#[test]
fn vision_forward_rejects_pixel_values_of_the_wrong_shape() {
    let expected = "`pixel_values` must be [B, 3, 128, 128] with B >= 1";
    for shape in [
        vec![3, 128, 128],
        vec![1, 4, 128, 128],
        vec![1, 3, 64, 64],
        vec![1, 3, 128, 96],
        vec![0, 3, 128, 128],
    ] {
        let err = run_with(
            &["vision", "forward"],
            &sam_model(),
            &[],
            vec![("pixel_values", f32s(&shape))],
        );
        assert_mentions(&err, &[expected, &format!("it is {shape:?}")]);
    }
}

#[test]
fn vision_forward_on_eva02_rejects_pixel_values_of_the_wrong_shape() {
    for shape in [vec![1, 3, 112, 112], vec![2, 1, 56, 56], vec![0, 3, 56, 56]] {
        let err = run_with(
            &["vision", "forward"],
            &eva_model(),
            &["--preset", "eva02-test"],
            vec![("pixel_values", f32s(&shape))],
        );
        assert_mentions(
            &err,
            &[
                "`pixel_values` must be [B, 3, 56, 56] with B >= 1",
                &format!("it is {shape:?}"),
            ],
        );
    }
}

#[test]
fn vision_forward_without_pixel_values_names_the_tensor() {
    let err = run_with(
        &["vision", "forward"],
        &sam_model(),
        &[],
        vec![("images", f32s(&[1, 3, 128, 128]))],
    );
    assert_mentions(&err, &["pixel_values"]);
}

#[test]
fn sam_predict_rejects_pixel_values_of_the_wrong_shape() {
    for shape in [vec![1, 3, 100, 100], vec![0, 3, 128, 128], vec![128, 128]] {
        let err = run_with(
            &["sam", "predict"],
            &sam_model(),
            &[],
            vec![
                ("pixel_values", f32s(&shape)),
                ("input_boxes", f32s(&[1, 1, 4])),
            ],
        );
        assert_mentions(
            &err,
            &[
                "`pixel_values` must be [B, 3, 128, 128]",
                &format!("{shape:?}"),
            ],
        );
    }
}

#[test]
fn sam_predict_rejects_prompts_of_the_wrong_shape() {
    let pixels = || ("pixel_values", f32s(&[2, 3, 128, 128]));
    let cases: Vec<Case> = vec![
        (
            vec![
                pixels(),
                ("input_points", f32s(&[2, 1, 3, 3])),
                ("input_labels", ids(&[2, 1, 3])),
            ],
            &["`input_points` must be [2, P, N, 2]", "it is [2, 1, 3, 3]"],
        ),
        (
            vec![
                pixels(),
                ("input_points", f32s(&[1, 1, 3, 2])),
                ("input_labels", ids(&[1, 1, 3])),
            ],
            &["`input_points` must be [2, P, N, 2]", "it is [1, 1, 3, 2]"],
        ),
        (
            vec![
                pixels(),
                ("input_points", f32s(&[2, 1, 3, 2])),
                ("input_labels", ids(&[2, 1, 2])),
            ],
            &["`input_labels` must be [2, 1, 3]", "it is [2, 1, 2]"],
        ),
        (
            vec![pixels(), ("input_points", f32s(&[2, 1, 3, 2]))],
            &["`input_points` needs `input_labels`"],
        ),
        (
            vec![pixels(), ("input_boxes", f32s(&[2, 4]))],
            &["`input_boxes` must be [2, P, 4]", "it is [2, 4]"],
        ),
        (
            vec![
                pixels(),
                ("input_points", f32s(&[2, 1, 3, 2])),
                ("input_labels", ids(&[2, 1, 3])),
                ("input_boxes", f32s(&[2, 2, 4])),
            ],
            &["`input_boxes` must be [2, 1, 4]", "it is [2, 2, 4]"],
        ),
        (
            vec![
                pixels(),
                ("input_boxes", f32s(&[2, 1, 4])),
                ("input_masks", f32s(&[2, 1, 16, 16])),
            ],
            &[
                "`input_masks` must be [2, 1, 32, 32]",
                "it is [2, 1, 16, 16]",
            ],
        ),
        (vec![pixels()], &["give input_points"]),
    ];
    for (tensors, parts) in cases {
        let err = run_with(&["sam", "predict"], &sam_model(), &["--multimask"], tensors);
        assert_mentions(&err, parts);
    }
}

#[test]
fn lm_forward_rejects_ids_of_the_wrong_rank_dtype_or_batch() {
    let dec = || ("decoder_input_ids", ids(&[2, 3]));
    let cases: Vec<Case> = vec![
        (
            vec![("input_ids", ids(&[11])), dec()],
            &["`input_ids` must be [batch, tokens], it is [11]"],
        ),
        (
            vec![("input_ids", ids(&[2, 3, 4])), dec()],
            &["`input_ids` must be [batch, tokens], it is [2, 3, 4]"],
        ),
        (
            vec![("input_ids", f32s(&[2, 5])), dec()],
            &["`input_ids` must be an integer tensor, it is F32"],
        ),
        (
            vec![("input_ids", ids(&[0, 5])), ("decoder_input_ids", ids(&[0, 3]))],
            &["`input_ids` must be [batch, tokens] with at least one row and one token, it is [0, 5]"],
        ),
        (
            vec![("input_ids", ids(&[2, 0])), dec()],
            &["`input_ids`", "it is [2, 0]"],
        ),
        (
            vec![("input_ids", ids(&[2, 5])), ("attention_mask", ids(&[2, 4])), dec()],
            &["`attention_mask` must be [2, 5] (as `input_ids`), it is [2, 4]"],
        ),
        (
            vec![("input_ids", ids(&[2, 5])), ("attention_mask", f32s(&[2, 5])), dec()],
            &["`attention_mask` must be an integer tensor, it is F32"],
        ),
        (
            vec![("input_ids", ids(&[2, 5])), ("decoder_input_ids", ids(&[3, 3]))],
            &["`decoder_input_ids` must be [2, tokens] (the batch of `input_ids`), it is [3, 3]"],
        ),
        (
            vec![("input_ids", ids(&[2, 5])), ("decoder_input_ids", ids(&[6]))],
            &["`decoder_input_ids` must be [batch, tokens], it is [6]"],
        ),
        (
            vec![("input_ids", ids(&[2, 5]))],
            &["needs `decoder_input_ids`"],
        ),
        (vec![dec()], &["no `input_ids` tensor"]),
        (
            vec![
                ("input_ids", StoredTensor::i64(vec![1, 2], vec![5, 40_000])),
                ("decoder_input_ids", ids(&[1, 1])),
            ],
            &["`input_ids` holds id 40000, the vocabulary has 32128"],
        ),
        (
            vec![
                ("input_ids", StoredTensor::i64(vec![1, 2], vec![5, -3])),
                ("decoder_input_ids", ids(&[1, 1])),
            ],
            &["`input_ids` has negative entries"],
        ),
    ];
    for (tensors, parts) in cases {
        let err = run_with(&["lm", "forward"], &t5_model(), &[], tensors);
        assert_mentions(&err, parts);
        assert_mentions(&err, &["inputs.safetensors"]);
    }
}

#[test]
fn lm_generate_rejects_ids_of_the_wrong_rank_or_shape() {
    let cases: Vec<Case> = vec![
        (
            vec![("input_ids", ids(&[1, 2, 5]))],
            &["`input_ids` must be [batch, tokens], it is [1, 2, 5]"],
        ),
        (
            vec![
                ("input_ids", ids(&[2, 5])),
                ("attention_mask", ids(&[1, 5])),
            ],
            &["`attention_mask` must be [2, 5] (as `input_ids`), it is [1, 5]"],
        ),
        (
            vec![("input_ids", ids(&[0, 5]))],
            &["at least one row and one token, it is [0, 5]"],
        ),
    ];
    for (tensors, parts) in cases {
        let err = run_with(
            &["lm", "generate"],
            &t5_model(),
            &["--max-new-tokens", "3", "--num-beams", "2"],
            tensors,
        );
        assert_mentions(&err, parts);
    }
}

/// User files `pixel demo` and `pixel eval` read: a config that is not UTF-8, a corrupt
/// checkpoint, and a `latest` pointer that leaves the run, each an error that names the file and
/// says what is wrong, never a panic.
#[test]
fn bad_run_files_are_errors_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exp.toml");
    let mut text = std::fs::read(repo().join("configs/demo.toml")).unwrap();
    text.extend(b"\n# caf\xe9\n");
    std::fs::write(&config, &text).unwrap();
    let stderr = fails(&["demo", "--config", config.to_str().unwrap()]);
    assert_mentions(
        &stderr,
        &[
            "exp.toml",
            "not UTF-8 text",
            "byte offset",
            "save the file as UTF-8",
        ],
    );

    let run = dir.path().join("run");
    let checkpoint = run.join("checkpoints/step-0000010");
    std::fs::create_dir_all(&checkpoint).unwrap();
    std::fs::write(
        checkpoint.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":",
    )
    .unwrap();
    std::fs::write(run.join("checkpoints/latest"), "step-0000010").unwrap();
    let out = dir.path().join("eval");
    let eval = [
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let stderr = fails(&eval);
    assert_mentions(&stderr, &["model.safetensors", "damaged or was cut short"]);

    std::fs::write(
        run.join("checkpoints/latest"),
        "../../elsewhere/step-0000010",
    )
    .unwrap();
    let stderr = fails(&eval);
    assert_mentions(&stderr, &["latest", "not a checkpoint folder of this run"]);
}
