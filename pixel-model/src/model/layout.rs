//! A preset's parameters, listed without building the model whole, and counted by part.
//!
//! A `pixelllm-paper` model holds about 3.9 billion parameters (15.6 GB in f32), more than a
//! 24 GB machine can build next to anything else. Its blocks repeat, though: SAM's are windowed
//! or global (they differ in the length of their relative position tables), EVA02's are all
//! alike, and each T5 stack's first block alone holds the relative position bias. So the model
//! is built with one block of each kind per stack, listed, and the listing's blocks repeated to
//! the preset's depth ([`pixel_core::params::repeat_blocks`]). Everything else (embeddings,
//! the prompt encoder and feature extractor, the projection, LoRA, the heads) is built as it
//! is. For `pixelllm-paper` that holds about 2 GB, mostly T5-XL's two vocabulary tables; the
//! listing equals the built model's own for every preset small enough to build (tested).
use crate::error::Result;
use crate::heads::HeadRegistry;
use crate::model::{Components, ModelConfig, PixelLlm};
use crate::presets::PixelDims;
use dfdx::prelude::*;
use pixel_core::params::{list_params, repeat_blocks, ParamInfo, Trainable};

/// Every parameter the model of preset `P` with `config` has, in visiting order, with its
/// shape, as [`list_params`] of the built model would list them.
pub fn parameter_list<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe>(
    dev: &D,
    config: &ModelConfig,
    registry: &HeadRegistry<P, D>,
) -> Result<Vec<ParamInfo>> {
    let full = Components::of::<P>();
    // SAM: the first block of each kind, in order; block i repeats its kind's.
    let global: Vec<bool> = (0..full.sam.num_hidden_layers)
        .map(|i| full.sam.global_attn_indexes.contains(&i))
        .collect();
    let mut kinds: Vec<bool> = Vec::new();
    for &g in &global {
        if !kinds.contains(&g) {
            kinds.push(g);
        }
    }
    let kind_of = |i: usize| kinds.iter().position(|&g| g == global[i]).unwrap_or(0);
    let mut few = full.clone();
    few.sam.num_hidden_layers = kinds.len();
    few.sam.global_attn_indexes = (0..kinds.len()).filter(|&k| kinds[k]).collect();
    few.eva.depth = full.eva.depth.min(1);
    few.lm.num_layers = full.lm.num_layers.min(2);
    few.lm.num_decoder_layers = Some(full.lm.decoder_layers().min(2));

    let built = {
        let mut model = PixelLlm::<P, D>::with_components(dev, config, registry, &few)?;
        list_params(&mut model)
    };
    let list = repeat_blocks(
        built,
        "image_encoder.sam.layers",
        full.sam.num_hidden_layers,
        kind_of,
    );
    let list = repeat_blocks(list, "image_encoder.eva.blocks", full.eva.depth, |_| 0);
    let t5_block = |i: usize| i.min(1);
    let list = repeat_blocks(
        list,
        "language_model.encoder.block",
        full.lm.num_layers,
        t5_block,
    );
    Ok(repeat_blocks(
        list,
        "language_model.decoder.block",
        full.lm.decoder_layers(),
        t5_block,
    ))
}

/// The parts of a PixelLLM in the order of the paper's figure, as [`part_of`] names them.
pub const PARTS: [&str; 9] = [
    "SAM image encoder",
    "EVA02",
    "prompt encoder",
    "prompt feature extractor",
    "visual projection",
    "visual position table",
    "T5",
    "LoRA",
    "heads",
];

/// The part a parameter belongs to, by its name in a PixelLLM.
pub fn part_of(name: &str) -> Option<&'static str> {
    let part = if name.starts_with("image_encoder.sam.") {
        PARTS[0]
    } else if name.starts_with("image_encoder.eva.") {
        PARTS[1]
    } else if name.starts_with("prompt_encoder.") {
        PARTS[2]
    } else if name.starts_with("prompt_feature_extractor.") {
        PARTS[3]
    } else if name.starts_with("visual_projection.") {
        PARTS[4]
    } else if name == "visual_position_embedding" {
        PARTS[5]
    } else if name.starts_with("language_model.") && name.contains(".lora_") {
        PARTS[7]
    } else if name.starts_with("language_model.") {
        PARTS[6]
    } else if name.starts_with("heads.") {
        PARTS[8]
    } else {
        return None;
    };
    Some(part)
}

/// Parameters of one part, all and trainable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartCount {
    pub part: &'static str,
    pub parameters: usize,
    pub trainable: usize,
}

/// The parameters of `list` by part ([`PARTS`] order; parts without parameters left out),
/// trainable as `trainable` says. A name outside every part is counted under `other`.
pub fn parameters_by_part(list: &[ParamInfo], trainable: &Trainable) -> Vec<PartCount> {
    let mut counts: Vec<PartCount> = PARTS
        .iter()
        .chain(&["other"])
        .map(|&part| PartCount {
            part,
            parameters: 0,
            trainable: 0,
        })
        .collect();
    for p in list {
        let part = part_of(&p.name).unwrap_or("other");
        let count = counts
            .iter_mut()
            .find(|c| c.part == part)
            .expect("every part has a row");
        count.parameters += p.numel();
        if trainable.is_trainable(&p.name) {
            count.trainable += p.numel();
        }
    }
    counts.retain(|c| c.parameters > 0);
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::{PixelLlmTest, PixelTiny};
    use crate::testing::demo_section;

    fn listed_and_built<P: PixelDims>(config: &ModelConfig) -> (Vec<ParamInfo>, Vec<ParamInfo>) {
        let dev = Cpu::seed_from_u64(0);
        let registry = HeadRegistry::<P, Cpu>::builtin();
        let listed = parameter_list(&dev, config, &registry).unwrap();
        let mut model = PixelLlm::<P, Cpu>::new(&dev, config, &registry).unwrap();
        (listed, list_params(&mut model))
    }

    /// The test preset has more blocks than the listing builds in each of SAM (windowed and
    /// global), EVA02 and both T5 stacks, with LoRA; pixel-tiny has its own layout.
    #[test]
    fn the_listing_equals_the_built_models_own() {
        let config = ModelConfig::shipped(PixelLlmTest::NAME).unwrap().unwrap();
        let (listed, built) = listed_and_built::<PixelLlmTest>(&config);
        assert_eq!(listed, built);
        let (listed, built) = listed_and_built::<PixelTiny>(&demo_section("model"));
        assert_eq!(listed, built);
    }

    #[test]
    fn every_parameter_has_a_part_and_the_parts_add_up() {
        let config: ModelConfig = demo_section("model");
        let (list, _) = listed_and_built::<PixelTiny>(&config);
        let unnamed: Vec<&str> = list
            .iter()
            .filter(|p| part_of(&p.name).is_none())
            .map(|p| p.name.as_str())
            .collect();
        assert!(unnamed.is_empty(), "{unnamed:?}");
        let trainable = config.trainable();
        let parts = parameters_by_part(&list, &trainable);
        let total: usize = list.iter().map(ParamInfo::numel).sum();
        assert_eq!(parts.iter().map(|c| c.parameters).sum::<usize>(), total);
        let sam = parts.iter().find(|c| c.part == PARTS[0]).unwrap();
        assert_eq!(sam.trainable, 0, "the demo freezes SAM");
    }
}
