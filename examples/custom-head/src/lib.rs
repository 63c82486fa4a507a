//! A head the library does not have, registered from outside: [`CircleHead`] reads a circle
//! (centre and diameter) off every decoder feature, keeps them in its predictions
//! ([`Circles`]) and scores them with metrics of its own. [`registry`] is the built-in heads
//! plus this one, under `kind = "circle"`.
mod circle;

pub use circle::{Circle, CircleHead, CircleOptions, Circles};

use pixel_model::heads::HeadRegistry;
use pixel_model::model::TinyHeadRegistry;

/// The built-in head kinds and `circle`.
pub fn registry() -> TinyHeadRegistry {
    let mut registry = HeadRegistry::builtin();
    registry.register("circle", CircleHead::build);
    registry
}
