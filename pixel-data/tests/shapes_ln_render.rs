//! End to end: ShapesLN samples and made-up training results rendered to PNG files that decode
//! with the expected size. Set `SHAPES_LN_PNG_DIR=/some/dir` to keep the pictures and look at them.

use std::path::PathBuf;

use pixel_data::shapes_ln::{ShapesLn, ShapesLnConfig, Split};
use pixel_render::{
    bar_chart_png, loss_curves_png, mask_overlay, palette, samples_png, save_png, SamplePanel,
    Scale,
};

/// Where pictures go: `SHAPES_LN_PNG_DIR` if set, else a temporary folder removed afterwards.
fn out_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("SHAPES_LN_PNG_DIR") {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let tmp = tempfile::tempdir().unwrap();
            (tmp.path().to_path_buf(), Some(tmp))
        }
    }
}

fn decoded(path: &std::path::Path) -> image::RgbImage {
    assert_eq!(
        image::ImageFormat::from_path(path).unwrap(),
        image::ImageFormat::Png
    );
    image::open(path).unwrap().to_rgb8()
}

#[test]
fn dataset_samples_render_as_panels_with_words_and_boxes() {
    let (dir, _keep) = out_dir();
    let g = ShapesLn::new(ShapesLnConfig::default(), 0).unwrap();
    let panels: Vec<SamplePanel> = g
        .samples(Split::Train, 0..6)
        .map(|s| s.ground_truth_panel())
        .collect();
    let path = dir.join("shapes_ln_samples.png");
    samples_png(&path, &panels).unwrap();
    let img = decoded(&path);
    assert_eq!(img.width(), 12 + 4 * (256 + 12));
    assert!(img.height() > 2 * 256);
}

#[test]
fn trace_and_masks_render() {
    let (dir, _keep) = out_dir();
    let g = ShapesLn::new(
        ShapesLnConfig {
            image_size: 128,
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let s = g.sample(Split::Validation, 5);
    let mut shown = s.image.clone();
    for (i, o) in s.objects.iter().enumerate() {
        shown = mask_overlay(&shown, &o.mask, palette(i), 0.6).unwrap();
    }
    // The mouse trace as a panel: one dot per trace point, unlabelled words.
    let trace_words = s
        .trace
        .iter()
        .step_by(3)
        .map(|p| (String::new(), Some([p.x, p.y])))
        .collect();
    let panels = [
        SamplePanel {
            image: shown,
            words: Vec::new(),
            boxes: s
                .regions
                .iter()
                .map(|r| (r.bbox, r.caption.clone(), [40, 40, 40]))
                .collect(),
            title: format!("{} masks + regions", s.image_id),
        },
        SamplePanel {
            image: s.image.clone(),
            words: trace_words,
            boxes: Vec::new(),
            title: "mouse trace".into(),
        },
    ];
    let path = dir.join("shapes_ln_trace.png");
    samples_png(&path, &panels).unwrap();
    assert_eq!(decoded(&path).width(), 12 + 2 * (256 + 12));
    save_png(&s.image, dir.join("shapes_ln_raw.png")).unwrap();
    assert_eq!(
        decoded(&dir.join("shapes_ln_raw.png")).dimensions(),
        (128, 128)
    );
}

#[test]
fn loss_curves_and_bar_chart_render() {
    let (dir, _keep) = out_dir();
    let train: Vec<(f64, f64)> = (0..=600)
        .map(|i| {
            let x = i as f64 * 5.0;
            (
                x,
                4.0 * (-x / 400.0).exp() + 0.08 + 0.05 * (x / 7.0).sin().abs(),
            )
        })
        .collect();
    let val: Vec<(f64, f64)> = (0..=12)
        .map(|i| {
            let x = i as f64 * 250.0;
            (x, 4.0 * (-x / 450.0).exp() + 0.15)
        })
        .collect();
    let series = [("train loss", &train[..]), ("validation loss", &val[..])];
    let linear = dir.join("loss_linear.png");
    loss_curves_png(&linear, &series, "ShapesLN training loss", Scale::Linear).unwrap();
    let log = dir.join("loss_log.png");
    loss_curves_png(&log, &series, "ShapesLN training loss (log)", Scale::Log).unwrap();
    assert_eq!(decoded(&linear).height(), 480);
    assert_eq!(decoded(&log).height(), 480);

    let groups = vec![
        (
            "Acc@0.5".to_string(),
            vec![
                ("PixelLLM".to_string(), 0.82, 0.03),
                ("no trace loss".to_string(), 0.64, 0.05),
            ],
        ),
        (
            "CIDEr".to_string(),
            vec![
                ("PixelLLM".to_string(), 1.21, 0.1),
                ("no trace loss".to_string(), 1.18, 0.12),
            ],
        ),
        (
            "point acc".to_string(),
            vec![
                ("PixelLLM".to_string(), 0.77, 0.04),
                ("no trace loss".to_string(), 0.12, 0.02),
            ],
        ),
    ];
    let bars = dir.join("bars.png");
    bar_chart_png(&bars, &groups, "ShapesLN ablation (3 seeds)").unwrap();
    assert_eq!(decoded(&bars).height(), 420);

    // Bad input is an error, and no file is written.
    let nan = [(0.0, f64::NAN)];
    let bad = dir.join("bad.png");
    assert!(loss_curves_png(&bad, &[("x", &nan[..])], "t", Scale::Linear).is_err());
    assert!(!bad.exists());
}
