//! pixel-llm's data, as plain samples (an image, words with trace points, objects with boxes,
//! referring expressions and masks); nothing here knows the model or its tokens.
//!
//! - [`shapes_ln`]: ShapesLN, the synthetic Localized-Narratives-style dataset.
//! - [`datasets`]: readers and writers of Localized Narratives, RefCOCO (MDETR's json and the
//!   refer toolkit's files) and Visual Genome region descriptions.
//! - [`data_source`]: the samples a config chooses (the generator, or files joined on image
//!   id), and the ShapesLN export to files.
pub mod data_source;
pub mod datasets;
pub mod error;
pub mod shapes_ln;

pub use error::{DataError, Result};
