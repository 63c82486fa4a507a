//! Model presets as types: the model widths are associated `ConstDim`s, everything else a
//! run-time config. Presets can be defined outside this crate, e.g. a demo's tiny encoders:
//!
//! ```
//! use dfdx::prelude::*;
//! use pixel_vision::eva02::Eva02Config;
//! use pixel_vision::presets::Eva02Preset;
//!
//! struct TinyEva;
//! impl Eva02Preset for TinyEva {
//!     const NAME: &'static str = "tiny-eva";
//!     type Dim = Const<32>;
//!     fn config() -> Eva02Config {
//!         let mut c = Eva02Config::sized(64, 32, 2, 2, false, true);
//!         c.patch_size = 8;
//!         c.ref_feat_shape = 8;
//!         c
//!     }
//! }
//! let dev: Cpu = Default::default();
//! let eva = TinyEva::build(&dev).unwrap();
//! assert_eq!(eva.config.grid(), 8);
//! ```
use crate::error::{VisionError, VisionResult};
use crate::eva02::{Eva02, Eva02Config};
use crate::sam::{SamConfig, SamModel};
use dfdx::prelude::*;

/// A SAM size: image-encoder width `Hidden`, prompt / decoder width `Embed`.
pub trait SamPreset {
    const NAME: &'static str;
    type Hidden: ConstDim;
    type Embed: ConstDim;
    fn config() -> SamConfig;

    fn build<D: Device<f32>>(dev: &D) -> VisionResult<SamModel<Self::Hidden, Self::Embed, D>> {
        SamModel::new(dev, &Self::config())
    }
}

/// An EVA02 size of width `Dim`.
pub trait Eva02Preset {
    const NAME: &'static str;
    type Dim: ConstDim;
    fn config() -> Eva02Config;

    fn build<D: Device<f32>>(dev: &D) -> VisionResult<Eva02<Self::Dim, D>> {
        Eva02::new(dev, &Self::config())
    }
}

/// The SAM of a preset.
pub type SamOf<P, D> = SamModel<<P as SamPreset>::Hidden, <P as SamPreset>::Embed, D>;
/// The EVA02 of a preset.
pub type Eva02Of<P, D> = Eva02<<P as Eva02Preset>::Dim, D>;

/// `sam-vit-b`: ViT-B/16 at 1024 px, global attention in blocks 2, 5, 8, 11.
pub struct SamVitB;
/// `sam-vit-l`: ViT-L/16, global attention in blocks 5, 11, 17, 23.
pub struct SamVitL;
/// `sam-vit-h`: ViT-H/16, global attention in blocks 7, 15, 23, 31.
pub struct SamVitH;
/// `sam-vit-test`: 128 px, width 64, 2 blocks (see [`SamConfig::test`]).
pub struct SamVitTest;

impl SamPreset for SamVitB {
    const NAME: &'static str = "sam-vit-b";
    type Hidden = Const<768>;
    type Embed = Const<256>;
    fn config() -> SamConfig {
        SamConfig::sam_vit(768, 12, 12, [2, 5, 8, 11])
    }
}

impl SamPreset for SamVitL {
    const NAME: &'static str = "sam-vit-l";
    type Hidden = Const<1024>;
    type Embed = Const<256>;
    fn config() -> SamConfig {
        SamConfig::sam_vit(1024, 24, 16, [5, 11, 17, 23])
    }
}

impl SamPreset for SamVitH {
    const NAME: &'static str = "sam-vit-h";
    type Hidden = Const<1280>;
    type Embed = Const<256>;
    fn config() -> SamConfig {
        SamConfig::sam_vit(1280, 32, 16, [7, 15, 23, 31])
    }
}

impl SamPreset for SamVitTest {
    const NAME: &'static str = "sam-vit-test";
    type Hidden = Const<64>;
    type Embed = Const<32>;
    fn config() -> SamConfig {
        SamConfig::test()
    }
}

/// `eva02-tiny` (`eva02_tiny_patch14_224`).
pub struct Eva02Tiny;
/// `eva02-small` (`eva02_small_patch14_224`).
pub struct Eva02Small;
/// `eva02-base` (`eva02_base_patch14_224`).
pub struct Eva02Base;
/// `eva02-large` (`eva02_large_patch14_448`).
pub struct Eva02Large;
/// `eva02-test`: 56 px, patch 14, width 64, depth 2, 4 heads, RoPE reference grid 4, the
/// base/large layout (separate q/k/v, SwiGLU with norm).
pub struct Eva02Test;

impl Eva02Preset for Eva02Tiny {
    const NAME: &'static str = "eva02-tiny";
    type Dim = Const<192>;
    fn config() -> Eva02Config {
        Eva02Config::sized(224, 192, 12, 3, true, false)
    }
}

impl Eva02Preset for Eva02Small {
    const NAME: &'static str = "eva02-small";
    type Dim = Const<384>;
    fn config() -> Eva02Config {
        Eva02Config::sized(224, 384, 12, 6, true, false)
    }
}

impl Eva02Preset for Eva02Base {
    const NAME: &'static str = "eva02-base";
    type Dim = Const<768>;
    fn config() -> Eva02Config {
        Eva02Config::sized(224, 768, 12, 12, false, true)
    }
}

impl Eva02Preset for Eva02Large {
    const NAME: &'static str = "eva02-large";
    type Dim = Const<1024>;
    fn config() -> Eva02Config {
        Eva02Config::sized(448, 1024, 24, 16, false, true)
    }
}

impl Eva02Preset for Eva02Test {
    const NAME: &'static str = "eva02-test";
    type Dim = Const<64>;
    fn config() -> Eva02Config {
        let mut c = Eva02Config::sized(56, 64, 2, 4, false, true);
        c.ref_feat_shape = 4;
        c
    }
}

/// Something to do with a SAM preset chosen at run time (see [`with_sam_preset`]).
pub trait SamPresetVisitor {
    type Output;
    fn visit<P: SamPreset>(self) -> Self::Output;
}

/// Something to do with an EVA02 preset chosen at run time.
pub trait Eva02PresetVisitor {
    type Output;
    fn visit<P: Eva02Preset>(self) -> Self::Output;
}

pub const SAM_PRESETS: [&str; 4] = ["sam-vit-b", "sam-vit-l", "sam-vit-h", "sam-vit-test"];
pub const EVA02_PRESETS: [&str; 5] = [
    "eva02-tiny",
    "eva02-small",
    "eva02-base",
    "eva02-large",
    "eva02-test",
];

/// Runs `visitor` with the SAM preset called `name`.
pub fn with_sam_preset<V: SamPresetVisitor>(name: &str, visitor: V) -> VisionResult<V::Output> {
    Ok(match name {
        "sam-vit-b" => visitor.visit::<SamVitB>(),
        "sam-vit-l" => visitor.visit::<SamVitL>(),
        "sam-vit-h" => visitor.visit::<SamVitH>(),
        "sam-vit-test" => visitor.visit::<SamVitTest>(),
        _ => {
            return Err(VisionError::UnknownPreset {
                name: name.into(),
                known: SAM_PRESETS.join(", "),
            })
        }
    })
}

/// Runs `visitor` with the SAM preset whose widths are `(hidden, embed)` (for HF folders,
/// whose config.json gives the widths).
pub fn with_sam_widths<V: SamPresetVisitor>(
    hidden: usize,
    embed: usize,
    visitor: V,
) -> VisionResult<V::Output> {
    let name = match (hidden, embed) {
        (768, 256) => "sam-vit-b",
        (1024, 256) => "sam-vit-l",
        (1280, 256) => "sam-vit-h",
        (64, 32) => "sam-vit-test",
        _ => {
            return Err(VisionError::Config(format!(
            "no SAM preset has image-encoder width {hidden} and output width {embed}; known: {}",
            SAM_PRESETS.join(", ")
        )))
        }
    };
    with_sam_preset(name, visitor)
}

/// Runs `visitor` with the EVA02 preset called `name`.
pub fn with_eva02_preset<V: Eva02PresetVisitor>(name: &str, visitor: V) -> VisionResult<V::Output> {
    Ok(match name {
        "eva02-tiny" => visitor.visit::<Eva02Tiny>(),
        "eva02-small" => visitor.visit::<Eva02Small>(),
        "eva02-base" => visitor.visit::<Eva02Base>(),
        "eva02-large" => visitor.visit::<Eva02Large>(),
        "eva02-test" => visitor.visit::<Eva02Test>(),
        _ => {
            return Err(VisionError::UnknownPreset {
                name: name.into(),
                known: EVA02_PRESETS.join(", "),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::params::count_params;

    struct Count;
    impl SamPresetVisitor for Count {
        type Output = usize;
        fn visit<P: SamPreset>(self) -> usize {
            let dev: Cpu = Default::default();
            count_params(&mut P::build(&dev).unwrap())
        }
    }

    #[test]
    fn test_presets_build_and_unknown_names_are_listed() {
        assert!(with_sam_preset("sam-vit-test", Count).unwrap() > 0);
        let err = with_sam_preset("sam-vit-x", Count).unwrap_err().to_string();
        assert!(err.contains("sam-vit-b, sam-vit-l"), "{err}");
    }
}
