//! PixelLLM's image side on dfdx: SAM's image encoder, prompt encoder and mask decoder, the
//! EVA02 ViT, image preprocessing, and the dual (SAM + EVA02) image encoder.
//!
//! - [`sam`]: Segment Anything ([`sam::SamModel`], [`sam::SamImageEncoder`],
//!   [`sam::SamPromptEncoder`], [`sam::SamMaskDecoder`], and the reusable
//!   [`sam::TwoWayTransformer`] that PixelLLM's prompt feature extractor also uses).
//! - [`eva02`]: timm's EVA02 ViT ([`eva02::Eva02`]).
//! - [`dual`]: the frozen-SAM + trainable-EVA02 image encoder ([`dual::DualImageEncoder`]).
//! - [`presets`]: presets as types (`SamVitB`, `Eva02Large`, ...), implementable outside.
//! - [`preprocess`]: decode, resize longest side, normalize, pad.
//! - [`conv`], [`resize`], [`layers`]: convolutions as matmuls, interpolation matrices, layers
//!   with run-time inner dims.
//!
//! Feature maps are `[batch, height * width, channels]` tokens ([`conv::FeatureMap`]); model
//! widths are types, inner widths and all sizes run-time.
//!
//! | Paper (PixelLLM)        | Here                          | Reference                                   |
//! |-------------------------|-------------------------------|---------------------------------------------|
//! | image encoder (SAM)     | [`sam::SamImageEncoder`]      | segment-anything `ImageEncoderViT`, HF `SamVisionEncoder` |
//! | image encoder (EVA02)   | [`eva02::Eva02`]              | timm `Eva` (`eva02_*_patch14_*`, the `eva02_*_clip_*` towers) |
//! | both, concatenated      | [`dual::DualImageEncoder`]    | scenic `forward_backbones` + `concat_visual_features` |
//! | prompt encoder          | [`sam::SamPromptEncoder`]     | segment-anything `PromptEncoder`, HF `SamPromptEncoder` |
//! | prompt feature extractor's transformer | [`sam::TwoWayTransformer`] | segment-anything `TwoWayTransformer`, scenic `PromptAdaptor` |
//! | mask decoder            | [`sam::SamMaskDecoder`]       | segment-anything `MaskDecoder`, HF `SamMaskDecoder` |
//!
//! Parameters carry HF `SamModel` names (`vision_encoder.layers.0.attn.qkv.weight`) and timm
//! names for EVA02; segment-anything's names are mapped on load
//! ([`sam::official_to_hf_name`]).
pub mod conv;
pub mod dual;
pub mod error;
pub mod eva02;
pub mod host_eva02;
mod host_layers;
pub mod layers;
pub mod preprocess;
pub mod presets;
pub mod resize;
pub mod sam;

pub use conv::{FeatureMap, Images};
pub use dual::DualImageEncoder;
pub use error::{VisionError, VisionResult};
pub use eva02::{Eva02, Eva02Config, FinalNorm};
pub use host_eva02::HostEva02;
pub use sam::{
    SamConfig, SamImageEncoder, SamMaskDecoder, SamModel, SamPromptEncoder, TwoWayTransformer,
};
