//! Output heads: what PixelLLM reads off its decoder features (and the image) besides the next
//! word, as plug-ins chosen by configuration.
//!
//! A head is one type implementing [`OutputHead`] plus one name in a [`HeadRegistry`]; the
//! model's `[[model.heads]]` list picks heads by that name, and each head checks its own keys.
//! The model runs every head on the same decoder features, adds their weighted losses to the text
//! loss, and hands evaluation what each head read (`docs/HEADS.md` walks through a new head).
//!
//! A head extends the contract without an edit here: its loss comes in named parts
//! ([`HeadLossPart`]), its prediction carries a value of its own type ([`HeadExtra`], read back
//! with [`HeadPrediction::extra`]), and it scores its predictions with its own metrics
//! ([`OutputHead::metrics`]).
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
/// What a head's loss parts hold; re-exported so a head needs no dependency on the trainer.
pub use pixel_train::TapedScalar;
use pixel_vision::{FeatureMap, SamPromptEncoder};
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

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
    /// What the head reads that the fields above cannot hold, in a type of its own (the
    /// example's circle head: a centre and a radius per token); see [`HeadExtra`].
    extra: Option<Arc<dyn HeadExtra>>,
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
            extra: None,
        }
    }

    /// Keeps `value` as the head's own output, replacing any earlier one.
    pub fn set_extra(&mut self, value: impl HeadExtra) {
        self.extra = Some(Arc::new(value));
    }

    /// The head's own output, when it is a `T` (`None` without one, or when it has another
    /// type).
    pub fn extra<T: Any>(&self) -> Option<&T> {
        let extra: &dyn HeadExtra = self.extra.as_deref()?;
        extra.as_any().downcast_ref()
    }
}

/// A head's own kind of output, kept in [`HeadPrediction`] next to the fields every head shares.
///
/// A keyed extension rather than an associated type: the model holds `Box<dyn OutputHead>` of
/// types it never saw and hands their predictions on as one type, so the value travels as
/// `dyn HeadExtra` and its head reads it back by type ([`HeadPrediction::extra`]). Any
/// `Debug + PartialEq + Send + Sync + 'static` type is one (a blanket impl): predictions
/// compare by value (two extras of different types are unequal) and print what they hold.
pub trait HeadExtra: Any + Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;

    /// Equal to `other` when `other` is a `Self` equal to this one.
    fn equals(&self, other: &dyn HeadExtra) -> bool;
}

impl<T: Any + Debug + PartialEq + Send + Sync> HeadExtra for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn equals(&self, other: &dyn HeadExtra) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

impl PartialEq for dyn HeadExtra {
    fn eq(&self, other: &Self) -> bool {
        self.equals(other)
    }
}

/// One named part of a head's training loss, on the training tape.
///
/// The model logs each part on its own, unweighted and weighted, as `<head>/<name>`; a part
/// with an empty name (from [`HeadLossPart::whole`]: a loss without parts) as `<head>`. The
/// part enters the total loss as `weight` x the head's config `weight` x the auxiliary ramp.
pub struct HeadLossPart<D: Device<f32>> {
    pub name: String,
    pub loss: TapedScalar<D>,
    /// The part's factor within the head's loss (1 unless the head weighs its parts itself).
    pub weight: f32,
}

impl<D: Device<f32>> HeadLossPart<D> {
    /// The head's whole loss, logged under the head's name.
    pub fn whole(loss: TapedScalar<D>) -> Self {
        HeadLossPart::named("", loss, 1.0)
    }

    /// A part logged as `<head>/<name>`, entering the head's loss times `weight`.
    pub fn named(name: impl Into<String>, loss: TapedScalar<D>, weight: f32) -> Self {
        HeadLossPart {
            name: name.into(),
            loss,
            weight,
        }
    }

    /// The part's name in the training log, for the head named `head`.
    pub fn logged_name(&self, head: &str) -> String {
        if self.name.is_empty() {
            head.to_string()
        } else {
            format!("{head}/{}", self.name)
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

    /// The training loss on the training tape as named parts (one [`HeadLossPart::whole`]
    /// when it has no parts), or none when the batch gives the head nothing to learn (no
    /// supervised location; text heads, which the text loss trains). Names are unique within
    /// the head, and a head names the same parts in every batch that has them.
    fn loss(&self, inputs: &HeadInputs<P, D>) -> Result<Vec<HeadLossPart<D>>>;

    /// What the head reads off each example of the batch. `earlier` holds the predictions of
    /// the heads configured before this one, `[head][example]` (a mask head reads its box
    /// prompt there).
    fn decode(
        &self,
        inputs: &HeadInputs<P, D>,
        tokens: &DecodedTokens,
        earlier: &[Vec<HeadPrediction>],
    ) -> Result<Vec<HeadPrediction>>;

    /// The head's own metrics, by name, over the evaluation's `examples` and what this head
    /// read off each (`predictions[i]` is example `i`'s); evaluation reports them as
    /// `heads.<name>.<metric>`. Values are finite; a metric with nothing to score is left
    /// out. None by default.
    fn metrics(
        &self,
        _examples: &[Example],
        _predictions: &[HeadPrediction],
    ) -> Result<BTreeMap<String, f64>> {
        Ok(BTreeMap::new())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Radius(f32);

    #[test]
    fn an_extra_reads_back_by_its_type_and_compares_by_value() {
        let mut a = HeadPrediction::empty("circle", Reads::DecoderFeatures, 2);
        assert_eq!(a.extra::<Radius>(), None);
        a.set_extra(Radius(0.5));
        assert_eq!(a.extra::<Radius>(), Some(&Radius(0.5)));
        assert_eq!(a.extra::<f32>(), None, "another type reads as none");
        let mut b = HeadPrediction::empty("circle", Reads::DecoderFeatures, 2);
        b.set_extra(Radius(0.5));
        assert_eq!(a, b, "equal values in separate allocations");
        b.set_extra(Radius(0.25));
        assert_ne!(a, b);
        b.set_extra(0.5f32);
        assert_ne!(a, b, "a value of another type");
        assert_ne!(
            a,
            HeadPrediction::empty("circle", Reads::DecoderFeatures, 2)
        );
        assert!(format!("{a:?}").contains("Radius(0.5)"), "{a:?}");
    }
}
