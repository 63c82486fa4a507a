//! Range-checked numbers for `#[serde(deserialize_with = "...")]`: a value out of range fails
//! while parsing, so the error names the file, the key path and the line like a type error.
use serde::de::{Deserializer, Error};
use serde::Deserialize;

fn check<'de, D: Deserializer<'de>, T: Deserialize<'de> + Copy + std::fmt::Display>(
    d: D,
    ok: impl Fn(T) -> bool,
    range: &str,
) -> Result<T, D::Error> {
    let v = T::deserialize(d)?;
    if ok(v) {
        Ok(v)
    } else {
        Err(D::Error::custom(format!("must be {range}, got {v}")))
    }
}

/// A finite number > 0.
pub fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    check(d, |v: f32| v.is_finite() && v > 0.0, "a finite number > 0")
}

/// A finite number >= 0.
pub fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    check(
        d,
        |v: f32| v.is_finite() && v >= 0.0,
        "a finite number >= 0",
    )
}

/// A number in [0, 1].
pub fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    check(d, |v: f32| (0.0..=1.0).contains(&v), "in [0, 1]")
}

/// A number in [0, 1) (an exponential decay rate).
pub fn decay_rate<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    check(d, |v: f32| (0.0..1.0).contains(&v), "in [0, 1)")
}

/// A whole number >= 1.
pub fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    check(d, |v: u64| v >= 1, "at least 1")
}

/// A count >= 1.
pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    check(d, |v: usize| v >= 1, "at least 1")
}

/// An optional finite number > 0 (absent: off).
pub fn optional_positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    positive(d).map(Some)
}
