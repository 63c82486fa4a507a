//! The whole SAM (HF `SamModel`): loading HF folders and official checkpoints, image
//! embeddings, and mask prediction from point / box prompts.
use crate::conv::{check_images, FeatureMap, Images};
use crate::error::{VisionError, VisionResult};
use crate::sam::config::{SamConfig, SamMaskDecoderConfig};
use crate::sam::image_encoder::SamImageEncoder;
use crate::sam::mask_decoder::{MaskPrediction, SamMaskDecoder};
use crate::sam::prompt_encoder::SamPromptEncoder;
use dfdx::prelude::*;
use pixel_core::checkpoint::{load_params, LoadOptions, StoredTensor, TensorStore};
use pixel_core::nn::Seq;
use pixel_core::params::{join, ParamVisitor, Params};
use pixel_core::Result;
use std::path::Path;

/// Prompts in HF `SamModel`'s conventions (pixel coordinates in the model-input frame).
#[derive(Debug, Clone, Default)]
pub struct SamPrompts {
    /// `input_points` `[B, P, N, 2]` flattened, with `input_labels` `[B, P, N]`.
    pub points: Option<(Vec<f32>, Vec<i64>)>,
    /// `input_boxes` `[B, P, 4]` flattened (one box per prompt).
    pub boxes: Option<Vec<f32>>,
    /// `input_masks` `[B, 1, 4h, 4w]` flattened: low-resolution mask logits as a dense prompt.
    pub masks: Option<Vec<f32>>,
    /// Images in the batch.
    pub batch: usize,
    /// Prompts per image (HF's point batch).
    pub prompts: usize,
}

/// SAM with image-encoder width `H` and prompt / decoder width `C`.
#[derive(Debug, Clone)]
pub struct SamModel<H: ConstDim, C: ConstDim, D: Device<f32>> {
    pub vision_encoder: SamImageEncoder<H, C, D>,
    pub prompt_encoder: SamPromptEncoder<C, D>,
    pub mask_decoder: SamMaskDecoder<C, D>,
    pub config: SamConfig,
}

impl<H: ConstDim, C: ConstDim, D: Device<f32>> SamModel<H, C, D> {
    /// A randomly initialised model; fails when the config's widths are not `H` and `C`.
    pub fn new(dev: &D, config: &SamConfig) -> VisionResult<Self> {
        config.check()?;
        Ok(SamModel {
            vision_encoder: SamImageEncoder::new(dev, &config.vision_config)?,
            prompt_encoder: SamPromptEncoder::new(dev, &config.prompt_encoder_config),
            mask_decoder: SamMaskDecoder::new(dev, &config.mask_decoder_config),
            config: config.clone(),
        })
    }

    /// Loads a HF `SamModel` folder (`config.json` + `model.safetensors` or a sharded index).
    pub fn load_hf_dir(dev: &D, dir: &Path) -> VisionResult<Self> {
        let config = SamConfig::from_file(&dir.join("config.json"))?;
        let mut model = Self::new(dev, &config)?;
        let index = dir.join("model.safetensors.index.json");
        let weights = if index.exists() {
            index
        } else {
            dir.join("model.safetensors")
        };
        let store = TensorStore::read(&weights)?;
        model.load_store(&store)?;
        Ok(model)
    }

    /// Loads weights named as HF's `SamModel` or as segment-anything's `Sam` (detected by the
    /// names; see [`official_to_hf_name`]), strictly: every missing, unexpected or misshapen
    /// tensor is reported in one error.
    pub fn load_store(&mut self, store: &TensorStore) -> VisionResult<()> {
        let official = store
            .tensors
            .keys()
            .any(|k| k.starts_with("image_encoder."));
        let renamed;
        let store = if official {
            renamed = rename_official(store, self.config.mask_decoder_config.iou_head_depth);
            // segment-anything's two-way blocks use PyTorch's default LayerNorm epsilon.
            for layer in &mut self.mask_decoder.transformer.layers {
                for norm in [
                    &mut layer.layer_norm1,
                    &mut layer.layer_norm2,
                    &mut layer.layer_norm3,
                    &mut layer.layer_norm4,
                ] {
                    norm.eps = 1e-5;
                }
            }
            &renamed
        } else {
            store
        };
        let options = LoadOptions {
            // HF ties this to `shared_image_embedding.positional_embedding`.
            ignore_unexpected: vec!["prompt_encoder.shared_embedding.positional_embedding".into()],
            allow_missing: false,
        };
        load_params(self, store, "", &options)?;
        Ok(())
    }

    /// `get_image_embeddings`: `pixel_values` `[B, 3, S, S]` -> `[B, h*w, C]` tokens.
    pub fn image_embeddings<T: Tape<f32, D>>(
        &self,
        pixel_values: Images<D, T>,
    ) -> FeatureMap<C, D, T> {
        self.vision_encoder.forward(pixel_values)
    }

    /// [`Self::image_embeddings`] for user input: `pixel_values` must be `[B, 3, S, S]` with
    /// `B >= 1` and `S` the config's `image_size` (as HF's `SamPatchEmbeddings` requires), else
    /// an error naming the expected and the actual shape.
    pub fn try_image_embeddings(&self, pixel_values: Images<D>) -> VisionResult<FeatureMap<C, D>> {
        self.check_pixel_values(&pixel_values)?;
        Ok(self.image_embeddings(pixel_values))
    }

    /// The check of [`Self::try_image_embeddings`].
    pub fn check_pixel_values<T: Tape<f32, D>>(
        &self,
        pixel_values: &Images<D, T>,
    ) -> VisionResult<()> {
        let (b, c, h, w) = *pixel_values.shape();
        let v = &self.vision_encoder.config;
        check_images("pixel_values", &[b, c, h, w], v.num_channels, v.image_size)
    }

    /// `get_image_wide_positional_embeddings` as tokens `[1, h*w, C]`.
    pub fn image_pe(&self) -> Seq<C, D> {
        self.prompt_encoder.dense_pe()
    }

    /// Sparse prompt tokens `[B * P, n, C]` from HF-style prompts.
    pub fn embed_prompts<T: Tape<f32, D>>(
        &self,
        prompts: &SamPrompts,
    ) -> VisionResult<Seq<C, D, T>> {
        let bp = prompts.batch * prompts.prompts;
        let points = match &prompts.points {
            Some((coords, labels)) => {
                if labels.len() % bp.max(1) != 0 || coords.len() != 2 * labels.len() {
                    return Err(VisionError::Input(format!(
                        "{} point coordinates and {} labels do not fit {} images x {} prompts",
                        coords.len(),
                        labels.len(),
                        prompts.batch,
                        prompts.prompts
                    )));
                }
                Some(self.prompt_encoder.embed_points::<T>(
                    coords,
                    labels,
                    bp,
                    prompts.boxes.is_none(),
                ))
            }
            None => None,
        };
        let boxes = match &prompts.boxes {
            Some(b) => {
                if b.len() != 4 * bp {
                    return Err(VisionError::Input(format!(
                        "{} box values do not fit {} images x {} prompts x 4",
                        b.len(),
                        prompts.batch,
                        prompts.prompts
                    )));
                }
                Some(self.prompt_encoder.embed_boxes::<T>(b, bp))
            }
            None => None,
        };
        match (points, boxes) {
            (Some(p), Some(b)) => Ok((p, b).concat_along(Axis::<1>)),
            (Some(p), None) => Ok(p),
            (None, Some(b)) => Ok(b),
            (None, None) => Err(VisionError::Input(
                "give points or boxes to prompt SAM".into(),
            )),
        }
    }

    /// Masks for precomputed image embeddings (`[B, h*w, C]`) and prompts.
    pub fn predict_from_embeddings<T: Tape<f32, D>>(
        &self,
        image_embeddings: FeatureMap<C, D, T>,
        prompts: &SamPrompts,
        multimask: bool,
    ) -> VisionResult<MaskPrediction<D, T>> {
        let sparse = self.embed_prompts::<T>(prompts)?;
        let batch = image_embeddings.batch();
        let dense = match &prompts.masks {
            None => self.prompt_encoder.dense_without_mask::<T>(batch),
            Some(masks) => {
                let side = 4 * self.prompt_encoder.image_embedding_size;
                if masks.len() != batch * side * side {
                    return Err(VisionError::Input(format!(
                        "input_masks has {} values, expected {batch} x 1 x {side} x {side}",
                        masks.len()
                    )));
                }
                let dev = self.prompt_encoder.no_mask_embed.device().clone();
                let masks: Images<D> = dev.tensor_from_vec(masks.clone(), (batch, 1, side, side));
                self.prompt_encoder.dense_from_masks(masks.retaped::<T>())
            }
        };
        let pe = self.image_pe();
        Ok(self
            .mask_decoder
            .forward(image_embeddings, &pe, sparse, dense, multimask))
    }

    /// HF `SamModel.forward` on `pixel_values` (`pred_masks` low-res, `iou_scores`);
    /// `pixel_values` is checked as in [`Self::try_image_embeddings`].
    pub fn predict(
        &self,
        pixel_values: Images<D>,
        prompts: &SamPrompts,
        multimask: bool,
    ) -> VisionResult<MaskPrediction<D>> {
        let embeddings = self.try_image_embeddings(pixel_values)?;
        self.predict_from_embeddings(embeddings, prompts, multimask)
    }
}

impl<H: ConstDim, C: ConstDim, D: Device<f32>> Params<D> for SamModel<H, C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        Encoders {
            vision: &mut self.vision_encoder,
            prompt: &mut self.prompt_encoder,
        }
        .visit_params(prefix, v)?;
        self.mask_decoder
            .visit_params(&join(prefix, "mask_decoder"), v)
    }
}

/// SAM's image encoder and prompt encoder under the names of a whole SAM's checkpoint
/// ([`SamModel`]'s), without its mask decoder.
struct Encoders<'a, H: ConstDim, O: ConstDim, C: ConstDim, D: Device<f32>> {
    vision: &'a mut SamImageEncoder<H, O, D>,
    prompt: &'a mut SamPromptEncoder<C, D>,
}

impl<H: ConstDim, O: ConstDim, C: ConstDim, D: Device<f32>> Params<D> for Encoders<'_, H, O, C, D> {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor<D>) -> Result<()> {
        v.visit(
            &join(prefix, "shared_image_embedding.positional_embedding"),
            &mut self.prompt.shared_embedding.gaussian_matrix,
        )?;
        self.vision
            .visit_params(&join(prefix, "vision_encoder"), v)?;
        self.prompt
            .visit_own_params(&join(prefix, "prompt_encoder"), v)
    }
}

/// Loads SAM's image encoder and prompt encoder from a whole SAM's checkpoint (HF `SamModel`
/// names, or segment-anything's, told apart as [`SamModel::load_store`] does), strictly for
/// those two: every missing, unexpected or misshapen tensor of theirs is reported in one error.
/// The mask decoder's tensors are not read; their names are returned, sorted. (In SAM the
/// encoder's output width `O` is the prompt width `C`; the types may differ, the shapes are
/// checked.)
pub fn load_encoders<H: ConstDim, O: ConstDim, C: ConstDim, D: Device<f32>>(
    vision: &mut SamImageEncoder<H, O, D>,
    prompt: &mut SamPromptEncoder<C, D>,
    store: &TensorStore,
) -> VisionResult<Vec<String>> {
    let official = store
        .tensors
        .keys()
        .any(|k| k.starts_with("image_encoder."));
    let renamed;
    let store = if official {
        // The IoU head's depth only renames mask-decoder tensors, which are not read.
        renamed = rename_official(store, SamMaskDecoderConfig::default().iou_head_depth);
        &renamed
    } else {
        store
    };
    let decoder = "mask_decoder.";
    let options = LoadOptions {
        ignore_unexpected: vec![
            format!("{decoder}*"),
            "prompt_encoder.shared_embedding.positional_embedding".into(),
        ],
        allow_missing: false,
    };
    load_params(&mut Encoders { vision, prompt }, store, "", &options)?;
    Ok(store
        .tensors
        .keys()
        .filter(|k| k.starts_with(decoder))
        .cloned()
        .collect())
}

/// Maps a segment-anything `Sam` state-dict name to HF `SamModel`'s (`None`: no counterpart).
/// `mlp_depth` is the IoU head's depth (the hypernetwork MLPs have depth 3).
pub fn official_to_hf_name(name: &str, iou_head_depth: usize) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let rest = |i: usize| parts[i..].join(".");
    let out = match parts.as_slice() {
        ["image_encoder", "patch_embed", "proj", ..] => {
            format!("vision_encoder.patch_embed.projection.{}", rest(3))
        }
        ["image_encoder", "pos_embed"] => "vision_encoder.pos_embed".into(),
        ["image_encoder", "blocks", i, "norm1", ..] => {
            format!("vision_encoder.layers.{i}.layer_norm1.{}", rest(4))
        }
        ["image_encoder", "blocks", i, "norm2", ..] => {
            format!("vision_encoder.layers.{i}.layer_norm2.{}", rest(4))
        }
        ["image_encoder", "blocks", i, ..] => format!("vision_encoder.layers.{i}.{}", rest(3)),
        ["image_encoder", "neck", n, ..] => {
            let layer = match *n {
                "0" => "conv1",
                "1" => "layer_norm1",
                "2" => "conv2",
                "3" => "layer_norm2",
                _ => return None,
            };
            format!("vision_encoder.neck.{layer}.{}", rest(3))
        }
        ["prompt_encoder", "pe_layer", "positional_encoding_gaussian_matrix"] => {
            "shared_image_embedding.positional_embedding".into()
        }
        ["prompt_encoder", "point_embeddings", i, ..] => {
            format!("prompt_encoder.point_embed.{i}.{}", rest(3))
        }
        ["prompt_encoder", "mask_downscaling", n, ..] => {
            let layer = match *n {
                "0" => "conv1",
                "1" => "layer_norm1",
                "3" => "conv2",
                "4" => "layer_norm2",
                "6" => "conv3",
                _ => return None,
            };
            format!("prompt_encoder.mask_embed.{layer}.{}", rest(3))
        }
        ["prompt_encoder", ..] => name.to_string(),
        ["mask_decoder", "transformer", "layers", i, norm, ..] if norm.starts_with("norm") => {
            format!(
                "mask_decoder.transformer.layers.{i}.layer_{norm}.{}",
                rest(5)
            )
        }
        ["mask_decoder", "transformer", "norm_final_attn", ..] => {
            format!("mask_decoder.transformer.layer_norm_final_attn.{}", rest(3))
        }
        ["mask_decoder", "output_upscaling", n, ..] => {
            let layer = match *n {
                "0" => "upscale_conv1",
                "1" => "upscale_layer_norm",
                "3" => "upscale_conv2",
                _ => return None,
            };
            format!("mask_decoder.{layer}.{}", rest(3))
        }
        ["mask_decoder", "output_hypernetworks_mlps", m, "layers", i, ..] => {
            format!(
                "mask_decoder.output_hypernetworks_mlps.{m}.{}.{}",
                mlp_layer(i, 3)?,
                rest(5)
            )
        }
        ["mask_decoder", "iou_prediction_head", "layers", i, ..] => {
            format!(
                "mask_decoder.iou_prediction_head.{}.{}",
                mlp_layer(i, iou_head_depth)?,
                rest(4)
            )
        }
        ["mask_decoder", ..] => name.to_string(),
        _ => return None,
    };
    Some(out)
}

/// Official `MLP.layers.i` -> HF `proj_in` / `layers.{i-1}` / `proj_out`.
fn mlp_layer(i: &str, depth: usize) -> Option<String> {
    let i: usize = i.parse().ok()?;
    Some(if i == 0 {
        "proj_in".into()
    } else if i + 1 == depth {
        "proj_out".into()
    } else {
        format!("layers.{}", i - 1)
    })
}

fn rename_official(store: &TensorStore, iou_head_depth: usize) -> TensorStore {
    let mut out = TensorStore {
        metadata: store.metadata.clone(),
        origin: store.origin.clone(),
        ..Default::default()
    };
    for (name, tensor) in &store.tensors {
        // Unmapped names stay as they are, so the strict loader reports them as unexpected.
        let new = official_to_hf_name(name, iou_head_depth).unwrap_or_else(|| name.clone());
        out.insert(new, StoredTensor::clone(tensor));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_names_map_to_hf_names() {
        let cases = [
            (
                "image_encoder.patch_embed.proj.weight",
                "vision_encoder.patch_embed.projection.weight",
            ),
            (
                "image_encoder.blocks.3.norm1.bias",
                "vision_encoder.layers.3.layer_norm1.bias",
            ),
            (
                "image_encoder.blocks.3.attn.rel_pos_h",
                "vision_encoder.layers.3.attn.rel_pos_h",
            ),
            (
                "image_encoder.neck.2.weight",
                "vision_encoder.neck.conv2.weight",
            ),
            (
                "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                "shared_image_embedding.positional_embedding",
            ),
            (
                "prompt_encoder.mask_downscaling.6.bias",
                "prompt_encoder.mask_embed.conv3.bias",
            ),
            (
                "mask_decoder.transformer.layers.1.norm4.weight",
                "mask_decoder.transformer.layers.1.layer_norm4.weight",
            ),
            (
                "mask_decoder.transformer.norm_final_attn.bias",
                "mask_decoder.transformer.layer_norm_final_attn.bias",
            ),
            (
                "mask_decoder.output_hypernetworks_mlps.2.layers.1.weight",
                "mask_decoder.output_hypernetworks_mlps.2.layers.0.weight",
            ),
            (
                "mask_decoder.iou_prediction_head.layers.2.bias",
                "mask_decoder.iou_prediction_head.proj_out.bias",
            ),
            (
                "mask_decoder.output_upscaling.1.weight",
                "mask_decoder.upscale_layer_norm.weight",
            ),
        ];
        for (official, hf) in cases {
            assert_eq!(
                official_to_hf_name(official, 3).as_deref(),
                Some(hf),
                "{official}"
            );
        }
    }
}
