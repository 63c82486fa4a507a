//! Segment Anything (Kirillov et al. 2023): image encoder, prompt encoder, mask decoder.
pub mod config;
pub mod host_encoder;
pub mod image_encoder;
pub mod mask_decoder;
pub mod model;
pub mod prompt_encoder;
pub mod two_way;

pub use config::{SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig};
pub use host_encoder::HostSamImageEncoder;
pub use image_encoder::SamImageEncoder;
pub use mask_decoder::{MaskPrediction, SamMaskDecoder};
pub use model::{load_encoders, official_to_hf_name, SamModel, SamPrompts};
pub use prompt_encoder::SamPromptEncoder;
pub use two_way::{DownsampledAttention, TwoWayAttentionBlock, TwoWayTransformer};
