//! SAM's prompt encoder: points and box corners -> sparse tokens, masks -> dense embeddings.
use crate::conv::{Conv2d, FeatureMap, Images};
use crate::layers::Norm;
use crate::sam::config::SamPromptEncoderConfig;
use dfdx::prelude::*;
use pixel_core::nn::{RandomFourierEncoding, Seq};
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_core::Result;

/// Label of a padding point (HF and segment-anything): replaced by `not_a_point_embed`.
pub const LABEL_NOT_A_POINT: i64 = -1;
/// HF's label for a point to ignore entirely (zero embedding).
pub const LABEL_IGNORE: i64 = -10;

/// Downscales a low-resolution mask prompt `[B, 1, 4h, 4w]` to a dense embedding `[B, hw, C]`
/// (HF `SamMaskEmbedding`: `conv1`, `layer_norm1`, GELU, `conv2`, `layer_norm2`, GELU, `conv3`).
#[derive(Debug, Clone)]
pub struct SamMaskEmbedding<C: ConstDim, D: Device<f32>> {
    pub conv1: Conv2d<usize, usize, D>,
    pub layer_norm1: Norm<usize, D>,
    pub conv2: Conv2d<usize, usize, D>,
    pub layer_norm2: Norm<usize, D>,
    pub conv3: Conv2d<usize, C, D>,
}

impl<C: ConstDim, D: Device<f32>> SamMaskEmbedding<C, D> {
    pub fn new(dev: &D, mask_input_channels: usize, eps: f64) -> Self {
        let quarter = mask_input_channels / 4;
        SamMaskEmbedding {
            conv1: Conv2d::new(dev, 1, quarter, 2, 2, 0, true),
            layer_norm1: Norm::new(dev, quarter, eps),
            conv2: Conv2d::new(dev, quarter, mask_input_channels, 2, 2, 0, true),
            layer_norm2: Norm::new(dev, mask_input_channels, eps),
            conv3: Conv2d::new(dev, mask_input_channels, C::default(), 1, 1, 0, true),
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, masks: Images<D, T>) -> FeatureMap<C, D, T> {
        let x = self.conv1.forward_images(masks);
        let x = x.map(|t| pixel_core::nn::gelu(self.layer_norm1.forward(t)));
        let x = self.conv2.forward(x);
        let x = x.map(|t| pixel_core::nn::gelu(self.layer_norm2.forward(t)));
        self.conv3.forward(x)
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for SamMaskEmbedding<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.conv1.visit_params(&join(prefix, "conv1"), v)?;
        self.conv2.visit_params(&join(prefix, "conv2"), v)?;
        self.conv3.visit_params(&join(prefix, "conv3"), v)?;
        self.layer_norm1
            .visit_params(&join(prefix, "layer_norm1"), v)?;
        self.layer_norm2
            .visit_params(&join(prefix, "layer_norm2"), v)
    }
}

/// SAM's `PromptEncoder` (HF `SamPromptEncoder`) of width `C`.
///
/// Point labels: 1 foreground, 0 background, -1 padding (`not_a_point_embed`), -10 ignored;
/// box corners get `point_embed.2` (top-left) and `point_embed.3` (bottom-right).
#[derive(Debug, Clone)]
pub struct SamPromptEncoder<C: ConstDim, D: Device<f32>> {
    /// The random Fourier encoding shared with the image positions (a buffer in both
    /// references; HF stores it once as `shared_image_embedding.positional_embedding`).
    pub shared_embedding: RandomFourierEncoding<C, D>,
    pub mask_embed: SamMaskEmbedding<C, D>,
    /// `[1, C]`.
    pub no_mask_embed: Tensor<(usize, C), f32, D>,
    /// `num_point_embeddings` tables of `[1, C]`.
    pub point_embed: Vec<Tensor<(usize, C), f32, D>>,
    /// `[1, C]`.
    pub not_a_point_embed: Tensor<(usize, C), f32, D>,
    /// Side of the (square) model input the prompt coordinates refer to.
    pub input_image_size: usize,
    /// Side of the image-embedding grid.
    pub image_embedding_size: usize,
}

impl<C: ConstDim, D: Device<f32>> SamPromptEncoder<C, D> {
    pub fn new(dev: &D, config: &SamPromptEncoderConfig) -> Self {
        let table = || dev.sample_normal_like(&(1, C::default()));
        SamPromptEncoder {
            shared_embedding: RandomFourierEncoding::new(dev, 1.0),
            mask_embed: SamMaskEmbedding::new(
                dev,
                config.mask_input_channels,
                config.layer_norm_eps,
            ),
            no_mask_embed: table(),
            point_embed: (0..config.num_point_embeddings).map(|_| table()).collect(),
            not_a_point_embed: table(),
            input_image_size: config.image_size,
            image_embedding_size: config.image_embedding_size(),
        }
    }

    /// Fourier features of pixel coordinates `[B, n, 2]` (`x, y` in the model-input frame).
    fn encode_pixels(&self, coords: &[f32], batch: usize, n: usize) -> Seq<C, D> {
        let size = self.input_image_size as f32;
        let normalized: Vec<f32> = coords.iter().map(|c| (c + 0.5) / size).collect();
        let dev = self.no_mask_embed.device().clone();
        self.shared_embedding
            .forward(dev.tensor_from_vec(normalized, (batch, n, Const::<2>)))
    }

    /// Point tokens `[B, n (+1 when padded), C]` from pixel `coords` (`B * n * 2` values) and
    /// `labels` (`B * n`); `pad` appends a padding point, as both references do when no box is
    /// given.
    pub fn embed_points<T: Tape<f32, D>>(
        &self,
        coords: &[f32],
        labels: &[i64],
        batch: usize,
        pad: bool,
    ) -> Seq<C, D, T> {
        let n = labels.len() / batch.max(1);
        assert_eq!(
            coords.len(),
            batch * n * 2,
            "{} coordinates for {batch} x {n} points",
            coords.len()
        );
        let (mut coords, mut labels, mut n) = (coords.to_vec(), labels.to_vec(), n);
        if pad {
            let mut c2 = Vec::with_capacity(batch * (n + 1) * 2);
            let mut l2 = Vec::with_capacity(batch * (n + 1));
            for b in 0..batch {
                c2.extend_from_slice(&coords[b * n * 2..(b + 1) * n * 2]);
                c2.extend_from_slice(&[0.0, 0.0]);
                l2.extend_from_slice(&labels[b * n..(b + 1) * n]);
                l2.push(LABEL_NOT_A_POINT);
            }
            (coords, labels, n) = (c2, l2, n + 1);
        }
        let pe = self.encode_pixels(&coords, batch, n);
        let dev = pe.device().clone();
        let keep: Vec<f32> = labels
            .iter()
            .map(|&l| {
                if l == LABEL_NOT_A_POINT || l == LABEL_IGNORE {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        let keep: Tensor<(usize, usize), f32, D> = dev.tensor_from_vec(keep, (batch, n));
        let shape = *pe.shape();
        let pe = pe * keep.broadcast_like::<_, Axis<2>>(&shape);
        // Rows: not-a-point, background, foreground, zero.
        let zero: Tensor<(usize, C), f32, D> = dev.zeros_like(&(1, C::default()));
        let table = (
            self.not_a_point_embed.retaped::<T>(),
            self.point_embed[0].clone(),
        )
            .concat_along(Axis::<0>);
        let table = (table, self.point_embed[1].clone()).concat_along(Axis::<0>);
        let table = (table, zero).concat_along(Axis::<0>);
        let idx: Vec<usize> = labels
            .iter()
            .map(|&l| match l {
                LABEL_NOT_A_POINT => 0,
                0 => 1,
                1 => 2,
                _ => 3,
            })
            .collect();
        let added: Seq<C, D, T> = table.gather(dev.tensor_from_vec(idx, (batch, n)));
        added + pe
    }

    /// Box tokens `[B, 2 * nb, C]` (two corners per box) from pixel `boxes` (`B * nb * 4`
    /// values, `x0, y0, x1, y1`).
    pub fn embed_boxes<T: Tape<f32, D>>(&self, boxes: &[f32], batch: usize) -> Seq<C, D, T> {
        let nb = boxes.len() / 4 / batch.max(1);
        assert_eq!(
            boxes.len(),
            batch * nb * 4,
            "{} box values for a batch of {batch}",
            boxes.len()
        );
        let pe = self.encode_pixels(boxes, batch, 2 * nb);
        let dev = pe.device().clone();
        let corners = (
            self.point_embed[2].retaped::<T>(),
            self.point_embed[3].clone(),
        )
            .concat_along(Axis::<0>);
        let idx: Vec<usize> = (0..batch * 2 * nb).map(|i| i % 2).collect();
        let added: Seq<C, D, T> = corners.gather(dev.tensor_from_vec(idx, (batch, 2 * nb)));
        added + pe
    }

    /// The dense embedding without a mask prompt: `no_mask_embed` at every grid position,
    /// `[batch, h*w, C]`.
    pub fn dense_without_mask<T: Tape<f32, D>>(&self, batch: usize) -> Seq<C, D, T> {
        let hw = self.image_embedding_size * self.image_embedding_size;
        self.no_mask_embed
            .retaped::<T>()
            .reshape_like(&(C::default(),))
            .broadcast_like::<_, Axes2<0, 1>>(&(batch, hw, C::default()))
    }

    /// The dense embedding of mask prompts `[B, 1, 4h, 4w]`.
    pub fn dense_from_masks<T: Tape<f32, D>>(&self, masks: Images<D, T>) -> Seq<C, D, T> {
        self.mask_embed.forward(masks).tokens
    }

    /// The dense position encoding of the image-embedding grid `[1, h*w, C]` (`get_dense_pe`).
    pub fn dense_pe(&self) -> Seq<C, D> {
        self.shared_embedding
            .grid(self.image_embedding_size, self.image_embedding_size)
    }

    /// Visits everything but the shared position encoding (which [`crate::sam::SamModel`]
    /// names at the top level, as HF's checkpoints do).
    pub fn visit_own_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        self.mask_embed
            .visit_params(&join(prefix, "mask_embed"), v)?;
        v.visit(
            &join(prefix, "no_mask_embed.weight"),
            &mut self.no_mask_embed,
        )?;
        for (i, table) in self.point_embed.iter_mut().enumerate() {
            v.visit(&join(prefix, &format!("point_embed.{i}.weight")), table)?;
        }
        v.visit(
            &join(prefix, "not_a_point_embed.weight"),
            &mut self.not_a_point_embed,
        )
    }
}

impl<C: ConstDim, D: Device<f32>> Params<D> for SamPromptEncoder<C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(
            &join(prefix, "shared_embedding.positional_embedding"),
            &mut self.shared_embedding.gaussian_matrix,
        )?;
        self.visit_own_params(prefix, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sam::SamConfig;

    #[test]
    fn padding_and_ignored_points_get_their_tables_only() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let pe =
            SamPromptEncoder::<Const<32>, Cpu>::new(&dev, &SamConfig::test().prompt_encoder_config);
        let out: Seq<Const<32>, Cpu> =
            pe.embed_points(&[3.0, 4.0, 10.0, 20.0], &[LABEL_IGNORE, 1], 1, true);
        assert_eq!(out.shape().1, 3);
        let v = out.as_vec();
        assert!(v[..32].iter().all(|x| *x == 0.0));
        assert_eq!(v[64..], pe.not_a_point_embed.as_vec()[..]);
    }

    #[test]
    fn prompt_tables_receive_gradients() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let pe =
            SamPromptEncoder::<Const<32>, Cpu>::new(&dev, &SamConfig::test().prompt_encoder_config);
        let points: Seq<Const<32>, Cpu, OwnedTape<f32, Cpu>> =
            pe.embed_points(&[3.0, 4.0], &[1], 1, true);
        let grads = points.square().sum().backward();
        assert!(grads
            .get(&pe.point_embed[1])
            .as_vec()
            .iter()
            .any(|g| *g != 0.0));
        assert!(grads
            .get(&pe.not_a_point_embed)
            .as_vec()
            .iter()
            .any(|g| *g != 0.0));
    }
}
