//! The mask head: SAM's mask decoder, prompted by a box, over the image features.
//!
//! Referring segmentation as the paper does it: the box another head reads off the text (named
//! by `prompt`) is embedded by the model's location prompt encoder and SAM's mask decoder turns
//! it into a mask over the image features (projected to the prompt width). Training prompts
//! with the true box (teacher forcing, as SAM trains) and scores the low-resolution mask logits
//! with sigmoid cross-entropy against the object's mask, area-averaged to that resolution, plus,
//! as SAM, the squared error of the predicted IoU against the IoU the mask actually has.
//! Config (`kind = "mask"`): `prompt` (required: an earlier head that gives a box), `depth`
//! (two-way blocks, default 2).
use crate::error::Result;
use crate::heads::config::{options, HeadBuild};
use crate::heads::{DecodedTokens, HeadInputs, HeadLossPart, HeadPrediction, OutputHead, Reads};
use crate::presets::PixelDims;
use dfdx::prelude::*;
use image::{GrayImage, Luma};
use pixel_core::geometry::BoxXyxy;
use pixel_core::nn::{Linear, Seq};
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_vision::sam::{MaskPrediction, SamMaskDecoderConfig};
use pixel_vision::{FeatureMap, Images, SamMaskDecoder, SamPromptEncoder};
use serde::Deserialize;

#[derive(Debug)]
pub struct MaskHead<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> {
    pub name: String,
    /// The head whose box prompts the mask at inference.
    pub prompt: String,
    /// Image features -> the prompt encoder's width.
    pub projection: Linear<P::Visual, P::Prompt, D>,
    pub decoder: SamMaskDecoder<P::Prompt, D>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskOptions {
    prompt: String,
    #[serde(default = "default_depth")]
    depth: usize,
}

fn default_depth() -> usize {
    2
}

/// The registry's constructor for `kind = "mask"`.
pub fn build<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe>(
    build: &HeadBuild<'_, D>,
    table: &toml::Table,
) -> Result<Box<dyn OutputHead<P, D>>> {
    let o: MaskOptions = options(table, &build.key)?;
    build.require_image("the mask head")?;
    if o.depth == 0 {
        return Err(build.error("depth", "must be at least 1"));
    }
    let boxes: Vec<&str> = build
        .earlier
        .iter()
        .filter(|(_, reads)| reads.locates_tokens())
        .map(|(name, _)| name.as_str())
        .collect();
    if !boxes.contains(&o.prompt.as_str()) {
        return Err(build.error(
            "prompt",
            format!(
                "no earlier head named \"{}\" gives a box; heads before this one that do: {}",
                o.prompt,
                if boxes.is_empty() {
                    "none".to_string()
                } else {
                    boxes.join(", ")
                }
            ),
        ));
    }
    let (heads, mlp_dim, downsample) = P::two_way();
    let config = SamMaskDecoderConfig {
        hidden_size: <P::Prompt as ConstDim>::SIZE,
        mlp_dim,
        num_hidden_layers: o.depth,
        num_attention_heads: heads,
        attention_downsample_rate: downsample,
        num_multimask_outputs: 3,
        iou_head_depth: 3,
        iou_head_hidden_dim: <P::Prompt as ConstDim>::SIZE,
        layer_norm_eps: 1e-6,
    };
    Ok(Box::new(MaskHead::<P, D> {
        name: build.name.clone(),
        prompt: o.prompt,
        projection: Linear::new(build.dev, true),
        decoder: SamMaskDecoder::new(build.dev, &config),
    }))
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> MaskHead<P, D> {
    /// Low-resolution mask logits `[B, 1, 4h, 4w]` and predicted IoU `[B, 1]` for one box
    /// prompt per image (the tape rides on the masks).
    pub fn forward<T: Tape<f32, D>>(
        &self,
        image: &FeatureMap<P::Visual, D>,
        prompt_encoder: &SamPromptEncoder<P::Prompt, D>,
        prompts: &[BoxXyxy],
    ) -> MaskPrediction<D, T> {
        let b = prompts.len();
        let side = prompt_encoder.input_image_size as f32;
        let pixels: Vec<f32> = prompts
            .iter()
            .flat_map(|bx| bx.to_array().map(|v| v * side))
            .collect();
        let tokens: Seq<P::Prompt, D, T> = self.projection.forward(image.tokens.retaped::<T>());
        let features = FeatureMap::new(tokens, image.height, image.width);
        let sparse = prompt_encoder.embed_boxes::<T>(&pixels, b);
        let dense = prompt_encoder.dense_without_mask::<T>(b);
        self.decoder
            .forward(features, &prompt_encoder.dense_pe(), sparse, dense, false)
    }
}

/// The fraction of `mask`'s pixels that are on in each cell of an `h x w` grid, row-major.
pub fn area_average(mask: &GrayImage, h: usize, w: usize) -> Vec<f32> {
    let (mw, mh) = mask.dimensions();
    let mut sums = vec![0.0f32; h * w];
    let mut counts = vec![0.0f32; h * w];
    for (x, y, p) in mask.enumerate_pixels() {
        let cell = (y as usize * h / mh as usize) * w + x as usize * w / mw as usize;
        sums[cell] += f32::from(p.0[0] > 127);
        counts[cell] += 1.0;
    }
    sums.iter()
        .zip(&counts)
        .map(|(s, c)| if *c > 0.0 { s / c } else { 0.0 })
        .collect()
}

/// SAM's IoU-prediction targets: for each image with a mask, the IoU of its predicted mask
/// (logits > 0) with the true one (area fraction > 0.5), each cell of `cells`; weights average
/// over those images and skip the rest.
fn actual_ious(
    logits: &[f32],
    targets: &[f32],
    masks: &[Option<GrayImage>],
    cells: usize,
    with_mask: usize,
) -> (Vec<f32>, Vec<f32>) {
    masks
        .iter()
        .enumerate()
        .map(|(b, mask)| {
            if mask.is_none() {
                return (0.0, 0.0);
            }
            let range = b * cells..(b + 1) * cells;
            let (mut inter, mut union) = (0usize, 0usize);
            for (x, t) in logits[range.clone()].iter().zip(&targets[range]) {
                let (p, t) = (*x > 0.0, *t > 0.5);
                inter += usize::from(p && t);
                union += usize::from(p || t);
            }
            let iou = if union == 0 {
                0.0
            } else {
                inter as f32 / union as f32
            };
            (iou, 1.0 / with_mask as f32)
        })
        .unzip()
}

/// Mask logits `[h * w]` upsampled (nearest) to `size x size` and thresholded at 0.
pub fn binarize(logits: &[f32], h: usize, w: usize, size: u32) -> GrayImage {
    GrayImage::from_fn(size, size, |x, y| {
        let cell = (y as usize * h / size as usize) * w + x as usize * w / size as usize;
        Luma([if logits[cell] > 0.0 { 255 } else { 0 }])
    })
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> OutputHead<P, D> for MaskHead<P, D> {
    fn name(&self) -> &str {
        &self.name
    }

    fn reads(&self) -> Reads {
        Reads::Image
    }

    fn loss(&self, inputs: &HeadInputs<P, D>) -> Result<Vec<HeadLossPart<D>>> {
        let batch = inputs.batch;
        let with_mask = batch.target_masks.iter().filter(|m| m.is_some()).count();
        if with_mask == 0 {
            return Ok(Vec::new());
        }
        let prompts: Vec<BoxXyxy> = batch
            .target_boxes
            .iter()
            .map(|b| b.unwrap_or_else(BoxXyxy::whole_image))
            .collect();
        let MaskPrediction {
            masks: logits,
            iou_scores,
        } = self.forward::<OwnedTape<f32, D>>(inputs.image, inputs.prompt_encoder, &prompts);
        let shape = *logits.shape();
        let (h, w) = (shape.2, shape.3);
        let scale = 1.0 / (with_mask * h * w) as f32;
        let (mut targets, mut weights) = (Vec::new(), Vec::new());
        for mask in &batch.target_masks {
            match mask {
                Some(m) => {
                    targets.extend(area_average(m, h, w));
                    weights.extend(std::iter::repeat_n(scale, h * w));
                }
                None => {
                    targets.extend(std::iter::repeat_n(0.0, h * w));
                    weights.extend(std::iter::repeat_n(0.0, h * w));
                }
            }
        }
        let dev = logits.device().clone();
        let (iou_targets, iou_weights) = actual_ious(
            &logits.as_vec(),
            &targets,
            &batch.target_masks,
            h * w,
            with_mask,
        );
        let targets = dev.tensor_from_vec(targets, shape);
        let weights = dev.tensor_from_vec(weights, shape);
        // Sigmoid cross-entropy in its stable form: max(x, 0) - x t + ln(1 + e^-|x|).
        let positive = logits.retaped::<OwnedTape<f32, D>>().relu();
        let soft = (logits.retaped::<OwnedTape<f32, D>>().abs().negate().exp() + 1.0).ln();
        let bce = positive + soft - logits * targets;
        let iou_shape = *iou_scores.shape();
        let iou_error = (iou_scores - dev.tensor_from_vec(iou_targets, iou_shape)).square()
            * dev.tensor_from_vec(iou_weights, iou_shape);
        Ok(vec![HeadLossPart::whole(
            (bce * weights).sum() + iou_error.sum(),
        )])
    }

    fn decode(
        &self,
        inputs: &HeadInputs<P, D>,
        _tokens: &DecodedTokens,
        earlier: &[Vec<HeadPrediction>],
    ) -> Result<Vec<HeadPrediction>> {
        let b = inputs.batch.size;
        let from = earlier
            .iter()
            .find(|preds| preds.first().is_some_and(|p| p.head == self.prompt));
        let prompts: Vec<BoxXyxy> = (0..b)
            .map(|row| {
                from.and_then(|preds| preds.get(row))
                    .and_then(|p| p.object)
                    .unwrap_or_else(BoxXyxy::whole_image)
            })
            .collect();
        let logits: Images<D> = self
            .forward(inputs.image, inputs.prompt_encoder, &prompts)
            .masks;
        let (_, _, h, w) = *logits.shape();
        let values = logits.as_vec();
        let positions = inputs.decoder.shape().1;
        Ok((0..b)
            .map(|row| {
                let mut p = HeadPrediction::empty(&self.name, Reads::Image, positions);
                p.mask = Some(binarize(
                    &values[row * h * w..(row + 1) * h * w],
                    h,
                    w,
                    inputs.batch.image_size,
                ));
                p.object = Some(prompts[row]);
                p
            })
            .collect())
    }
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> Params<D> for MaskHead<P, D> {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.projection
            .visit_params(&join(prefix, "projection"), v)?;
        self.decoder.visit_params(&join(prefix, "mask_decoder"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_average_counts_on_pixels_per_cell() {
        let mask = GrayImage::from_fn(8, 8, |x, _| Luma([if x < 2 { 255 } else { 0 }]));
        let cells = area_average(&mask, 2, 2);
        assert_eq!(cells, vec![0.5, 0.0, 0.5, 0.0]);
        let back = binarize(&[1.0, -1.0, 1.0, -1.0], 2, 2, 8);
        assert_eq!(back.get_pixel(3, 7).0[0], 255);
        assert_eq!(back.get_pixel(4, 0).0[0], 0);
    }
}
