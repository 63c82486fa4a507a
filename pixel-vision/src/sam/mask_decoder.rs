//! SAM's mask decoder: output tokens + prompt tokens through the two-way transformer, image
//! tokens upscaled 4x, hypernetwork MLPs turning mask tokens into per-pixel weights, IoU head.
use crate::conv::{ConvTranspose2d, FeatureMap};
use crate::layers::{slice_tokens, FeedForward, Norm};
use crate::sam::config::SamMaskDecoderConfig;
use crate::sam::two_way::TwoWayTransformer;
use dfdx::prelude::*;
use pixel_core::nn::Seq;
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_core::Result;

/// Masks and their predicted quality.
#[derive(Debug)]
///
/// In training, the tape of every recorded op rides on `masks`; `iou_scores` carries an empty
/// one. A loss on the IoU scores must read them alongside a loss on the masks and be summed
/// with it, or the decoder's ops never reach the backward pass.
pub struct MaskPrediction<D: Device<f32>, T = NoneTape> {
    /// Low-resolution mask logits `[B * P, masks, 4h, 4w]`.
    pub masks: Tensor<(usize, usize, usize, usize), f32, D, T>,
    /// `[B * P, masks]`.
    pub iou_scores: Tensor<(usize, usize), f32, D, T>,
}

/// HF `SamMaskDecoder` of width `C`.
#[derive(Debug, Clone)]
pub struct SamMaskDecoder<C: ConstDim, D: Device<f32>> {
    /// `[1, C]`.
    pub iou_token: Tensor<(usize, C), f32, D>,
    /// `[num_multimask_outputs + 1, C]`.
    pub mask_tokens: Tensor<(usize, C), f32, D>,
    pub transformer: TwoWayTransformer<C, D>,
    pub upscale_conv1: ConvTranspose2d<C, usize, D>,
    pub upscale_layer_norm: Norm<usize, D>,
    pub upscale_conv2: ConvTranspose2d<usize, usize, D>,
    pub output_hypernetworks_mlps: Vec<FeedForward<C, usize, D>>,
    pub iou_prediction_head: FeedForward<C, usize, D>,
}

impl<C: ConstDim, D: Device<f32>> SamMaskDecoder<C, D> {
    pub fn new(dev: &D, config: &SamMaskDecoderConfig) -> Self {
        let c = C::SIZE;
        let masks = config.num_multimask_outputs + 1;
        SamMaskDecoder {
            iou_token: dev.sample_normal_like(&(1, C::default())),
            mask_tokens: dev.sample_normal_like(&(masks, C::default())),
            transformer: TwoWayTransformer::new(
                dev,
                config.num_hidden_layers,
                config.num_attention_heads,
                config.mlp_dim,
                config.attention_downsample_rate,
                config.layer_norm_eps,
            ),
            upscale_conv1: ConvTranspose2d::new(dev, C::default(), c / 4, 2, true),
            upscale_layer_norm: Norm::new(dev, c / 4, 1e-6),
            upscale_conv2: ConvTranspose2d::new(dev, c / 4, c / 8, 2, true),
            output_hypernetworks_mlps: (0..masks)
                .map(|_| FeedForward::new(dev, C::default(), c, c / 8, 3))
                .collect(),
            iou_prediction_head: FeedForward::new(
                dev,
                C::default(),
                config.iou_head_hidden_dim,
                masks,
                config.iou_head_depth,
            ),
        }
    }

    pub fn num_mask_tokens(&self) -> usize {
        self.mask_tokens.shape().0
    }

    /// Predicts masks.
    ///
    /// - `image_embeddings`: `[B, h*w, C]`,
    /// - `image_pe`: `[1, h*w, C]` (the prompt encoder's `dense_pe`),
    /// - `sparse`: prompt tokens `[B * P, n, C]` (P prompts per image, image-major),
    /// - `dense`: `[B, h*w, C]` (no-mask or mask embedding),
    /// - `multimask`: return masks 1.. (3 candidates) instead of mask 0.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        image_embeddings: FeatureMap<C, D, T>,
        image_pe: &Seq<C, D>,
        sparse: Seq<C, D, T>,
        dense: Seq<C, D, T>,
        multimask: bool,
    ) -> MaskPrediction<D, T> {
        let (h, w, b) = (
            image_embeddings.height,
            image_embeddings.width,
            image_embeddings.batch(),
        );
        let (bp, n, _) = *sparse.shape();
        assert_eq!(bp % b, 0, "{bp} prompt sets do not divide among {b} images");
        let prompts = bp / b;
        let nm = self.num_mask_tokens();

        let output_tokens = (self.iou_token.retaped::<T>(), self.mask_tokens.clone())
            .concat_along(Axis::<0>)
            .broadcast_like::<_, Axis<0>>(&(bp, 1 + nm, C::default()));
        let tokens = (output_tokens, sparse).concat_along(Axis::<1>);
        debug_assert_eq!(tokens.shape().1, 1 + nm + n);

        let src = image_embeddings.tokens + dense;
        let src = if prompts == 1 {
            src
        } else {
            src.broadcast_like::<_, Axis<1>>(&(b, prompts, h * w, C::default()))
                .reshape_like(&(bp, h * w, C::default()))
        };
        let (hs, src) = self.transformer.forward(src, image_pe, tokens);

        let up = self.upscale_conv1.forward(FeatureMap::new(src, h, w));
        let up = up.map(|t| pixel_core::nn::gelu(self.upscale_layer_norm.forward(t)));
        let up = self.upscale_conv2.forward(up).map(pixel_core::nn::gelu);
        let (uh, uw) = (up.height, up.width);
        let hyper = self
            .output_hypernetworks_mlps
            .iter()
            .enumerate()
            .map(|(i, mlp)| mlp.forward(slice_tokens(hs.retaped::<T>(), 1 + i..2 + i)))
            .reduce(|acc, next| (acc, next).concat_along(Axis::<1>))
            .expect("the decoder has mask tokens");
        let masks = hyper
            .matmul(up.tokens.permute::<_, Axes3<0, 2, 1>>())
            .reshape_like(&(bp, nm, uh, uw));
        let iou = self
            .iou_prediction_head
            .forward(slice_tokens(hs, 0..1))
            .reshape_like(&(bp, nm));
        let (lo, hi) = if multimask { (1, nm) } else { (0, 1) };
        let (masks, iou) = crate::layers::merge_tapes(masks, iou);
        MaskPrediction {
            masks: masks.slice((.., lo..hi, .., ..)),
            iou_scores: iou.slice((.., lo..hi)),
        }
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for SamMaskDecoder<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(&join(prefix, "iou_token.weight"), &mut self.iou_token)?;
        v.visit(&join(prefix, "mask_tokens.weight"), &mut self.mask_tokens)?;
        self.transformer
            .visit_params(&join(prefix, "transformer"), v)?;
        self.upscale_conv1
            .visit_params(&join(prefix, "upscale_conv1"), v)?;
        self.upscale_conv2
            .visit_params(&join(prefix, "upscale_conv2"), v)?;
        self.upscale_layer_norm
            .visit_params(&join(prefix, "upscale_layer_norm"), v)?;
        self.output_hypernetworks_mlps
            .visit_params(&join(prefix, "output_hypernetworks_mlps"), v)?;
        self.iou_prediction_head
            .visit_params(&join(prefix, "iou_prediction_head"), v)
    }
}
