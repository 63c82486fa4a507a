//! PixelLLM assembled from its parts, with output heads, tasks, data and evaluation.
pub mod datasets;
pub mod metrics;
pub mod render;
pub mod shapes_ln;
