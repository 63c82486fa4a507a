//! Output heads: what PixelLLM reads off its decoder features (and the image) besides the next
//! word, as plug-ins chosen by configuration.
//!
//! A head is one type implementing [`OutputHead`] plus one name in a [`HeadRegistry`]; the
//! model's `[[model.heads]]` list picks heads by that name, and each head checks its own keys.
//! The model runs every head on the same decoder features, adds their weighted losses to the text
//! loss, and hands evaluation what each head read (`docs/HEADS.md` walks through a new head).
//!
//! Built in: `point` (the paper's), `box`, `bins` and `string` (coordinates written as text, the
//! paper's baselines), `mask` (SAM's mask decoder prompted by another head's box) and
//! `detection` (scored proposals from the image features).
pub mod boxes;
pub mod config;
pub mod detection;
pub mod mask;
pub mod point;
pub mod referring_box;
pub mod registry;
pub mod text;

pub use config::{options, HeadBuild, HeadConfig, HeadConstructor, HeadTable};
pub use detection::DetectionHead;
pub use mask::MaskHead;
pub use point::{box_from_token_points, CornerHead, CornerKind};
pub use registry::HeadRegistry;
pub use text::{BinCodec, StringCodec, TextHead};

use crate::error::Result;
use crate::presets::LmWidth;
use crate::presets::PixelDims;
/// A detection proposal; defined with the tasks that prompt with it.
pub use crate::tasks::Scored;
use crate::tasks::{Batch, Example};
use crate::vocab::VocabMap;
use dfdx::prelude::*;
use image::GrayImage;
use pixel_core::geometry::BoxXyxy;
use pixel_core::nn::Seq;
use pixel_core::params::Params;
/// What a head's loss returns; re-exported so a head needs no dependency on the trainer.
pub use pixel_train::TapedScalar;
use pixel_vision::{FeatureMap, SamPromptEncoder};

/// Where a head's locations come from; evaluation reads each kind its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Regressed from every token's decoder features (point, box): read teacher-forced.
    DecoderFeatures,
    /// Written into the target text (bin tokens, strings): read from generated text.
    Text,
    /// From the image, not per token (masks, detection proposals).
    Image,
}

impl Reads {
    /// Whether the head gives a location per token and a box per example (what the referring
    /// and trace metrics score).
    pub fn locates_tokens(self) -> bool {
        matches!(self, Reads::DecoderFeatures | Reads::Text)
    }
}

/// What the model hands every head, all without a tape. A head that learns puts the training
/// tape on what it reads (`inputs.decoder.retaped::<OwnedTape<f32, D>>()`): the copy keeps the
/// tensor's id, so its gradient joins the model's backward pass.
pub struct HeadInputs<'a, P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> {
    /// `[B, T, d_model]`: position `i` reads decoder input `i` (the start token at 0).
    pub decoder: &'a Seq<LmWidth<P>, D>,
    /// `[B, h*w, Visual]`: the image encoder's features (SAM + EVA02) on SAM's grid.
    pub image: &'a FeatureMap<P::Visual, D>,
    /// The location prompt encoder (a mask head embeds its box prompt with it).
    pub prompt_encoder: &'a SamPromptEncoder<P::Prompt, D>,
    pub batch: &'a Batch,
    /// T5 ids <-> model ids.
    pub vocab: &'a VocabMap,
}

/// The tokens a prediction is read from.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedTokens {
    pub mode: DecodeMode,
    /// `[B][T]` model ids: what the decoder says at each position (teacher forcing: the argmax
    /// after reading the true prefix; generation: the generated token).
    pub said: Vec<Vec<usize>>,
    /// `[B][T]`: positions whose location counts (teacher forcing: supervised tokens;
    /// generation: positions that read a generated token before EOS).
    pub valid: Vec<Vec<bool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeMode {
    /// The decoder read the batch's targets; `said` is its argmax at every position.
    TeacherForced,
    /// The decoder read its own generated text (position `i` reads `said[i - 1]`).
    Generated,
}

/// What one head read off one example.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadPrediction {
    /// The head's name.
    pub head: String,
    pub reads: Reads,
    /// At each decoder position, `(x0, y0, x1, y1)` of the token read there: two points for
    /// the point head, a box's corners otherwise; `None` where the head says nothing.
    pub tokens: Vec<Option<[f32; 4]>>,
    /// The head's one box for the example: what a referring expression points at.
    pub object: Option<BoxXyxy>,
    /// A binary mask at the model's input resolution (255 inside).
    pub mask: Option<GrayImage>,
    /// Scored boxes, best first (detection).
    pub proposals: Vec<Scored>,
}

impl HeadPrediction {
    /// A prediction with nothing in it, to fill in.
    pub fn empty(head: &str, reads: Reads, positions: usize) -> Self {
        HeadPrediction {
            head: head.to_string(),
            reads,
            tokens: vec![None; positions],
            object: None,
            mask: None,
            proposals: Vec::new(),
        }
    }
}

/// An output head of a PixelLLM with preset `P`.
///
/// Object-safe, so a model holds `Box<dyn OutputHead<P, D>>` of types it never saw; generic over
/// the preset because a head's layers take their widths from it (`LmWidth<P>`,
/// `P::PointHidden`, `P::Visual`). Its tensors are named `heads.<name>.*` through [`Params`].
pub trait OutputHead<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe>:
    Params<D> + std::fmt::Debug + pixel_core::ThreadSafe
{
    /// The name from the config (`name`, else `kind`): names its tensors, loss and predictions.
    fn name(&self) -> &str;

    fn reads(&self) -> Reads;

    /// Words whose T5 pieces this head writes into target text (bin tokens, digits); a
    /// sub-vocabulary preset includes them.
    fn vocabulary(&self) -> Vec<String> {
        Vec::new()
    }

    /// This head's targets in an example: a text head writes locations into the target text,
    /// a regression head reads the example's token boxes as they are.
    fn prepare(&self, example: Example, _vocab: &VocabMap) -> Result<Example> {
        Ok(example)
    }

    /// The unweighted training loss on the training tape, or `None` when the batch gives the
    /// head nothing to learn (no supervised location; text heads, which the text loss trains).
    fn loss(&self, inputs: &HeadInputs<P, D>) -> Result<Option<TapedScalar<D>>>;

    /// What the head reads off each example of the batch. `earlier` holds the predictions of
    /// the heads configured before this one, `[head][example]` (a mask head reads its box
    /// prompt there).
    fn decode(
        &self,
        inputs: &HeadInputs<P, D>,
        tokens: &DecodedTokens,
        earlier: &[Vec<HeadPrediction>],
    ) -> Result<Vec<HeadPrediction>>;
}

/// `[B * T * 4]` per-position values as one `[f32; 4]` per position of row `b`.
pub fn rows_of_four(values: &[f32], b: usize, positions: usize) -> Vec<Option<[f32; 4]>> {
    (0..positions)
        .map(|i| {
            let at = (b * positions + i) * 4;
            Some([values[at], values[at + 1], values[at + 2], values[at + 3]])
        })
        .collect()
}

/// The L1 location loss as scenic's `point_loss`: absolute coordinates in pixels of the model
/// input, over the positions whose token has a box. `None` when no position has one.
pub fn pixel_l1<D: Device<f32> + pixel_core::ThreadSafe>(
    corners: Seq<Const<4>, D, OwnedTape<f32, D>>,
    batch: &Batch,
) -> Result<Option<TapedScalar<D>>> {
    pixel_l1_weighted(corners, batch, &batch.location_weights)
}

/// [`pixel_l1`] with `weights` `[B * T * 4]` in place of the batch's location weights.
pub fn pixel_l1_weighted<D: Device<f32> + pixel_core::ThreadSafe>(
    corners: Seq<Const<4>, D, OwnedTape<f32, D>>,
    batch: &Batch,
    weights: &[f32],
) -> Result<Option<TapedScalar<D>>> {
    if weights.iter().all(|&w| w == 0.0) {
        return Ok(None);
    }
    let side = batch.image_size as f32;
    let targets: Vec<f32> = batch.location_targets.iter().map(|v| v * side).collect();
    Ok(Some(pixel_core::loss::masked_l1(
        corners * side,
        &targets,
        weights,
    )?))
}
