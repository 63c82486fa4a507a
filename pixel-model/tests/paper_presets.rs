//! The paper-size presets have the components the paper composes: each component's parameter
//! count equals its reference's, computed by the reference library from the published config
//! (`tools/paper_param_counts.py` -> `fixtures/paper_param_counts.json`), and the parts freeze and
//! train as scenic's `pixel_llm_t5_ref` config says.
//!
//! The models are listed, not built (`pixel_model::model::layout`): `pixelllm-paper`'s listing
//! holds about 2 GB for a few seconds, `pixelllm-base`'s about 0.3 GB.
use dfdx::prelude::*;
use pixel_model::heads::HeadRegistry;
use pixel_model::model::{parameter_list, parameters_by_part, ModelConfig, PartCount};
use pixel_model::presets::{PixelDims, PixelLlmBase, PixelLlmPaper};

fn reference(key: &str) -> usize {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/paper_param_counts.json"
    );
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    counts[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no `{key}` in {path}")) as usize
}

fn parts<P: PixelDims>() -> Vec<PartCount> {
    let config = ModelConfig::shipped(P::NAME).unwrap().unwrap();
    let dev = Cpu::default();
    let list = parameter_list::<P, _>(&dev, &config, &HeadRegistry::builtin()).unwrap();
    parameters_by_part(&list, &config.trainable())
}

fn part<'a>(parts: &'a [PartCount], name: &str) -> &'a PartCount {
    parts
        .iter()
        .find(|p| p.part == name)
        .unwrap_or_else(|| panic!("no part `{name}` in {parts:?}"))
}

/// `(preset parts, SAM, EVA02, T5, LoRA reference keys)`.
fn check(parts: &[PartCount], keys: [&str; 4]) {
    let [sam, eva, t5, lora] = keys;
    assert_eq!(part(parts, "SAM image encoder").parameters, reference(sam));
    assert_eq!(part(parts, "EVA02").parameters, reference(eva));
    assert_eq!(part(parts, "T5").parameters, reference(t5));
    assert_eq!(part(parts, "LoRA").parameters, reference(lora));
    // Frozen as the paper: SAM, its prompt encoder and T5; everything else trains.
    for p in parts {
        let frozen = ["SAM image encoder", "prompt encoder", "T5"].contains(&p.part);
        let expected = if frozen { 0 } else { p.parameters };
        assert_eq!(p.trainable, expected, "{p:?}");
    }
    let names: Vec<&str> = parts.iter().map(|p| p.part).collect();
    assert_eq!(
        names,
        [
            "SAM image encoder",
            "EVA02",
            "prompt encoder",
            "prompt feature extractor",
            "visual projection",
            "T5",
            "LoRA",
            "heads"
        ]
    );
}

/// One test, so the two listings are never held at once.
#[test]
fn paper_and_base_components_have_the_reference_parameter_counts() {
    check(
        &parts::<PixelLlmPaper>(),
        [
            "sam_vit_huge_vision_encoder",
            "eva02_large_patch14_224",
            "flan_t5_xl",
            "flan_t5_xl_lora_qv_r32",
        ],
    );
    check(
        &parts::<PixelLlmBase>(),
        [
            "sam_vit_base_vision_encoder",
            "eva02_base_patch14_224",
            "flan_t5_base",
            "flan_t5_base_lora_qv_r32",
        ],
    );
}

#[test]
fn the_flan_t5_xl_reference_is_the_published_count() {
    assert_eq!(reference("flan_t5_xl"), 2_849_757_184);
}
