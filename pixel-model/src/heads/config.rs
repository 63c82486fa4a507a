//! A head's `[[model.heads]]` entry and what its constructor gets: the contract between the
//! registry (`registry.rs`) and each head, so a head needs nothing of the registry itself.
//!
//! The keys every head has (`kind`, `name`, `weight`) are read here, the rest go to the head's
//! constructor, which parses them into its own options struct with [`options`], so a misspelt or
//! mistyped key fails naming its path (`model.heads[1].bins: invalid type ...`).
use crate::error::{ModelError, Result};
use crate::heads::{OutputHead, Reads};
use pixel_lm::tokenizer::T5Tokenizer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One `[[model.heads]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// The registered head type (`point`, `box`, `bins`, `string`, `mask`, `detection`, or one
    /// a program registered).
    pub kind: String,
    /// Names the head's tensors (`heads.<name>.*`), loss and predictions; defaults to `kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Weight of the head's loss in the total (0.1 for the paper's point head); finite, >= 0.
    #[serde(
        default = "default_weight",
        deserialize_with = "pixel_core::config::range::non_negative"
    )]
    pub weight: f32,
    /// The head's own keys, checked by its constructor.
    #[serde(flatten)]
    pub options: toml::Table,
}

fn default_weight() -> f32 {
    1.0
}

impl HeadConfig {
    /// The head's name: `name`, else `kind`.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.kind)
    }
}

/// Parses a head's own keys into `T` (use `#[serde(deny_unknown_fields)]` on it); errors name
/// the key path under `key`, e.g. `model.heads[1].bins`.
pub fn options<T: DeserializeOwned>(table: &toml::Table, key: &str) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|err| {
        let path = err.path().to_string();
        let key = if path == "." {
            key.to_string()
        } else {
            format!("{key}.{path}")
        };
        ModelError::Config {
            key,
            message: err.inner().to_string(),
        }
    })
}

/// What a head's constructor gets besides its keys.
pub struct HeadBuild<'a, D> {
    pub dev: &'a D,
    /// The head's name (`name`, else `kind`).
    pub name: String,
    /// Where its table is, e.g. `model.heads[1]`: the prefix of every error it reports.
    pub key: String,
    /// `(name, reads)` of the heads configured before it (a mask head prompts with one).
    pub earlier: Vec<(String, Reads)>,
    /// Side of the image-feature grid the model hands heads; `None` when it has no image
    /// encoder that provides features.
    pub image_grid: Option<usize>,
    /// T5's tokenizer (text heads write coordinates with it).
    pub tokenizer: Arc<T5Tokenizer>,
}

impl<D> HeadBuild<'_, D> {
    /// An error about key `sub` of this head (`model.heads[i].<sub>`; the table when empty).
    pub fn error(&self, sub: &str, message: impl Into<String>) -> ModelError {
        ModelError::Config {
            key: if sub.is_empty() {
                self.key.clone()
            } else {
                format!("{}.{sub}", self.key)
            },
            message: message.into(),
        }
    }

    /// Errors naming `<key>.kind` when the model hands heads no image features.
    pub fn require_image(&self, what: &str) -> Result<usize> {
        self.image_grid.ok_or_else(|| {
            self.error(
                "kind",
                format!(
                    "{what} needs image features, and this model has no image encoder that \
                     provides them"
                ),
            )
        })
    }
}

/// A head's own keys, as TOML (a head parses them with [`options`]).
pub type HeadTable = toml::Table;

/// Builds a head from its keys (everything but `kind`, `name` and `weight`).
pub type HeadConstructor<P, D> =
    fn(&HeadBuild<'_, D>, &HeadTable) -> Result<Box<dyn OutputHead<P, D>>>;
