//! EVA02 parity against timm's `Eva.forward_features` (fixtures from
//! `tools/make_vision_fixtures.py`; regenerate with `python tools/make_vision_fixtures.py`).
use dfdx::prelude::*;
use pixel_core::checkpoint::TensorStore;
use pixel_core::testing::max_abs_diff;
use pixel_vision::eva02::{Eva02, Eva02Config};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn run(name: &str, config: Eva02Config) {
    let dev: Cpu = Default::default();
    let mut eva = Eva02::<Const<64>, Cpu>::new(&dev, &config).unwrap();
    eva.load_store(&TensorStore::read(&fixtures().join(format!("{name}.safetensors"))).unwrap())
        .unwrap();
    let io = TensorStore::read(&fixtures().join("eva02_test_io.safetensors")).unwrap();
    let x = io.require(&format!("{name}.pixel_values")).unwrap();
    let images = dev.tensor_from_vec(x.to_f32(), (x.shape[0], x.shape[1], x.shape[2], x.shape[3]));
    let (features, _) = eva.forward_features(images);
    let want = io.require(&format!("{name}.features")).unwrap();
    assert_eq!(
        features.shape().concrete().to_vec(),
        want.shape,
        "{name}: feature shape"
    );
    let want = want.to_f32();
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(&features.as_vec(), &want);
    eprintln!("{name}: max abs error {err:.3e} (max |ref| {scale:.3e})");
    assert!(err <= 1e-4 * scale, "{name}: {err} > 1e-4 x {scale}");
}

#[test]
fn eva02_large_style_matches_timm() {
    let mut c = Eva02Config::sized(56, 64, 2, 4, false, true);
    c.ref_feat_shape = 4;
    run("eva02-test", c);
}

#[test]
fn eva02_tiny_style_with_rescaled_rope_matches_timm() {
    let mut c = Eva02Config::sized(84, 64, 2, 4, true, false);
    c.ref_feat_shape = 4;
    run("eva02-test-fused", c);
}
