//! Model presets: the compile-time channel dims of each published T5 checkpoint, and dispatch
//! from a `config.json` to the preset whose dims it has.
//!
//! A preset is a unit struct implementing [`T5Dims`]; crates outside pixel-lm may define their
//! own (pixel-run' demo does). Only the four channel dims are types; layer counts, heads,
//! buckets, eps and the feed-forward variant come from [`T5Config`] at run time.
use crate::config::T5Config;
use crate::dims::describe;
pub use crate::dims::{check_dims, dim_differences, T5Dims};
use crate::error::{LmError, Result};
use crate::t5::T5;
use dfdx::prelude::*;
use std::path::Path;

macro_rules! presets {
    ($( $(#[$doc:meta])* $ty:ident, $variant:ident, $name:literal, $vocab:literal, $model:literal, $inner:literal, $ff:literal; )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
            pub struct $ty;
            impl T5Dims for $ty {
                const NAME: &'static str = $name;
                type Vocab = Const<$vocab>;
                type Model = Const<$model>;
                type Inner = Const<$inner>;
                type Ff = Const<$ff>;
            }
        )*

        /// Every preset's name, in the order of [`AnyT5`].
        pub const PRESET_NAMES: &[&str] = &[$($name),*];

        /// A T5 of any preset: the models monomorphized by pixel-lm, chosen by `config.json`.
        #[derive(Debug, Clone)]
        pub enum AnyT5<D: Device<f32>> {
            $( $variant(T5<$ty, D>), )*
        }

        impl<D: Device<f32>> AnyT5<D> {
            /// A randomly initialised model of the preset whose dims `config` has.
            pub fn new(dev: &D, config: &T5Config) -> std::result::Result<Self, String> {
                $(
                    if dim_differences::<$ty>(config).is_empty() {
                        return T5::<$ty, D>::new(dev, config).map(AnyT5::$variant).map_err(|e| e.to_string());
                    }
                )*
                Err(no_preset_message(config))
            }

            pub fn preset_name(&self) -> &'static str {
                match self { $( AnyT5::$variant(_) => $name, )* }
            }

            pub fn config(&self) -> &T5Config {
                match self { $( AnyT5::$variant(m) => &m.config, )* }
            }
        }

        /// Explains which dims of `config` differ from the closest preset.
        pub fn no_preset_message(config: &T5Config) -> String {
            let mut best: Option<(&str, Vec<(&'static str, usize, usize)>)> = None;
            $(
                let diffs = dim_differences::<$ty>(config);
                if best.as_ref().map_or(true, |(_, b)| diffs.len() < b.len()) {
                    best = Some(($name, diffs));
                }
            )*
            let (name, diffs) = best.expect("at least one preset");
            format!(
                "vocab_size {}, d_model {}, num_heads * d_kv {} ({} x {}), d_ff {}; the closest preset, `{name}`, differs: {}",
                config.vocab_size, config.d_model, config.inner_dim(), config.num_heads, config.d_kv,
                config.d_ff, describe(&diffs)
            )
        }
    };
}

presets! {
    /// `t5-small`: 6+6 layers, 8 heads x 64, ReLU, tied.
    T5Small, T5Small, "t5-small", 32128, 512, 512, 2048;
    /// `t5-base`: 12+12 layers, 12 heads x 64.
    T5Base, T5Base, "t5-base", 32128, 768, 768, 3072;
    /// `t5-large`: 24+24 layers, 16 heads x 64.
    T5Large, T5Large, "t5-large", 32128, 1024, 1024, 4096;
    /// `t5-3b`: 24+24 layers, 32 heads x 128.
    T5_3b, T5_3b, "t5-3b", 32128, 1024, 4096, 16384;
    /// `google/flan-t5-small`: 8+8 layers, 6 heads x 64, gated-GELU, untied.
    FlanT5Small, FlanT5Small, "flan-t5-small", 32128, 512, 384, 1024;
    /// `google/flan-t5-base`: 12+12 layers, 12 heads x 64.
    FlanT5Base, FlanT5Base, "flan-t5-base", 32128, 768, 768, 2048;
    /// `google/flan-t5-large`: 24+24 layers, 16 heads x 64.
    FlanT5Large, FlanT5Large, "flan-t5-large", 32128, 1024, 1024, 2816;
    /// `google/flan-t5-xl`: 24+24 layers, 32 heads x 64.
    FlanT5Xl, FlanT5Xl, "flan-t5-xl", 32128, 2048, 2048, 5120;
    /// Test preset `t5-test`: d_model 64, 4 heads x 16, d_ff 128, ReLU, tied, 2+2 layers.
    T5Test, T5Test, "t5-test", 32128, 64, 64, 128;
    /// Test preset `flan-t5-test`: d_model 64, 4 heads x 16, d_ff 96, gated-GELU, untied, 3+2 layers.
    FlanT5Test, FlanT5Test, "flan-t5-test", 32128, 64, 64, 96;
}

/// Runs `$body` with `$m` bound to the concrete `T5<Preset, D>` inside an [`AnyT5`].
#[macro_export]
macro_rules! with_t5 {
    ($any:expr, $m:ident => $body:expr) => {
        match $any {
            $crate::presets::AnyT5::T5Small($m) => $body,
            $crate::presets::AnyT5::T5Base($m) => $body,
            $crate::presets::AnyT5::T5Large($m) => $body,
            $crate::presets::AnyT5::T5_3b($m) => $body,
            $crate::presets::AnyT5::FlanT5Small($m) => $body,
            $crate::presets::AnyT5::FlanT5Base($m) => $body,
            $crate::presets::AnyT5::FlanT5Large($m) => $body,
            $crate::presets::AnyT5::FlanT5Xl($m) => $body,
            $crate::presets::AnyT5::T5Test($m) => $body,
            $crate::presets::AnyT5::FlanT5Test($m) => $body,
        }
    };
}

impl<D: Device<f32>> AnyT5<D> {
    /// Loads `dir/config.json` and the checkpoint beside it into the matching preset, strictly.
    pub fn from_pretrained(dir: &Path, dev: &D) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = T5Config::from_file(&config_path)?;
        let mut model = AnyT5::new(dev, &config).map_err(|message| LmError::NoPreset {
            path: config_path.clone(),
            message,
            presets: PRESET_NAMES.join(", "),
        })?;
        with_t5!(&mut model, m => m.load_checkpoint(dir)?);
        Ok(model)
    }
}
