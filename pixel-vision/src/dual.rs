//! PixelLLM's image encoder: a frozen SAM image encoder and a trainable EVA02 on the same
//! image, features concatenated on channels at SAM's grid.
//!
//! As scenic's `concat_visual_features`: every feature map is resized (bicubic, as
//! `jax.image.resize`) to the first one's grid — SAM's — and the maps are concatenated on the
//! channel axis, SAM first. Each backbone sees its own preprocessing (size, mean / std); both
//! pad bottom / right, so the grids cover the same image region.
use crate::conv::{FeatureMap, Images};
use crate::error::{VisionError, VisionResult};
use crate::eva02::{Eva02, Eva02Config};
use crate::layers::realize;
use crate::preprocess::{
    preprocess, to_images, Normalization, CLIP_NORMALIZATION, SAM_NORMALIZATION,
};
use crate::resize::{resize_map, ResizeKernel};
use crate::sam::{SamImageEncoder, SamVisionConfig};
use dfdx::prelude::*;
use image::RgbImage;
use pixel_core::params::{join, ParamVisitor, Params, Trainable};
use pixel_core::Result;

/// SAM (width `SH`, output `SO`) + EVA02 (width `E`) -> features of width `Cat = SO + E`.
#[derive(Debug, Clone)]
pub struct DualImageEncoder<SH: ConstDim, SO: ConstDim, E: ConstDim, Cat: ConstDim, D: Device<f32>>
{
    pub sam: SamImageEncoder<SH, SO, D>,
    pub eva: Eva02<E, D>,
    pub sam_normalization: Normalization,
    pub eva_normalization: Normalization,
    _cat: std::marker::PhantomData<Cat>,
}

impl<SH: ConstDim, SO: ConstDim, E: ConstDim, Cat: ConstDim, D: Device<f32>>
    DualImageEncoder<SH, SO, E, Cat, D>
{
    pub fn new(dev: &D, sam: &SamVisionConfig, eva: &Eva02Config) -> VisionResult<Self> {
        if Cat::SIZE != SO::SIZE + E::SIZE {
            return Err(VisionError::Config(format!(
                "the dual encoder's width {} must be SAM's {} + EVA02's {}",
                Cat::SIZE,
                SO::SIZE,
                E::SIZE
            )));
        }
        Ok(DualImageEncoder {
            sam: SamImageEncoder::new(dev, sam)?,
            eva: Eva02::new(dev, eva)?,
            sam_normalization: SAM_NORMALIZATION,
            eva_normalization: CLIP_NORMALIZATION,
            _cat: Default::default(),
        })
    }

    /// Freezes the SAM branch (`<prefix>.sam.*`), leaving EVA02 trainable.
    pub fn trainable(prefix: &str) -> Trainable {
        Trainable::all().freeze(&format!("{}*", join(prefix, "sam.")))
    }

    /// `(sam pixel_values, eva pixel_values)` for a batch of RGB images.
    pub fn preprocess(&self, dev: &D, images: &[RgbImage]) -> VisionResult<(Images<D>, Images<D>)> {
        let sam: Vec<_> = images
            .iter()
            .map(|i| preprocess(i, self.sam.config.image_size, &self.sam_normalization))
            .collect();
        let eva: Vec<_> = images
            .iter()
            .map(|i| preprocess(i, self.eva.config.img_size, &self.eva_normalization))
            .collect();
        Ok((to_images(dev, &sam)?, to_images(dev, &eva)?))
    }

    /// Features `[B, h*w, Cat]` on SAM's grid. Each branch records on its pixels' tape: a frozen
    /// SAM gets untaped pixels (`S = NoneTape`), so its ops cost nothing in the backward pass.
    pub fn forward<S: Tape<f32, D>, T: Tape<f32, D> + Merge<S>>(
        &self,
        sam_pixels: Images<D, S>,
        eva_pixels: Images<D, T>,
    ) -> FeatureMap<Cat, D, T> {
        let sam = self.sam.forward(sam_pixels);
        let (h, w) = (sam.height, sam.width);
        let eva = resize_map(
            self.eva.feature_map(eva_pixels),
            h,
            w,
            ResizeKernel::Bicubic,
        );
        let sam: Tensor<(usize, usize, usize), f32, D, S> = realize(sam.tokens);
        let eva: Tensor<(usize, usize, usize), f32, D, T> = realize(eva.tokens);
        // SAM first; both tapes move onto it so the concatenation is recorded.
        let (sam, sam_tape) = sam.split_tape();
        let (eva, tape) = eva.split_tape();
        let tokens = (sam.put_tape(tape.merge(sam_tape)), eva).concat_along(Axis::<2>);
        FeatureMap::new(realize(tokens), h, w)
    }
}

impl<SH: ConstDim, SO: ConstDim, E: ConstDim, Cat: ConstDim, D: Device<f32>> Params<D>
    for DualImageEncoder<SH, SO, E, Cat, D>
{
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.sam.visit_params(&join(prefix, "sam"), v)?;
        self.eva.visit_params(&join(prefix, "eva"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_core::params::ParamTensor;

    type Tiny = DualImageEncoder<Const<32>, Const<16>, Const<32>, Const<48>, Cpu>;

    fn tiny(dev: &Cpu) -> Tiny {
        // A demo-sized pair: 64 px images, SAM patch 8 (8x8 grid), EVA02 patch 16 (4x4 grid).
        let sam = SamVisionConfig {
            hidden_size: 32,
            output_channels: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            image_size: 64,
            patch_size: 8,
            mlp_dim: Some(64),
            window_size: 4,
            global_attn_indexes: vec![1],
            num_pos_feats: 8,
            ..Default::default()
        };
        let mut eva = Eva02Config::sized(64, 32, 1, 2, false, true);
        eva.patch_size = 16;
        eva.ref_feat_shape = 4;
        Tiny::new(dev, &sam, &eva).unwrap()
    }

    #[test]
    fn features_concatenate_at_sams_grid_and_only_eva_trains() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let enc = tiny(&dev);
        let img = RgbImage::from_fn(50, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 3, 90]));
        let (sam_px, eva_px) = enc.preprocess(&dev, &[img]).unwrap();
        let out = enc.forward(sam_px.clone(), eva_px.retaped::<OwnedTape<f32, Cpu>>());
        assert_eq!(
            (out.height, out.width, out.tokens.shape().2),
            (8, 8, Const::<48>)
        );
        let sam_only = enc.sam.forward(sam_px).tokens.as_vec();
        let all = out.tokens.retaped::<NoneTape>().as_vec();
        for (row, sam_row) in all.chunks(48).zip(sam_only.chunks(16)) {
            assert_eq!(&row[..16], sam_row);
        }
        let grads = out.tokens.square().sum().backward();
        let w = &enc.eva.blocks[0].mlp.fc2.weight;
        assert!(w.grad(&grads).iter().any(|g| *g != 0.0));
        let t = Tiny::trainable("image_encoder");
        assert!(!t.is_trainable("image_encoder.sam.neck.conv1.weight"));
        assert!(t.is_trainable("image_encoder.eva.blocks.0.mlp.fc2.weight"));
    }

    #[test]
    fn mismatched_width_is_a_config_error() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let sam = crate::sam::SamConfig::test().vision_config;
        let eva = Eva02Config::sized(56, 64, 1, 4, false, true);
        let r = DualImageEncoder::<Const<64>, Const<32>, Const<64>, Const<100>, Cpu>::new(
            &dev, &sam, &eva,
        );
        assert!(r.is_err());
    }
}
