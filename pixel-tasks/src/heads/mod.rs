//! Output heads: what PixelLLM predicts from each decoder feature besides the next word.
pub mod point;

pub use point::{box_from_token_points, PointHead};
