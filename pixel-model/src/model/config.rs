//! Run-time settings of a PixelLLM: which preset, how many output tokens, which heads, which
//! parts train.
use crate::heads::HeadConfig;
use pixel_core::host_matrix::Dtype;
use pixel_core::params::Trainable;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How the language model adapts (the paper's LM ablation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LmMode {
    /// Every T5 weight trains.
    Full,
    /// T5 is frozen; LoRA adapters on q and v of every attention train (the paper's set-up).
    Lora,
    /// T5 is frozen and has no adapters.
    Frozen,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    pub mode: LmMode,
    /// Used with `mode = "lora"` (32 in the paper).
    pub lora_rank: usize,
    /// Used with `mode = "lora"` (2.0 in the paper).
    pub lora_scale: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The compile-time dims (`crate::presets::PRESETS`); the runners build `pixel-tiny` only.
    pub preset: String,
    /// Learnable output tokens of the prompt feature extractor (32 officially).
    pub output_tokens: usize,
    /// Visual tokens for the LM: the output tokens (`sparse`) or the image tokens (`dense`).
    pub prompt_fuse: crate::model::PromptFuse,
    /// Two-way transformer blocks of the prompt feature extractor (2 officially).
    pub prompt_feature_extractor_depth: usize,
    /// Label smoothing of the text loss (0.1 officially).
    pub label_smoothing: f32,
    /// Freeze the SAM backbone (as the paper does); EVA02 always trains.
    pub freeze_sam: bool,
    /// Freeze SAM's prompt encoder (as the paper does); its random Fourier matrix is fixed
    /// either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub freeze_prompt_encoder: bool,
    pub lm: LmConfig,
    /// T5's relative position bias on pairs with a visual token. T5 and the paper: true (the
    /// raster order of the visual tokens counts as a sequence); false keeps the bias among the
    /// text tokens only.
    #[serde(default = "default_visual_relative_bias")]
    pub visual_relative_bias: bool,
    /// A learned table `[visual tokens, d_model]`, initialised N(0, std²), added to the visual
    /// tokens before T5, so each says where it is in the image; 0 (the default, the paper)
    /// adds none.
    #[serde(default)]
    pub visual_position_std: f32,
    /// The output heads besides the vocabulary head (`[[model.heads]]`), each with its loss
    /// weight; the paper's is one `point` head with weight 0.1 (its L1 is in pixels).
    pub heads: Vec<HeadConfig>,
    /// Keep the frozen linear weights (T5's outside its LoRA adapters, SAM's with `freeze_sam`)
    /// on the host in this type: `"bf16"` halves their memory, and their backward pass
    /// allocates no weight gradients whatever the type. Absent (the default), they are dfdx
    /// tensors like the trained ones. CPU only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_dtype: Option<Dtype>,
    /// The components' own checkpoints (`[model.checkpoints]`), loaded by
    /// `PixelLlm::from_checkpoints`; none by default.
    #[serde(default, skip_serializing_if = "ComponentCheckpoints::is_empty")]
    pub checkpoints: ComponentCheckpoints,
}

/// Files of the pretrained components, each in its reference's own format; paths are relative
/// to the working directory. A component without one starts from scratch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentCheckpoints {
    /// SAM: a HF `SamModel` folder (`config.json` + `model.safetensors` or a sharded index), or
    /// a segment-anything checkpoint converted to safetensors. Its image encoder and prompt
    /// encoder are loaded; its mask decoder is not used.
    pub sam: Option<PathBuf>,
    /// EVA02: a timm `Eva` state dict (safetensors).
    pub eva02: Option<PathBuf>,
    /// The language model: a HF T5 folder (`config.json` + one or sharded safetensors files,
    /// f32, f16 or bf16).
    pub t5: Option<PathBuf>,
}

impl ComponentCheckpoints {
    pub fn is_empty(&self) -> bool {
        self.sam.is_none() && self.eva02.is_none() && self.t5.is_none()
    }
}

fn default_visual_relative_bias() -> bool {
    true
}

/// A TOML file that holds a `[model]` section and possibly others (an experiment config, or a
/// `configs/models/` file).
#[derive(Debug, Deserialize)]
struct ModelSection {
    model: ModelConfig,
}

impl ModelConfig {
    /// The `[model]` section of the TOML `text` (other sections are ignored), checked;
    /// `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, crate::error::ModelError> {
        let section: ModelSection = pixel_core::config::parse_toml(text, origin)?;
        section.model.validate()?;
        Ok(section.model)
    }

    /// The `[model]` section `preset` ships with (`configs/models/<preset>.toml`); `None` for a
    /// preset without one (`pixel-tiny`'s configs are whole experiments, `configs/*.toml`).
    pub fn shipped(preset: &str) -> Option<Result<Self, crate::error::ModelError>> {
        let (_, text) = crate::presets::MODEL_CONFIGS
            .iter()
            .find(|(name, _)| *name == preset)?;
        let origin = PathBuf::from(format!("configs/models/{preset}.toml"));
        Some(Self::from_toml(text, &origin))
    }

    /// Checks values no type can rule out, naming the key.
    pub fn validate(&self) -> Result<(), crate::error::ModelError> {
        let bad = |key: &str, message: String| {
            Err(crate::error::ModelError::Config {
                key: format!("model.{key}"),
                message,
            })
        };
        let presets = crate::presets::PRESETS;
        if !presets.contains(&self.preset.as_str()) {
            return bad(
                "preset",
                format!(
                    "unknown preset `{}`; the presets are {}",
                    self.preset,
                    presets.join(", ")
                ),
            );
        }
        if self.output_tokens == 0 {
            return bad("output_tokens", "must be at least 1".into());
        }
        if self.prompt_feature_extractor_depth == 0 {
            return bad(
                "prompt_feature_extractor_depth",
                "must be at least 1".into(),
            );
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(
                "label_smoothing",
                format!("must be in [0, 1), got {}", self.label_smoothing),
            );
        }
        if !(self.visual_position_std.is_finite() && self.visual_position_std >= 0.0) {
            return bad(
                "visual_position_std",
                format!("must be finite and >= 0, got {}", self.visual_position_std),
            );
        }
        if self.heads.is_empty() {
            return bad(
                "heads",
                "configure at least one output head ([[model.heads]])".into(),
            );
        }
        if self.lm.mode == LmMode::Lora && self.lm.lora_rank == 0 {
            return bad("lm.lora_rank", "must be >= 1 with mode = \"lora\"".into());
        }
        if self.lm.mode == LmMode::Lora && !self.lm.lora_scale.is_finite() {
            return bad(
                "lm.lora_scale",
                format!(
                    "must be finite with mode = \"lora\", got {}",
                    self.lm.lora_scale
                ),
            );
        }
        Ok(())
    }

    /// Which parameters train: everything but the frozen SAM branch, the fixed Fourier
    /// matrices, and the LM weights the LM mode freezes.
    pub fn trainable(&self) -> Trainable {
        // SAM's random Fourier matrix is a fixed buffer in segment-anything; PixelLlm names it
        // `prompt_encoder.shared_embedding.positional_embedding` (HF's name).
        let mut t = Trainable::all()
            .freeze("*positional_encoding_gaussian_matrix")
            .freeze("*shared_embedding.positional_embedding");
        if self.freeze_sam {
            t = t.freeze("image_encoder.sam.*");
        }
        if self.freeze_prompt_encoder {
            t = t.freeze("prompt_encoder.*");
        }
        match self.lm.mode {
            LmMode::Full => t,
            LmMode::Frozen => t.freeze("language_model.*"),
            LmMode::Lora => t.freeze("language_model.*").train("language_model.*lora_*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `configs/models/` is a shipped `[model]` section of the preset it is named
    /// after, and parses.
    #[test]
    fn every_model_config_is_shipped_and_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/models");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut shipped: Vec<&str> = crate::presets::MODEL_CONFIGS
            .iter()
            .map(|(n, _)| *n)
            .collect();
        shipped.sort();
        assert_eq!(names, shipped);
        for name in shipped {
            let config = ModelConfig::shipped(name).unwrap().unwrap();
            assert_eq!(config.preset, name);
        }
    }
}
