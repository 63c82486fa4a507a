//! `pixel predict` and `pixel serve` on a tiny model trained here for a few steps (point, mask
//! and detection heads): every task answers in the pixels of the image as given, a bad request
//! fails alone, a missing head is named, and the HTTP API answers a real client, refuses bad
//! requests with a 4xx and goes on serving.
use base64::Engine;
use pixel_data::shapes_ln::{ShapesLn, ShapesLnConfig, Split};
use pixel_run::predict::Answer;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The tiny model of `tests/eval_heads.rs`: `configs/densecap.toml` with a mask head, 3 steps.
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
validation_images = 2
baseline_images = 2
sample_images = 1
max_new_tokens = 6
batch_size = 8
densecap_max_proposals = 2
"#;

/// The same without the mask and detection heads.
const POINT_ONLY: &str = r#"
[[model.heads]]
kind = "point"
weight = 0.1

[train]
steps = 2
batch_size = 2
warmup_steps = 1
checkpoint_every = 0

[eval]
validation_images = 1
baseline_images = 1
sample_images = 1
max_new_tokens = 4
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Trains the model of `patch` (merged into `configs/densecap.toml`) once per test process.
fn trained(cell: &'static OnceLock<PathBuf>, patch: &str) -> &'static Path {
    cell.get_or_init(|| {
        // Kept for the whole test process: every test reads the run.
        let dir = tempfile::tempdir().unwrap().keep();
        let base = std::fs::read_to_string(repo().join("configs/densecap.toml")).unwrap();
        let mut config: toml::Table = toml::from_str(&base).unwrap();
        pixel_run::ablate::deep_merge(&mut config, &toml::from_str(patch).unwrap());
        let path = dir.join("config.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let run = dir.join("run");
        let (ok, _, err) = pixel(&[
            "demo",
            "--config",
            path.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        run
    })
}

fn tiny_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    trained(&RUN, TINY)
}

/// Runs `pixel ARGS...`: whether it succeeded, its stdout and its stderr.
fn pixel(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixel"))
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "pixel {args:?}:\n{stderr}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    )
}

/// A ShapesLN validation image, nearest-resized to `w x h`, as a PNG file in `dir`.
fn picture(dir: &Path, name: &str, w: u32, h: u32) -> PathBuf {
    let data = ShapesLn::new(ShapesLnConfig::default(), 7).unwrap();
    let image = data.sample(Split::Validation, 0).image;
    let image = image::imageops::resize(&image, w, h, image::imageops::FilterType::Nearest);
    let path = dir.join(name);
    image.save(&path).unwrap();
    path
}

fn predict(image: &Path, task: &[&str]) -> Answer {
    let run = tiny_run().to_str().unwrap();
    let mut args = vec![
        "predict",
        "--checkpoint",
        run,
        "--image",
        image.to_str().unwrap(),
    ];
    args.extend(task);
    let (ok, stdout, err) = pixel(&args);
    assert!(ok, "{err}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn every_task_answers_in_the_pixels_of_the_image_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let wide = picture(dir.path(), "wide.png", 192, 96);

    let trace = predict(&wide, &["--task", "trace"]);
    assert_eq!((trace.width, trace.height), (192, 96));
    let words = trace.words.expect("trace answers words");
    let caption = trace.caption.expect("trace answers a caption");
    let joined: Vec<&str> = words.iter().map(|w| w.word.as_str()).collect();
    assert_eq!(joined.join(" "), caption);
    assert!(words.iter().all(|w| w.points.len() % 2 == 0));

    let refer = predict(&wide, &["--task", "refer", "--text", "the red circle"]);
    let b = refer.bbox.expect("refer answers a box");
    assert!(b[0] <= b[2] && b[1] <= b[3], "{b:?}");
    let mask = refer.mask.expect("the model has a mask head");
    assert_eq!(
        mask.size(),
        Some((96, 192)),
        "the mask is at the image's size"
    );
    assert!(refer.unknown_words.is_empty(), "{:?}", refer.unknown_words);
    let odd = predict(&wide, &["--task", "refer", "--text", "the zebra"]);
    assert_eq!(odd.unknown_words, ["zebra"]);

    let locate = predict(&wide, &["--task", "locate", "--box", "10,20,100,90"]);
    assert_eq!(locate.bbox, Some([10.0, 20.0, 100.0, 90.0]));
    assert!(locate.caption.is_some());
    let point = predict(&wide, &["--task", "locate", "--point", "50,50"]);
    assert_eq!(point.bbox, Some([50.0, 50.0, 50.0, 50.0]));

    let dense = predict(&wide, &["--task", "densecap"]);
    let regions = dense.regions.expect("densecap answers regions");
    assert!(!regions.is_empty() && regions.len() <= 2, "{regions:?}");
    for r in &regions {
        let [x0, y0, x1, y1] = r.bbox;
        assert!(0.0 <= x0 && x0 <= x1 && x1 <= 192.0 && 0.0 <= y0 && y0 <= y1 && y1 <= 96.0);
    }
    assert!(regions.windows(2).all(|p| p[0].score >= p[1].score));
}

#[test]
fn a_picture_twice_as_wide_gives_boxes_twice_as_wide() {
    // The model sees both as the same 64x64 input (up to the resize filter at object edges),
    // so its normalized boxes agree and the answers differ by the images' scale.
    let dir = tempfile::tempdir().unwrap();
    let square = picture(dir.path(), "square.png", 64, 64);
    let wide = picture(dir.path(), "wide.png", 128, 64);
    let refer = ["--task", "refer", "--text", "the circle"];
    let a = predict(&square, &refer).bbox.unwrap();
    let b = predict(&wide, &refer).bbox.unwrap();
    for (k, scale) in [2.0, 1.0, 2.0, 1.0].into_iter().enumerate() {
        assert!(
            (b[k] - a[k] * scale).abs() <= 2.0 * scale,
            "coordinate {k}: {a:?} at 64x64, {b:?} at 128x64"
        );
    }
    let dense_a = predict(&square, &["--task", "densecap"]).regions.unwrap();
    let dense_b = predict(&wide, &["--task", "densecap"]).regions.unwrap();
    assert!((dense_b[0].bbox[2] - 2.0 * dense_a[0].bbox[2]).abs() <= 4.0);
}

#[test]
fn predict_out_writes_the_answer_and_an_annotated_png() {
    let dir = tempfile::tempdir().unwrap();
    let image = picture(dir.path(), "photo.png", 100, 80);
    let out = dir.path().join("out");
    let run = tiny_run().to_str().unwrap();
    let (ok, _, err) = pixel(&[
        "predict",
        "--checkpoint",
        run,
        "--image",
        image.to_str().unwrap(),
        "--task",
        "refer",
        "--text",
        "the blue square",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let answer: Answer =
        serde_json::from_slice(&std::fs::read(out.join("predictions.json")).unwrap()).unwrap();
    assert_eq!((answer.width, answer.height), (100, 80));
    let png = image::open(out.join("photo.png")).unwrap().to_rgb8();
    let first = png.get_pixel(0, 0);
    assert!(
        png.pixels().any(|p| p != first),
        "the annotated PNG is blank"
    );
}

#[test]
fn a_bad_request_fails_alone_and_the_rest_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    picture(dir.path(), "good.png", 90, 60);
    std::fs::write(dir.path().join("broken.png"), b"not a png").unwrap();
    let lines = [
        r#"{"id": "trace", "image": "good.png"}"#,
        r#"{"id": "missing", "image": "nowhere.png"}"#,
        r#"{"id": "broken", "image": "broken.png"}"#,
        r#"{"id": "outside", "image": "good.png", "task": "locate", "box": [0, 0, 91, 10]}"#,
        r#"{"id": "empty", "image": "good.png", "task": "refer", "text": " "}"#,
        r#"{"id": "typo", "image": "good.png", "taks": "refer"}"#,
        r#"{"id": "refer", "image": "good.png", "task": "refer", "text": "the green triangle"}"#,
    ];
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(&requests, lines.join("\n")).unwrap();
    let run = tiny_run().to_str().unwrap();
    let (ok, stdout, err) = pixel(&[
        "predict",
        "--checkpoint",
        run,
        "--requests",
        requests.to_str().unwrap(),
        "--batch-size",
        "3",
    ]);
    assert!(!ok, "a failed request makes the exit code 1");
    assert!(err.contains("7 requests: 2 answered, 5 failed"), "{err}");
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 7, "{stdout}");
    let error = |i: usize| answers[i]["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(answers[0]["id"], "trace");
    assert!(answers[0]["caption"].is_string(), "{}", answers[0]);
    assert!(error(1).contains("nowhere.png"), "{}", error(1));
    assert!(error(2).contains("cannot decode the image"), "{}", error(2));
    assert!(error(3).contains("outside the 90x60 image"), "{}", error(3));
    assert!(error(4).contains("non-empty `text`"), "{}", error(4));
    assert!(
        error(5).contains("requests.jsonl:6") && error(5).contains("taks"),
        "{}",
        error(5)
    );
    assert_eq!(answers[6]["id"], "refer");
    assert!(answers[6]["box"].is_array(), "{}", answers[6]);

    // A folder: every PNG, the undecodable one failing alone.
    let out = dir.path().join("out");
    let (ok, _, err) = pixel(&[
        "predict",
        "--checkpoint",
        run,
        "--images",
        dir.path().to_str().unwrap(),
        "--task",
        "densecap",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("2 requests: 1 answered, 1 failed"),
        "{err}"
    );
    let written = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap();
    assert_eq!(written.lines().count(), 2);
    assert!(out.join("0002-good.png").is_file(), "{written}");
}

#[test]
fn a_task_whose_head_the_model_lacks_names_the_head() {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    let run = trained(&RUN, POINT_ONLY).to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = picture(dir.path(), "a.png", 64, 64);
    let (ok, _, err) = pixel(&[
        "predict",
        "--checkpoint",
        run,
        "--image",
        image.to_str().unwrap(),
        "--task",
        "densecap",
    ]);
    assert!(!ok);
    assert!(
        err.contains("needs a detection head") && err.contains("the heads point"),
        "{err}"
    );
}

/// A `pixel serve` process, killed when dropped.
struct Server {
    child: std::process::Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pixel"))
        .args(["serve", "--port", "0", "--checkpoint"])
        .arg(tiny_run())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {line}"))
        .to_string();
    Server { child, url }
}

/// The status and JSON body of a response, error statuses included.
fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, serde_json::Value) {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = response.status();
    (status, response.into_json().unwrap())
}

#[test]
fn the_api_answers_json_and_uploads_refuses_bad_requests_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let png = std::fs::read(picture(dir.path(), "a.png", 120, 60)).unwrap();
    let server = serve();
    let api = format!("{}/api/predict", server.url);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&png);
    let post_json = |body: serde_json::Value| {
        answer(
            ureq::post(&api)
                .set("content-type", "application/json")
                .send_string(&body.to_string()),
        )
    };

    let page = ureq::get(&server.url)
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(page.contains("<title>PixelLLM: try your model</title>"));
    let (status, info) = answer(ureq::get(&format!("{}/api/info", server.url)).call());
    assert_eq!(status, 200);
    assert_eq!(info["tasks"].as_array().map(Vec::len), Some(5), "{info}");

    let (status, trace) = post_json(serde_json::json!({"image_base64": encoded, "task": "trace"}));
    assert_eq!(status, 200, "{trace}");
    assert_eq!(
        (trace["width"].as_u64(), trace["height"].as_u64()),
        (Some(120), Some(60))
    );
    assert!(trace["words"].is_array(), "{trace}");

    // A multipart upload, with the annotated PNG asked for.
    let boundary = "pixel-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend(&png);
    for (name, value) in [("task", "locate"), ("box", "10,10,60,50"), ("id", "up")] {
        body.extend(
            format!(
                "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}"
            )
            .bytes(),
        );
    }
    body.extend(format!("\r\n--{boundary}--\r\n").bytes());
    let (status, located) = answer(
        ureq::post(&format!("{api}?annotate=true"))
            .set(
                "content-type",
                &format!("multipart/form-data; boundary={boundary}"),
            )
            .send_bytes(&body),
    );
    assert_eq!(status, 200, "{located}");
    assert_eq!(located["id"], "up");
    assert_eq!(located["box"], serde_json::json!([10.0, 10.0, 60.0, 50.0]));
    let drawn = base64::engine::general_purpose::STANDARD
        .decode(located["annotated_png"].as_str().unwrap())
        .unwrap();
    assert!(image::load_from_memory(&drawn).is_ok());

    for (body, expected) in [
        (serde_json::json!({"task": "trace"}), "no image"),
        (
            serde_json::json!({"image": "/etc/passwd"}),
            "the server reads no files",
        ),
        (
            serde_json::json!({"image_base64": encoded, "task": "locate", "box": [0, 0, 121, 5]}),
            "outside the 120x60 image",
        ),
        (
            serde_json::json!({"image_base64": encoded, "task": "segment"}),
            "unknown variant `segment`",
        ),
        (serde_json::json!({"image_base64": "@@@"}), "not base64"),
    ] {
        let (status, error) = post_json(body.clone());
        assert_eq!(status, 400, "{body}: {error}");
        let message = error["error"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{body}: {message}");
    }
    let (status, error) = answer(
        ureq::post(&api)
            .set("content-type", "application/json")
            .send_string("{not json"),
    );
    assert_eq!(status, 400, "{error}");
    let (status, error) = answer(
        ureq::post(&api)
            .set("content-type", "text/plain")
            .send_string("hello"),
    );
    assert_eq!(status, 415, "{error}");

    let (status, refer) = post_json(
        serde_json::json!({"image_base64": encoded, "task": "refer", "text": "the red circle"}),
    );
    assert_eq!(status, 200, "still serving after bad requests: {refer}");
    assert!(refer["mask"]["counts"].is_string(), "{refer}");
}

#[test]
fn the_page_renders_in_headless_chromium_when_chromium_is_installed() {
    let installed = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .any(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if !installed {
        eprintln!("skipped: no Chromium here; tools/check_page.sh fails without it");
        return;
    }
    let out = Command::new(repo().join("tools/check_page.sh"))
        .arg(tiny_run())
        .env("PIXEL", env!("CARGO_BIN_EXE_pixel"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
