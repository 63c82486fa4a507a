//! Heads by name: the `[[model.heads]]` config entries and the registry that builds them.
//!
//! Each entry names a registered `kind`; the keys every head has (`kind`, `name`, `weight`) are
//! read here, the rest go to the head's constructor, which parses them into its own options
//! struct with [`options`], so a misspelt or mistyped key fails naming its path
//! (`model.heads[1].bins: invalid type ...`).
use crate::error::{Result, TaskError};
use crate::heads::{OutputHead, Reads};
use crate::model::PixelDims;
use dfdx::prelude::*;
use pixel_lm::tokenizer::T5Tokenizer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
        TaskError::Config {
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
    pub fn error(&self, sub: &str, message: impl Into<String>) -> TaskError {
        TaskError::Config {
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

/// Head kinds by name.
pub struct HeadRegistry<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> {
    constructors: BTreeMap<String, HeadConstructor<P, D>>,
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> HeadRegistry<P, D> {
    /// No heads at all.
    pub fn empty() -> Self {
        HeadRegistry {
            constructors: BTreeMap::new(),
        }
    }

    /// The heads this crate ships.
    pub fn builtin() -> Self {
        let mut registry = Self::empty();
        registry.register("point", crate::heads::point::build::<P, D>);
        registry.register("box", crate::heads::boxes::build::<P, D>);
        registry.register("bins", crate::heads::text::build_bins::<P, D>);
        registry.register("string", crate::heads::text::build_string::<P, D>);
        registry.register("mask", crate::heads::mask::build::<P, D>);
        registry.register("detection", crate::heads::detection::build::<P, D>);
        registry
    }

    /// Adds (or replaces) the head kind `kind`.
    pub fn register(&mut self, kind: &str, constructor: HeadConstructor<P, D>) -> &mut Self {
        self.constructors.insert(kind.to_string(), constructor);
        self
    }

    /// Registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        self.constructors.keys().map(String::as_str).collect()
    }

    /// Builds the configured heads in order. Errors name the key path: an unknown kind, a
    /// repeated name, a bad key of a head, a head that needs what the model lacks.
    pub fn build(
        &self,
        dev: &D,
        configs: &[HeadConfig],
        image_grid: Option<usize>,
        tokenizer: Arc<T5Tokenizer>,
    ) -> Result<Vec<Box<dyn OutputHead<P, D>>>> {
        let mut heads: Vec<Box<dyn OutputHead<P, D>>> = Vec::with_capacity(configs.len());
        for (i, config) in configs.iter().enumerate() {
            let key = format!("model.heads[{i}]");
            let constructor =
                self.constructors
                    .get(&config.kind)
                    .ok_or_else(|| TaskError::Config {
                        key: format!("{key}.kind"),
                        message: format!(
                            "unknown head \"{}\"; known: {}",
                            config.kind,
                            self.kinds().join(", ")
                        ),
                    })?;
            let name = config.name().to_string();
            if let Some(j) = configs[..i].iter().position(|c| c.name() == name) {
                return Err(TaskError::Config {
                    key: format!("{key}.name"),
                    message: format!(
                        "two heads are named \"{name}\" (model.heads[{j}] too); give one a \
                         different `name`"
                    ),
                });
            }
            if !config.weight.is_finite() || config.weight < 0.0 {
                return Err(TaskError::Config {
                    key: format!("{key}.weight"),
                    message: format!("must be a finite number >= 0, got {}", config.weight),
                });
            }
            let build = HeadBuild {
                dev,
                name,
                key,
                earlier: heads
                    .iter()
                    .map(|h| (h.name().to_string(), h.reads()))
                    .collect(),
                image_grid,
                tokenizer: tokenizer.clone(),
            };
            let head = constructor(&build, &config.options)?;
            if head.name() != build.name {
                return Err(build.error(
                    "",
                    format!(
                        "the `{}` constructor named its head \"{}\", the config \"{}\"",
                        config.kind,
                        head.name(),
                        build.name
                    ),
                ));
            }
            heads.push(head);
        }
        if !heads.iter().any(|h| h.reads().locates_tokens()) {
            return Err(TaskError::Config {
                key: "model.heads".into(),
                message: "at least one head must locate tokens (point, box, bins or string): \
                          evaluation scores its locations"
                    .into(),
            });
        }
        let text_heads: Vec<&str> = heads
            .iter()
            .filter(|h| h.reads() == Reads::Text)
            .map(|h| h.name())
            .collect();
        if text_heads.len() > 1 {
            return Err(TaskError::Config {
                key: "model.heads".into(),
                message: format!(
                    "heads {} all write coordinates into the target text; keep one",
                    text_heads.join(" and ")
                ),
            });
        }
        Ok(heads)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::demo::{ExperimentConfig, DEFAULT_DEMO_CONFIG};
    use crate::model::TinyPixelLlm;
    use std::path::Path;

    /// The demo config with `heads` (TOML `[[model.heads]]` tables) in place of its heads.
    pub(crate) fn config_with(heads: &str) -> crate::Result<ExperimentConfig> {
        let start = DEFAULT_DEMO_CONFIG.find("[[model.heads]]").unwrap();
        let end = DEFAULT_DEMO_CONFIG.find("[model.lm]").unwrap();
        let text = format!(
            "{}{heads}\n{}",
            &DEFAULT_DEMO_CONFIG[..start],
            &DEFAULT_DEMO_CONFIG[end..]
        );
        Ok(pixel_core::config::parse_toml(
            &text,
            Path::new("heads.toml"),
        )?)
    }

    fn build_error(heads: &str) -> String {
        let config = config_with(heads).unwrap();
        TinyPixelLlm::build(&config.model, 0)
            .unwrap_err()
            .to_string()
    }

    const POINT: &str = "[[model.heads]]\nkind = \"point\"\nweight = 0.1\n";

    #[test]
    fn unknown_kind_names_the_key_and_the_known_kinds() {
        let err = build_error(&format!("{POINT}[[model.heads]]\nkind = \"foo\"\n"));
        assert_eq!(
            err,
            "model.heads[1].kind: unknown head \"foo\"; known: bins, box, detection, mask, point, string"
        );
    }

    #[test]
    fn a_bad_head_key_names_its_path() {
        let err = build_error(&format!(
            "{POINT}[[model.heads]]\nkind = \"bins\"\nbins = \"many\"\n"
        ));
        assert!(
            err.starts_with("model.heads[1].bins: invalid type"),
            "{err}"
        );
        let err = build_error(&format!(
            "{POINT}[[model.heads]]\nkind = \"bins\"\nbins = 500\n"
        ));
        assert!(
            err.starts_with("model.heads[1].bins: must be 2 to 100"),
            "{err}"
        );
        let err = build_error(&format!(
            "{POINT}[[model.heads]]\nkind = \"bins\"\nbns = 5\n"
        ));
        assert!(
            err.starts_with("model.heads[1].bns: unknown field `bns`, expected `bins` or"),
            "{err}"
        );
        let err = build_error("[[model.heads]]\nkind = \"point\"\ndepth = 1\n");
        assert!(
            err.starts_with("model.heads[0].depth: must be at least 2"),
            "{err}"
        );
        let err = build_error(
            "[[model.heads]]\nkind = \"box\"\nreferring_box = { l1 = -1.0, giou = 2.0 }\n",
        );
        assert!(
            err.starts_with("model.heads[0].referring_box: l1 and giou must be finite and >= 0"),
            "{err}"
        );
        let err = build_error("[[model.heads]]\nkind = \"point\"\nreferring_box = { l1 = 5.0 }\n");
        assert!(
            err.starts_with("model.heads[0].referring_box: missing field `giou`"),
            "{err}"
        );
    }

    #[test]
    fn two_heads_of_one_name_are_refused() {
        let err = build_error(&format!("{POINT}{POINT}"));
        assert!(
            err.starts_with("model.heads[1].name: two heads are named \"point\""),
            "{err}"
        );
        // A second point head under its own name is fine.
        let config = config_with(&format!("{POINT}{POINT}name = \"point2\"\n")).unwrap();
        let mut model = TinyPixelLlm::build(&config.model, 0).unwrap();
        let names = pixel_core::params::list_params(&mut model);
        assert!(names
            .iter()
            .any(|p| p.name == "heads.point2.mlp.layers.2.weight"));
    }

    #[test]
    fn incompatible_heads_name_the_key() {
        let err = build_error(&format!(
            "{POINT}[[model.heads]]\nkind = \"mask\"\nprompt = \"box\"\n"
        ));
        assert!(
            err.starts_with(
                "model.heads[1].prompt: no earlier head named \"box\" gives a box; heads before \
                 this one that do: point"
            ),
            "{err}"
        );
        let err =
            build_error("[[model.heads]]\nkind = \"bins\"\n[[model.heads]]\nkind = \"string\"\n");
        assert!(
            err.starts_with("model.heads: heads bins and string"),
            "{err}"
        );
        let err = build_error("[[model.heads]]\nkind = \"detection\"\n");
        assert!(
            err.starts_with("model.heads: at least one head must locate tokens"),
            "{err}"
        );
        // A weight out of range fails when the config is read, naming the key and its line.
        let err = config_with("[[model.heads]]\nkind = \"point\"\nweight = -1.0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`model.heads[0].weight`") && err.contains(">= 0") && err.contains("line"),
            "{err}"
        );
    }

    #[test]
    fn a_mask_head_without_image_features_is_refused() {
        let config = config_with(&format!(
            "{POINT}[[model.heads]]\nkind = \"mask\"\nprompt = \"point\"\n"
        ))
        .unwrap();
        let dev = pixel_core::DefaultDevice::seed_from_u64(0);
        let tokenizer = std::sync::Arc::new(pixel_lm::tokenizer::T5Tokenizer::bundled().unwrap());
        let registry = super::HeadRegistry::<crate::model::PixelTiny, _>::builtin();
        let err = registry
            .build(&dev, &config.model.heads, None, tokenizer.clone())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "model.heads[1].kind: the mask head needs image features, and this model has no \
             image encoder that provides them"
        );
        assert!(registry
            .build(&dev, &config.model.heads, Some(8), tokenizer)
            .is_ok());
    }
}
