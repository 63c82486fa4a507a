//! Typed TOML configs: unknown keys and wrong types fail naming the file and the key path.
use crate::error::{CoreError, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Reads and parses the TOML file at `path` into `T`.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::text::read_text(path).map_err(|e| CoreError::io(path, e))?;
    parse_toml(&text, path)
}

/// Parses TOML `text`; `origin` names the source in errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        let message = err.inner().message().to_string();
        let line = err
            .inner()
            .span()
            .map(|span| format!(" (line {})", line_of(text, span.start)))
            .unwrap_or_default();
        CoreError::Config {
            path: origin.to_path_buf(),
            key: if key == "." { "<root>".into() } else { key },
            message: format!("{message}{line}"),
        }
    })
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

/// Range-checked numbers for `#[serde(deserialize_with = "...")]` (in `pixel-base`, so
/// tensor-free crates check their configs the same way).
pub use pixel_base::range;

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        rank: usize,
        scale: f32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        lora: Inner,
    }

    #[test]
    fn unknown_key_names_the_key_path() {
        let text = "name = \"x\"\n[lora]\nrank = 4\nscale = 2.0\nalpha = 1\n";
        let err = parse_toml::<Outer>(text, Path::new("exp.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exp.toml"), "{msg}");
        assert!(msg.contains("lora"), "{msg}");
        assert!(msg.contains("alpha"), "{msg}");
    }

    #[test]
    fn wrong_type_names_the_key_path() {
        let text = "name = \"x\"\n[lora]\nrank = \"four\"\nscale = 2.0\n";
        let msg = parse_toml::<Outer>(text, Path::new("exp.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("lora.rank"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Ranged {
        #[serde(deserialize_with = "range::positive")]
        lr: f32,
        #[serde(deserialize_with = "range::decay_rate")]
        beta: f32,
        #[serde(default, deserialize_with = "range::optional_positive")]
        clip: Option<f32>,
        #[serde(deserialize_with = "range::count")]
        batch: usize,
    }

    #[test]
    fn an_out_of_range_number_names_the_file_key_line_and_range() {
        let ok = "lr = 0.1\nbeta = 0.9\nbatch = 4\n";
        assert!(parse_toml::<Ranged>(ok, Path::new("a.toml"))
            .unwrap()
            .clip
            .is_none());
        for (text, key, line, range) in [
            (
                "lr = -0.1\nbeta = 0.9\nbatch = 4\n",
                "lr",
                1,
                "a finite number > 0, got -0.1",
            ),
            (
                "lr = nan\nbeta = 0.9\nbatch = 4\n",
                "lr",
                1,
                "a finite number > 0, got NaN",
            ),
            (
                "lr = 0.1\nbeta = 1.0\nbatch = 4\n",
                "beta",
                2,
                "in [0, 1), got 1",
            ),
            (
                "lr = 0.1\nbeta = 0.9\nbatch = 0\n",
                "batch",
                3,
                "at least 1, got 0",
            ),
            (
                "lr = 0.1\nbeta = 0.9\nbatch = 4\nclip = 0.0\n",
                "clip",
                4,
                "> 0, got 0",
            ),
        ] {
            let msg = parse_toml::<Ranged>(text, Path::new("a.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("a.toml")
                    && msg.contains(&format!("`{key}`"))
                    && msg.contains(&format!("line {line}"))
                    && msg.contains(range),
                "{text:?}: {msg}"
            );
        }
    }

    #[test]
    fn config_round_trips_through_toml() {
        let value = Outer {
            name: "tiny".into(),
            lora: Inner {
                rank: 8,
                scale: 2.0,
            },
        };
        let text = toml::to_string(&value).unwrap();
        let back: Outer = parse_toml(&text, Path::new("mem")).unwrap();
        assert_eq!(value, back);
    }
}
