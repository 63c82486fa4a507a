//! PixelLLM's image side on dfdx: SAM's image encoder, prompt encoder and mask decoder, the
//! EVA02 ViT, image preprocessing, and the dual (SAM + EVA02) image encoder.
pub mod conv;
pub mod error;
pub mod eva02;
pub mod layers;
pub mod resize;
pub mod sam;

pub use error::{VisionError, VisionResult};
