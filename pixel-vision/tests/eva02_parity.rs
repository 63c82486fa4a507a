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

/// Parameter counts of the big presets equal the references' (numbers from
/// `tools/make_vision_fixtures.py`, `param_counts.json`). Building ViT-H takes about 2.5 GB
/// and a few seconds in a release build.
#[test]
fn big_preset_parameter_counts_equal_the_references() {
    use pixel_core::params::count_params;
    use pixel_vision::presets::*;
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("param_counts.json")).unwrap(),
    )
    .unwrap();
    let dev: Cpu = Default::default();
    let n = count_params(&mut SamVitH::build(&dev).unwrap());
    assert_eq!(n as u64, counts["sam-vit-h"].as_u64().unwrap());
    let n = count_params(&mut Eva02Large::build(&dev).unwrap());
    assert_eq!(n as u64, counts["eva02-large"].as_u64().unwrap());
}

#[test]
fn test_preset_parameters_are_exactly_the_checkpoint_tensors() {
    use pixel_core::params::list_params;
    let dev: Cpu = Default::default();
    let mut c = Eva02Config::sized(56, 64, 2, 4, false, true);
    c.ref_feat_shape = 4;
    let mut eva = Eva02::<Const<64>, Cpu>::new(&dev, &c).unwrap();
    let store = TensorStore::read(&fixtures().join("eva02-test.safetensors")).unwrap();
    let ours: Vec<(String, Vec<usize>)> = list_params(&mut eva)
        .into_iter()
        .map(|p| (p.name, p.shape))
        .collect();
    let mut theirs: Vec<(String, Vec<usize>)> = store
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    let mut sorted = ours.clone();
    sorted.sort();
    theirs.sort();
    assert_eq!(sorted, theirs);
}
