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
pub mod conv;
pub mod dual;
pub mod error;
pub mod eva02;
pub mod layers;
pub mod preprocess;
pub mod presets;
pub mod resize;
pub mod sam;

pub use conv::{FeatureMap, Images};
pub use dual::DualImageEncoder;
pub use error::{VisionError, VisionResult};
pub use eva02::{Eva02, Eva02Config};
pub use sam::{
    SamConfig, SamImageEncoder, SamMaskDecoder, SamModel, SamPromptEncoder, TwoWayTransformer,
};
