//! Heads by name: the registry that builds the `[[model.heads]]` entries (`config.rs`).
use crate::error::{ModelError, Result};
use crate::heads::config::{HeadBuild, HeadConfig, HeadConstructor};
use crate::heads::{OutputHead, Reads};
use crate::presets::PixelDims;
use dfdx::prelude::*;
use pixel_lm::tokenizer::T5Tokenizer;
use std::collections::BTreeMap;
use std::sync::Arc;

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
                    .ok_or_else(|| ModelError::Config {
                        key: format!("{key}.kind"),
                        message: format!(
                            "unknown head \"{}\"; known: {}",
                            config.kind,
                            self.kinds().join(", ")
                        ),
                    })?;
            let name = config.name().to_string();
            if let Some(j) = configs[..i].iter().position(|c| c.name() == name) {
                return Err(ModelError::Config {
                    key: format!("{key}.name"),
                    message: format!(
                        "two heads are named \"{name}\" (model.heads[{j}] too); give one a \
                         different `name`"
                    ),
                });
            }
            if !config.weight.is_finite() || config.weight < 0.0 {
                return Err(ModelError::Config {
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
            return Err(ModelError::Config {
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
            return Err(ModelError::Config {
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
mod tests {
    use super::*;
    use crate::presets::PixelTiny;
    use crate::testing::{demo_section_with_heads, demo_with_heads};
    use pixel_core::DefaultDevice;

    /// The `[model]` section's heads (the rest of it is the model's).
    #[derive(Debug, serde::Deserialize)]
    struct Heads {
        heads: Vec<HeadConfig>,
    }

    /// The demo config's `[model]` with `heads` (TOML `[[model.heads]]` tables) in place of its
    /// heads.
    fn configs(heads: &str) -> Vec<HeadConfig> {
        demo_section_with_heads::<Heads>("model", heads).heads
    }

    /// The built-in heads built from `heads` as the tiny model builds them (its 8 x 8
    /// image-feature grid).
    fn build(heads: &str) -> Result<Vec<Box<dyn OutputHead<PixelTiny, DefaultDevice>>>> {
        let dev = DefaultDevice::seed_from_u64(0);
        let tokenizer = Arc::new(T5Tokenizer::bundled().unwrap());
        HeadRegistry::builtin().build(&dev, &configs(heads), Some(8), tokenizer)
    }

    fn build_error(heads: &str) -> String {
        build(heads).unwrap_err().to_string()
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
        let mut heads = build(&format!("{POINT}{POINT}name = \"point2\"\n")).unwrap();
        assert_eq!(heads[1].name(), "point2");
        let names = pixel_core::params::list_params(&mut *heads[1]);
        assert!(names.iter().any(|p| p.name == "mlp.layers.2.weight"));
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
        #[derive(Debug, serde::Deserialize)]
        struct Demo {
            #[allow(dead_code)] // parsed for its errors
            model: Heads,
        }
        let err = pixel_core::config::parse_toml::<Demo>(
            &demo_with_heads("[[model.heads]]\nkind = \"point\"\nweight = -1.0\n"),
            std::path::Path::new("heads.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`model.heads[0].weight`") && err.contains(">= 0") && err.contains("line"),
            "{err}"
        );
    }

    #[test]
    fn a_mask_head_without_image_features_is_refused() {
        let heads = configs(&format!(
            "{POINT}[[model.heads]]\nkind = \"mask\"\nprompt = \"point\"\n"
        ));
        let dev = DefaultDevice::seed_from_u64(0);
        let tokenizer = Arc::new(T5Tokenizer::bundled().unwrap());
        let registry = HeadRegistry::<PixelTiny, _>::builtin();
        let err = registry
            .build(&dev, &heads, None, tokenizer.clone())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "model.heads[1].kind: the mask head needs image features, and this model has no \
             image encoder that provides them"
        );
        assert!(registry.build(&dev, &heads, Some(8), tokenizer).is_ok());
    }
}
