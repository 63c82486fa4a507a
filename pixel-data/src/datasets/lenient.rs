//! Numbers as the publishers write them: some MDETR splits write `"height": "500"`, others
//! `500` (the flickr files: `{"height": "500", "width": "371", "original_img_id": 4886839805}`;
//! scenic's pixel_llm conversion reads both with `int(...)`). Use with
//! `#[serde(deserialize_with = "...")]`.
use serde::{Deserialize, Deserializer};
use std::str::FromStr;

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText<T> {
    Number(T),
    Text(String),
}

fn parse<T: FromStr, E: serde::de::Error>(value: NumberOrText<T>) -> Result<T, E> {
    match value {
        NumberOrText::Number(n) => Ok(n),
        NumberOrText::Text(text) => text.trim().parse().map_err(|_| {
            E::custom(format!(
                "expected a whole number (or one written as a string), got \"{text}\""
            ))
        }),
    }
}

/// A whole number written as a number or as a string of digits.
pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + FromStr,
{
    parse(NumberOrText::deserialize(d)?)
}

/// [`number`], optional (absent or null: `None`).
pub fn optional_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + FromStr,
{
    Option::<NumberOrText<T>>::deserialize(d)?
        .map(parse)
        .transpose()
}
