//! EVA02 parity against timm's `Eva.forward_features`, the dfdx model and its host inference
//! path [`HostEva02`] (fixtures from
//! `tools/make_vision_fixtures.py`; regenerate with `python tools/make_vision_fixtures.py`,
//! or only the EVA02 ones with `--only eva`).
use dfdx::prelude::*;
use pixel_core::checkpoint::TensorStore;
use pixel_core::host_matrix::Dtype;
use pixel_core::testing::max_abs_diff;
use pixel_vision::eva02::{Eva02, Eva02Config, FinalNorm, ATTN_NORM_WEIGHT};
use pixel_vision::HostEva02;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(name: &str) -> TensorStore {
    TensorStore::read(&fixtures().join(format!("{name}.safetensors"))).unwrap()
}

/// The EVA02-L style test config (56 px, separate q/k/v, SwiGLU with its norm).
fn large_style() -> Eva02Config {
    let mut c = Eva02Config::sized(56, 64, 2, 4, false, true);
    c.ref_feat_shape = 4;
    c
}

/// The `eva02_*_clip_*` tower layout at test size: EVA02-L style plus `attn.norm`
/// (`scale_attn_inner`) and `norm` (token pooling).
fn clip_style() -> Eva02Config {
    Eva02Config {
        final_norm: FinalNorm::Features,
        scale_attn_inner: true,
        ..large_style()
    }
}

fn run(name: &str, config: Eva02Config) {
    let dev: Cpu = Default::default();
    let mut eva = Eva02::<Const<64>, Cpu>::new(&dev, &config).unwrap();
    eva.load_store(&read(name)).unwrap();
    check(name, &eva, "eva02_test_io");
}

/// `eva.forward_features` on the fixture's input equals timm's (float64) to 1e-4, absolute
/// (the references' largest values are 3.6 to 7.2).
fn check(name: &str, eva: &Eva02<Const<64>, Cpu>, io: &str) {
    let dev: Cpu = Default::default();
    let io = read(io);
    let x = io.require(&format!("{name}.pixel_values")).unwrap();
    let images = dev.tensor_from_vec(x.to_f32(), (x.shape[0], x.shape[1], x.shape[2], x.shape[3]));
    let (features, _) = eva.forward_features(images.clone());
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
    assert!(err <= 1e-4, "{name}: max abs error {err} > 1e-4");
    let (host, _) = HostEva02::new(eva, Dtype::F32).forward_features(images);
    let err = max_abs_diff(&host.as_vec(), &want);
    eprintln!("{name}: host path max abs error {err:.3e}");
    assert!(err <= 1e-4, "{name}: host path max abs error {err} > 1e-4");
}

#[test]
fn eva02_large_style_matches_timm() {
    run("eva02-test", large_style());
}

/// timm's `Eva(global_pool='')` keeps `norm` (not `fc_norm`) and applies it at the end of
/// `forward_features`; the config's `final_norm = "features"` does the same.
#[test]
fn eva02_with_features_norm_matches_timm() {
    let dev: Cpu = Default::default();
    let config = Eva02Config {
        final_norm: FinalNorm::Features,
        ..large_style()
    };
    let mut eva = Eva02::<Const<64>, Cpu>::new(&dev, &config).unwrap();
    eva.load_store(&read("eva02-test-norm")).unwrap();
    check("eva02-test-norm", &eva, "eva02_norm_test_io");
}

/// timm's CLIP towers (`scale_attn_inner=True`, `global_pool='token'`) normalise each
/// attention output before `proj` and end `forward_features` with `norm`; a config with
/// `scale_attn_inner` and `final_norm = "features"` does the same, and the tower's projection
/// `head` loads beside them.
#[test]
fn eva02_clip_tower_matches_timm() {
    let dev: Cpu = Default::default();
    let mut eva = Eva02::<Const<64>, Cpu>::new(&dev, &clip_style()).unwrap();
    eva.load_store(&read("eva02-test-clip")).unwrap();
    assert!(eva.blocks.iter().all(|b| b.attn.norm.is_some()));
    assert_eq!(eva.config.num_classes, 32);
    check("eva02-test-clip", &eva, "eva02_clip_test_io");
}

/// `Eva02::from_store` takes `scale_attn_inner` from the file (`blocks.0.attn.norm.weight`
/// present or not), whatever the config says, and the final norm with it.
#[test]
fn from_store_follows_the_files_attention_norm() {
    let dev: Cpu = Default::default();
    for (name, io, want_attn, want_final) in [
        (
            "eva02-test-clip",
            "eva02_clip_test_io",
            true,
            FinalNorm::Features,
        ),
        (
            "eva02-test-norm",
            "eva02_norm_test_io",
            false,
            FinalNorm::Features,
        ),
        ("eva02-test", "eva02_test_io", false, FinalNorm::Fc),
    ] {
        for stated in [false, true] {
            let config = Eva02Config {
                scale_attn_inner: stated,
                ..large_style()
            };
            let eva = Eva02::<Const<64>, Cpu>::from_store(&dev, &config, &read(name)).unwrap();
            assert_eq!(eva.config.scale_attn_inner, want_attn, "{name}");
            assert_eq!(eva.config.final_norm, want_final, "{name}");
            check(name, &eva, io);
        }
    }
}

/// `from_store` follows the file's layout but not its widths: a file of another width is an
/// error naming the tensor, as with `load_store`.
#[test]
fn from_store_keeps_the_configs_widths() {
    let dev: Cpu = Default::default();
    let config = Eva02Config {
        mlp_hidden: 160,
        ..large_style()
    };
    let err = Eva02::<Const<64>, Cpu>::from_store(&dev, &config, &read("eva02-test-clip"))
        .expect_err("a file of other widths loaded")
        .to_string();
    assert!(
        err.contains(
            "`blocks.0.mlp.fc1_g.weight` has shape [170, 64], the model expects [160, 64]"
        ),
        "{err}"
    );
}

/// `Eva02::from_store` takes the final norm from the file, whatever the config says.
#[test]
fn from_store_follows_the_files_final_norm() {
    let dev: Cpu = Default::default();
    for (name, io, want) in [
        ("eva02-test-norm", "eva02_norm_test_io", FinalNorm::Features),
        ("eva02-test", "eva02_test_io", FinalNorm::Fc),
    ] {
        for stated in [FinalNorm::Fc, FinalNorm::Features] {
            let config = Eva02Config {
                final_norm: stated,
                ..large_style()
            };
            let eva = Eva02::<Const<64>, Cpu>::from_store(&dev, &config, &read(name)).unwrap();
            assert_eq!(eva.config.final_norm, want, "{name}");
            check(name, &eva, io);
        }
    }
}

/// Loading a file whose final norm is not the config's fails naming the file's tensor and the
/// config's, and says what to change.
#[test]
fn a_checkpoint_with_the_other_final_norm_is_refused_naming_it() {
    let dev: Cpu = Default::default();
    for (name, stated, theirs, ours) in [
        (
            "eva02-test-norm",
            FinalNorm::Fc,
            "norm.weight",
            "fc_norm.weight",
        ),
        (
            "eva02-test",
            FinalNorm::Features,
            "fc_norm.weight",
            "norm.weight",
        ),
    ] {
        let config = Eva02Config {
            final_norm: stated,
            ..large_style()
        };
        let mut eva = Eva02::<Const<64>, Cpu>::new(&dev, &config).unwrap();
        let err = eva.load_store(&read(name)).unwrap_err().to_string();
        assert!(
            err.contains(&format!("unexpected tensor `{theirs}`")),
            "{name}: {err}"
        );
        assert!(
            err.contains(&format!("missing tensor `{ours}`")),
            "{name}: {err}"
        );
        assert!(
            err.contains(&format!("the file's final norm is `{theirs}`"))
                && err.contains("from_store"),
            "{name}: {err}"
        );
    }
}

/// Loading a file with(out) `attn.norm` into a config that says otherwise fails naming the
/// tensor and `scale_attn_inner`, and says what to change.
#[test]
fn a_checkpoint_with_the_other_attention_norm_is_refused_naming_it() {
    let dev: Cpu = Default::default();
    for (name, config, what, hint) in [
        (
            "eva02-test-clip",
            Eva02Config {
                scale_attn_inner: false,
                ..clip_style()
            },
            "unexpected",
            "set scale_attn_inner = true",
        ),
        (
            "eva02-test-norm",
            clip_style(),
            "missing",
            "set scale_attn_inner = false",
        ),
    ] {
        let mut eva = Eva02::<Const<64>, Cpu>::new(&dev, &config).unwrap();
        let err = eva.load_store(&read(name)).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{what} tensor `{ATTN_NORM_WEIGHT}`")),
            "{name}: {err}"
        );
        assert!(
            err.contains(hint) && err.contains("from_store") && !err.contains("final norm is"),
            "{name}: {err}"
        );
    }
}

/// A state dict with both final norms, or neither, cannot say which model it is: the error
/// names both tensors.
#[test]
fn a_checkpoint_with_both_or_no_final_norm_is_refused_naming_them() {
    let dev: Cpu = Default::default();
    let mut both = read("eva02-test");
    for (from, to) in [
        ("norm.weight", "fc_norm.weight"),
        ("norm.bias", "fc_norm.bias"),
    ] {
        let t = both.require(to).unwrap().clone();
        both.insert(from, t);
    }
    let mut neither = read("eva02-test");
    neither.tensors.remove("fc_norm.weight");
    neither.tensors.remove("fc_norm.bias");
    for (store, what) in [(both, "both"), (neither, "neither")] {
        let err = Eva02::<Const<64>, Cpu>::from_store(&dev, &large_style(), &store)
            .err()
            .unwrap_or_else(|| panic!("a file with {what} final norms loaded"))
            .to_string();
        assert!(
            err.contains(what) && err.contains("`fc_norm.weight`") && err.contains("`norm.weight`"),
            "{what}: {err}"
        );
        assert!(err.contains("eva02-test.safetensors"), "{what}: {err}");
    }
}

/// Configs written before `final_norm` and `scale_attn_inner` existed still read, as the
/// `fc_norm` model without `attn.norm`.
#[test]
fn a_config_without_final_norm_or_scale_attn_inner_means_the_classifier_layout() {
    let mut json = serde_json::to_value(clip_style()).unwrap();
    let fields = json.as_object_mut().unwrap();
    fields.remove("final_norm");
    fields.remove("scale_attn_inner");
    let config: Eva02Config = serde_json::from_value(json).unwrap();
    assert_eq!(config.final_norm, FinalNorm::Fc);
    assert!(!config.scale_attn_inner);
    let json = serde_json::json!({ "scale_attn_inner": true });
    let config: Eva02Config = serde_json::from_value(json).unwrap();
    assert!(config.scale_attn_inner);
    let json = serde_json::json!({ "final_norm": "features" });
    let config: Eva02Config = serde_json::from_value(json).unwrap();
    assert_eq!(config.final_norm, FinalNorm::Features);
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
fn test_preset_parameters_are_exactly_the_checkpoint_tensors_for_each_layout() {
    use pixel_core::params::list_params;
    let dev: Cpu = Default::default();
    for (name, final_norm, scale_attn_inner, num_classes) in [
        ("eva02-test", FinalNorm::Fc, false, 0),
        ("eva02-test-norm", FinalNorm::Features, false, 0),
        ("eva02-test-clip", FinalNorm::Features, true, 32),
    ] {
        let config = Eva02Config {
            final_norm,
            scale_attn_inner,
            num_classes,
            ..large_style()
        };
        let mut eva = Eva02::<Const<64>, Cpu>::new(&dev, &config).unwrap();
        let store = read(name);
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
        assert_eq!(sorted, theirs, "{name}");
    }
}
