//! SAM's configuration, field for field as HF `SamConfig` writes `config.json`.
//!
//! HF's files carry many generic `PretrainedConfig` fields (`return_dict`, `id2label`, ...), so
//! unknown fields are ignored here rather than denied; every field the model reads has the
//! HF default.
use crate::error::{VisionError, VisionResult};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamVisionConfig {
    pub hidden_size: usize,
    pub output_channels: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub qkv_bias: bool,
    pub mlp_ratio: f64,
    /// `int(hidden_size * mlp_ratio)` when absent.
    pub mlp_dim: Option<usize>,
    pub use_abs_pos: bool,
    pub use_rel_pos: bool,
    pub window_size: usize,
    pub global_attn_indexes: Vec<usize>,
    /// Half the width of the shared random Fourier position encoding.
    pub num_pos_feats: usize,
}

impl Default for SamVisionConfig {
    fn default() -> Self {
        SamVisionConfig {
            hidden_size: 768,
            output_channels: 256,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 1024,
            patch_size: 16,
            layer_norm_eps: 1e-6,
            qkv_bias: true,
            mlp_ratio: 4.0,
            mlp_dim: None,
            use_abs_pos: true,
            use_rel_pos: true,
            window_size: 14,
            global_attn_indexes: vec![2, 5, 8, 11],
            num_pos_feats: 128,
        }
    }
}

impl SamVisionConfig {
    pub fn mlp_dim(&self) -> usize {
        self.mlp_dim
            .unwrap_or((self.hidden_size as f64 * self.mlp_ratio) as usize)
    }

    pub fn check_dims(&self, hidden: usize, out: usize) -> VisionResult<()> {
        check_width("vision_config.hidden_size", self.hidden_size, hidden)?;
        check_width("vision_config.output_channels", self.output_channels, out)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(VisionError::Config(format!(
                "vision_config.hidden_size {} does not split into {} heads",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(VisionError::Config(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamPromptEncoderConfig {
    pub hidden_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub mask_input_channels: usize,
    pub num_point_embeddings: usize,
    pub layer_norm_eps: f64,
}

impl Default for SamPromptEncoderConfig {
    fn default() -> Self {
        SamPromptEncoderConfig {
            hidden_size: 256,
            image_size: 1024,
            patch_size: 16,
            mask_input_channels: 16,
            num_point_embeddings: 4,
            layer_norm_eps: 1e-6,
        }
    }
}

impl SamPromptEncoderConfig {
    pub fn image_embedding_size(&self) -> usize {
        self.image_size / self.patch_size
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamMaskDecoderConfig {
    pub hidden_size: usize,
    pub mlp_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub attention_downsample_rate: usize,
    pub num_multimask_outputs: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
    /// Epsilon of the two-way blocks' LayerNorms (HF 1e-6; segment-anything uses 1e-5).
    pub layer_norm_eps: f64,
}

impl Default for SamMaskDecoderConfig {
    fn default() -> Self {
        SamMaskDecoderConfig {
            hidden_size: 256,
            mlp_dim: 2048,
            num_hidden_layers: 2,
            num_attention_heads: 8,
            attention_downsample_rate: 2,
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
            layer_norm_eps: 1e-6,
        }
    }
}

/// HF `SamConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SamConfig {
    pub vision_config: SamVisionConfig,
    pub prompt_encoder_config: SamPromptEncoderConfig,
    pub mask_decoder_config: SamMaskDecoderConfig,
}

impl SamConfig {
    /// Reads a HF `config.json`.
    pub fn from_file(path: &Path) -> VisionResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| VisionError::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| VisionError::Config(format!("`{}`: {e}", path.display())))
    }

    /// A preset by the image-encoder widths and the layer layout of segment-anything.
    pub fn sam_vit(hidden: usize, depth: usize, heads: usize, global: [usize; 4]) -> Self {
        SamConfig {
            vision_config: SamVisionConfig {
                hidden_size: hidden,
                num_hidden_layers: depth,
                num_attention_heads: heads,
                global_attn_indexes: global.to_vec(),
                mlp_dim: Some(hidden * 4),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The test preset `sam-vit-test`: 128 px, patch 16, width 64, 2 layers, 4 heads, MLP 256,
    /// 32 output channels, window 4, global `[1]`, 16 position features; decoder width 32, 2
    /// layers, 2 heads, MLP 64, IoU head 32, mask-input channels 4.
    pub fn test() -> Self {
        SamConfig {
            vision_config: SamVisionConfig {
                hidden_size: 64,
                output_channels: 32,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                image_size: 128,
                patch_size: 16,
                mlp_dim: Some(256),
                window_size: 4,
                global_attn_indexes: vec![1],
                num_pos_feats: 16,
                ..Default::default()
            },
            prompt_encoder_config: SamPromptEncoderConfig {
                hidden_size: 32,
                image_size: 128,
                patch_size: 16,
                mask_input_channels: 4,
                ..Default::default()
            },
            mask_decoder_config: SamMaskDecoderConfig {
                hidden_size: 32,
                mlp_dim: 64,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                iou_head_hidden_dim: 32,
                ..Default::default()
            },
        }
    }

    pub fn check(&self) -> VisionResult<()> {
        let p = &self.prompt_encoder_config;
        let m = &self.mask_decoder_config;
        let v = &self.vision_config;
        if p.hidden_size != v.output_channels || m.hidden_size != v.output_channels {
            return Err(VisionError::Config(format!(
                "vision_config.output_channels ({}), prompt_encoder_config.hidden_size ({}) and mask_decoder_config.hidden_size ({}) must be equal",
                v.output_channels, p.hidden_size, m.hidden_size
            )));
        }
        if 2 * v.num_pos_feats != p.hidden_size {
            return Err(VisionError::Config(format!(
                "vision_config.num_pos_feats ({}) must be half of prompt_encoder_config.hidden_size ({})",
                v.num_pos_feats, p.hidden_size
            )));
        }
        Ok(())
    }
}

/// Checks a config's widths against the type-level ones.
fn check_width(what: &str, config: usize, typed: usize) -> VisionResult<()> {
    if config == typed {
        Ok(())
    } else {
        Err(VisionError::Config(format!(
            "{what} is {config} in the config but the model type has {typed}; pick the preset whose widths match"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_json_parses_with_its_generic_fields() {
        let json = r#"{"architectures": ["SamModel"], "model_type": "sam",
            "vision_config": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
                "global_attn_indexes": [7, 15, 23, 31], "mlp_dim": 5120, "return_dict": true},
            "prompt_encoder_config": {"hidden_size": 256},
            "mask_decoder_config": {"hidden_size": 256}}"#;
        let c: SamConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.vision_config.hidden_size, 1280);
        assert_eq!(c.vision_config.window_size, 14);
        c.check().unwrap();
        SamConfig::test().check().unwrap();
    }
}
