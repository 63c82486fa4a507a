//! PixelLLM (Xu et al., CVPR 2024) assembled from its parts, in the order of the paper's figure:
//!
//! 1. image encoder: frozen SAM + trainable EVA02, features concatenated on channels;
//! 2. location prompt encoder: SAM's prompt encoder on the prompt box (whole image if none);
//! 3. prompt feature extractor: learnable output tokens through SAM's two-way transformer,
//!    then the visual projection to the LM's width where the preset has one;
//! 4. language model: T5 whose encoder reads the visual tokens, then the text prompt;
//! 5. output heads: the vocabulary head and, on the same decoder features, the configured heads
//!    (`crate::heads`; the paper's is the point head).
pub mod checkpoints;
pub mod config;
pub mod layout;
pub mod prompt_feature_extractor;
pub mod visual_projection;

pub use crate::presets::{PixelDims, PixelLlmBase, PixelLlmPaper, PixelLlmTest, PixelTiny};
pub use crate::vocab::VocabMap;
pub use checkpoints::LoadReport;
pub use config::{ComponentCheckpoints, LmConfig, LmMode, ModelConfig};
pub use layout::{parameter_list, parameters_by_part, PartCount};
pub use prompt_feature_extractor::{PromptFeatureExtractor, PromptFuse, TwoWayShape};
pub use visual_projection::VisualProjection;

use crate::error::{ModelError, Result};
use crate::eval::{Generated, HeadMetrics, Predictor, TeacherForced};
use crate::heads::{
    DecodeMode, DecodedTokens, HeadInputs, HeadPrediction, HeadRegistry, OutputHead, Reads,
};
use crate::presets::{LmVocab, LmWidth};
use crate::tasks::{Batch, Example};
use dfdx::prelude::*;
use pixel_core::geometry::BoxXyxy;
use pixel_core::loss::label_smoothed_cross_entropy;
use pixel_core::nn::{record_attention, sincos_2d, AttentionMap, Seq};
use pixel_core::params::{count_params, join, list_params, ParamVisitor, Params, Trainable};
use pixel_lm::generate::GenerateOptions;
use pixel_lm::t5::T5;
use pixel_lm::tokenizer::{T5Tokenizer, EOS_ID, PAD_ID};
use pixel_train::{LossPart, LossParts, TapedScalar, TrainStep};
use pixel_vision::preprocess::{Normalization, CLIP_NORMALIZATION, SAM_NORMALIZATION};
use pixel_vision::{DualImageEncoder, FeatureMap, Images, SamPromptEncoder};
use std::sync::Arc;

type Lm<P> = <P as PixelDims>::Lm;

/// A PixelLLM with the widths of preset `P`.
#[derive(Debug)]
pub struct PixelLlm<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> {
    pub image_encoder: DualImageEncoder<P::SamHidden, P::SamOut, P::Eva, P::Visual, D>,
    pub prompt_encoder: SamPromptEncoder<P::Prompt, D>,
    pub prompt_feature_extractor:
        PromptFeatureExtractor<P::Visual, P::Prompt, P::Adapter, P::AdapterOut, D>,
    /// The extractor's output width -> the LM's, when the two differ.
    pub visual_projection: Option<VisualProjection<P::AdapterOut, LmWidth<P>, D>>,
    pub language_model: T5<Lm<P>, D>,
    /// `[visual tokens, d_model]` added to the visual tokens before T5
    /// (`model.visual_position_std` > 0).
    pub visual_positions: Option<Tensor<(usize, LmWidth<P>), f32, D>>,
    /// The configured output heads, in config order; tensors under `heads.<name>.`.
    pub heads: Vec<Box<dyn OutputHead<P, D>>>,
    pub config: ModelConfig,
    pub vocab: VocabMap,
    /// Multiplies every head's loss weight in training (`TrainConfig::aux_loss_warmup_steps`).
    aux_loss_scale: f32,
    /// The image encoder runs without a tape (`TrainConfig::freeze_image_encoder_from_step`).
    image_encoder_frozen: bool,
    dev: D,
}

/// The preset `pixel demo` trains.
pub type TinyPixelLlm = PixelLlm<PixelTiny, pixel_core::DefaultDevice>;

/// The encoder side of a forward pass.
struct Encoded<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe, T> {
    /// Image features without a tape, for the heads.
    image: FeatureMap<P::Visual, D>,
    /// The T5 encoder's output over the visual tokens and the text prompt.
    hidden: Seq<LmWidth<P>, D, T>,
    /// `[B * (N + S)]`, true for a real token.
    mask: Vec<bool>,
}

/// Everything a forward pass computes that a loss or a prediction reads.
struct Outputs<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe, T> {
    logits: Seq<LmVocab<P>, D, T>,
    /// Decoder features without a tape (same tensor ids as on the logits' tape), for the heads.
    decoder: Seq<LmWidth<P>, D>,
    /// Image features without a tape, for the heads.
    image: FeatureMap<P::Visual, D>,
    /// The T5 encoder's output, for generation (no tape: its ops are on the logits' tape).
    encoder_states: Seq<LmWidth<P>, D>,
}

/// The run-time configs of the three pretrained components: the preset's own
/// ([`Components::of`]), or fewer blocks of them to list the parameters of a large model
/// (`layout`).
#[derive(Debug, Clone)]
pub(crate) struct Components {
    pub sam: pixel_vision::sam::SamVisionConfig,
    pub eva: pixel_vision::Eva02Config,
    pub lm: pixel_lm::config::T5Config,
}

impl Components {
    pub fn of<P: PixelDims>() -> Self {
        Components {
            sam: P::sam(),
            eva: P::eva(),
            lm: P::language_model(),
        }
    }
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> PixelLlm<P, D> {
    /// A randomly initialised model on `dev` whose heads `registry` builds from `config.heads`.
    /// A sub-vocabulary preset's vocabulary holds its corpus's pieces and what the heads write.
    pub fn new(dev: &D, config: &ModelConfig, registry: &HeadRegistry<P, D>) -> Result<Self> {
        Self::with_components(dev, config, registry, &Components::of::<P>())
    }

    /// [`Self::new`] with the components' configs given (the preset's widths, any depth).
    pub(crate) fn with_components(
        dev: &D,
        config: &ModelConfig,
        registry: &HeadRegistry<P, D>,
        components: &Components,
    ) -> Result<Self> {
        config.validate()?;
        if config.preset != P::NAME {
            return Err(ModelError::Invalid(format!(
                "model.preset is `{}` but this model is `{}`",
                config.preset,
                P::NAME
            )));
        }
        let tokenizer =
            Arc::new(T5Tokenizer::bundled().map_err(|e| ModelError::Invalid(e.to_string()))?);
        let image_grid = P::prompt_encoder().image_embedding_size();
        let heads = registry.build(dev, &config.heads, Some(image_grid), tokenizer.clone())?;
        let vocab = Self::vocabulary(&tokenizer, &heads)?;
        let vision =
            |e: pixel_vision::VisionError| ModelError::Invalid(format!("image encoder: {e}"));
        let mut language_model = T5::new(dev, &components.lm)
            .map_err(|e| ModelError::Invalid(format!("language model: {e}")))?;
        if config.lm.mode == LmMode::Lora {
            language_model.add_lora(dev, config.lm.lora_rank, config.lm.lora_scale);
        }
        // Each part moves its frozen weights to the host as soon as it is built, so that the
        // f32 copies of only one part exist at a time.
        Self::keep_frozen_on_host(&mut language_model, "language_model", config)?;
        let mut image_encoder =
            DualImageEncoder::new(dev, &components.sam, &components.eva).map_err(vision)?;
        Self::keep_frozen_on_host(&mut image_encoder, "image_encoder", config)?;
        let mut model = PixelLlm {
            image_encoder,
            prompt_encoder: SamPromptEncoder::new(dev, &P::prompt_encoder()),
            prompt_feature_extractor: PromptFeatureExtractor::new(
                dev,
                config.output_tokens,
                Self::two_way_shape(config),
                config.prompt_fuse,
            ),
            visual_projection: (P::AdapterOut::SIZE != LmWidth::<P>::SIZE)
                .then(|| VisualProjection::new(dev)),
            language_model,
            visual_positions: None,
            heads,
            config: config.clone(),
            vocab,
            aux_loss_scale: 1.0,
            image_encoder_frozen: false,
            dev: dev.clone(),
        };
        Self::keep_frozen_on_host(&mut model.prompt_encoder, "prompt_encoder", config)?;
        model.init_absolute_positions();
        if config.visual_position_std > 0.0 {
            // Drawn last, so a config without the table initialises everything else the same.
            let tokens = match config.prompt_fuse {
                PromptFuse::Dense => image_grid * image_grid,
                PromptFuse::Sparse => config.output_tokens,
            };
            model.visual_positions = Some(
                dev.sample_normal_like(&(tokens, LmWidth::<P>::default()))
                    * config.visual_position_std,
            );
        }
        Ok(model)
    }

    /// Moves `part`'s frozen linear weights to the host when `model.frozen_dtype` asks for it.
    fn keep_frozen_on_host<M: Params<D>>(
        part: &mut M,
        prefix: &str,
        config: &ModelConfig,
    ) -> Result<()> {
        if let Some(dtype) = config.frozen_dtype {
            pixel_core::params::keep_frozen_on_host(part, prefix, &config.trainable(), dtype)
                .map_err(|e| ModelError::Config {
                    key: "model.frozen_dtype".into(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    fn two_way_shape(config: &ModelConfig) -> TwoWayShape {
        let (heads, mlp_dim, downsample_rate) = P::two_way();
        TwoWayShape {
            depth: config.prompt_feature_extractor_depth,
            heads,
            mlp_dim,
            downsample_rate,
            eps: P::two_way_eps(),
        }
    }

    /// The preset's words plus what each head writes; all of T5 for full-vocabulary presets.
    /// A head whose pieces overflow the preset's vocabulary is named.
    fn vocabulary(
        tokenizer: &T5Tokenizer,
        heads: &[Box<dyn OutputHead<P, D>>],
    ) -> Result<VocabMap> {
        let capacity = LmVocab::<P>::SIZE;
        let Some(words) = P::vocabulary_words() else {
            return Ok(VocabMap::identity(capacity));
        };
        let mut words: Vec<String> = words.into_iter().map(String::from).collect();
        let mut vocab = VocabMap::from_words(tokenizer, &as_strs(&words), capacity)?;
        for (i, head) in heads.iter().enumerate() {
            let extra = head.vocabulary();
            if extra.is_empty() {
                continue;
            }
            words.extend(extra);
            vocab = VocabMap::from_words(tokenizer, &as_strs(&words), capacity).map_err(|e| {
                ModelError::Config {
                    key: format!("model.heads[{i}]"),
                    message: format!("the head's tokens do not fit {}: {e}", P::NAME),
                }
            })?;
        }
        Ok(vocab)
    }

    /// Starts the backbones' absolute position embeddings from 2D sine-cosine tables (MAE's
    /// recipe for ViTs trained from scratch). SAM's reference initialisation is zeros, which a
    /// frozen SAM that was never pretrained would keep, leaving features that cannot tell where
    /// anything is. Loading pretrained weights overwrites these tables.
    fn init_absolute_positions(&mut self) {
        if let Some(pos) = &mut self.image_encoder.sam.pos_embed {
            let (_, h, w, _) = *pos.shape();
            pos.copy_from(&sincos_2d(h, w, P::SamHidden::SIZE));
        }
        let eva = &mut self.image_encoder.eva.pos_embed;
        let grid = ((eva.shape().1 - 1) as f64).sqrt() as usize;
        let mut table = vec![0.0; P::Eva::SIZE];
        table.extend(sincos_2d(grid, grid, P::Eva::SIZE));
        eva.copy_from(&table);
    }

    /// `(all parameters, trainable parameters)`.
    pub fn parameter_counts(&mut self, trainable: &Trainable) -> (usize, usize) {
        let all = count_params(self);
        let train = list_params(self)
            .iter()
            .filter(|p| trainable.is_trainable(&p.name))
            .map(|p| p.numel())
            .sum();
        (all, train)
    }

    /// The head whose locations evaluation scores: the first that locates tokens (the
    /// registry refuses a config without one).
    fn scored_head(&self) -> usize {
        self.heads
            .iter()
            .position(|h| h.reads().locates_tokens())
            .unwrap_or(0)
    }

    /// Each backbone's input: the batch's `[0, 1]` pixels normalized by its mean and std.
    fn pixel_values(&self, batch: &Batch, normalization: &Normalization) -> Images<D> {
        let s = batch.image_size as usize;
        let plane = s * s;
        let mut values = batch.pixels.clone();
        for (i, v) in values.iter_mut().enumerate() {
            let c = (i / plane) % 3;
            *v = (*v * 255.0 - normalization.mean[c]) / normalization.std[c];
        }
        self.dev.tensor_from_vec(values, (batch.size, 3, s, s))
    }

    /// Steps 1-4 of a forward pass: image features and the T5 encoder's states with their mask.
    fn encode<T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        batch: &Batch,
        tape: T,
    ) -> Result<Encoded<P, D, T>> {
        let expected = P::image_size() as u32;
        if batch.image_size != expected {
            return Err(ModelError::Invalid(format!(
                "{} takes {expected} px images, the batch has {} px",
                P::NAME,
                batch.image_size
            )));
        }
        let b = batch.size;
        // 1. Image encoder: EVA02 on the training tape; SAM too unless it is frozen (then
        // without a tape, so its ops are not replayed backwards). Once the whole encoder is
        // frozen, neither is on the tape.
        let sam_pixels = self.pixel_values(batch, &SAM_NORMALIZATION);
        let eva_pixels = self.pixel_values(batch, &CLIP_NORMALIZATION);
        let features = if self.image_encoder_frozen {
            let f = self.image_encoder.forward(sam_pixels, eva_pixels);
            FeatureMap::new(f.tokens.put_tape(tape), f.height, f.width)
        } else if self.config.freeze_sam {
            self.image_encoder
                .forward(sam_pixels, eva_pixels.put_tape(tape))
        } else {
            self.image_encoder
                .forward(sam_pixels.retaped::<T>(), eva_pixels.put_tape(tape))
        };
        let image = FeatureMap::new(
            features.tokens.retaped::<NoneTape>(),
            features.height,
            features.width,
        );
        // 2. Location prompt: the prompt box's corners in the prompt encoder's pixel frame.
        let side = self.prompt_encoder.input_image_size as f32;
        let boxes: Vec<f32> = batch
            .prompt_boxes
            .iter()
            .flat_map(|bx| bx.to_array().map(|v| v * side))
            .collect();
        let sparse = self.prompt_encoder.embed_boxes::<T>(&boxes, b);
        let dense = self.prompt_encoder.dense_without_mask::<T>(b);
        // 3. Prompt feature extractor -> visual tokens in the LM's embedding space.
        let visual = self.prompt_feature_extractor.forward(
            features.tokens,
            &self.prompt_encoder.dense_pe(),
            dense,
            sparse,
        );
        let visual: Seq<LmWidth<P>, D, T> = match &self.visual_projection {
            Some(projection) => projection.forward(visual),
            None => pixel_vision::layers::realize(visual),
        };
        // 4. T5: visual tokens first, then the text prompt.
        let n = visual.shape().1;
        let visual = match &self.visual_positions {
            Some(table) if table.shape().0 != n => {
                return Err(ModelError::Invalid(format!(
                    "model.visual_position_std: the table has {} rows for {n} visual tokens",
                    table.shape().0
                )))
            }
            Some(table) => {
                visual
                    + table
                        .retaped::<T>()
                        .broadcast_like::<_, Axis<0>>(&(b, n, Default::default()))
            }
            None => visual,
        };
        let context = self
            .language_model
            .embed_tokens::<T>(self.language_model.ids(&batch.context_ids, b));
        let encoder_input = (visual, context).concat_along(Axis::<1>);
        let mask = self.encoder_mask(batch, n);
        let hidden = if self.config.visual_relative_bias {
            self.language_model.encode_embeds(encoder_input, &mask)
        } else {
            self.language_model
                .encode_embeds_with_unordered_prefix(encoder_input, &mask, n)
        };
        Ok(Encoded {
            image,
            hidden,
            mask,
        })
    }

    fn forward<T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        batch: &Batch,
        tape: T,
    ) -> Result<Outputs<P, D, T>> {
        let b = batch.size;
        let Encoded {
            image,
            hidden: encoder_hidden,
            mask,
        } = self.encode(batch, tape)?;
        let decoder_ids = self.language_model.ids(&batch.decoder_input_ids, b);
        let encoder_states = encoder_hidden.retaped::<NoneTape>();
        let hidden = self
            .language_model
            .decode(decoder_ids, encoder_hidden, &mask);
        // 5. The vocabulary head here; the output heads read the same decoder features.
        let decoder = hidden.retaped::<NoneTape>();
        let logits = self.language_model.lm_logits(hidden);
        Ok(Outputs {
            logits,
            decoder,
            image,
            encoder_states,
        })
    }

    /// The decoder's cross-attention `[B, heads, target tokens, N + S]` over the encoder tokens
    /// (the visual tokens, then the text prompt), one map per decoder block: what each position
    /// reads, for diagnostics such as `crate::eval_attention`.
    pub fn decoder_cross_attention(&self, batch: &Batch) -> Result<Vec<AttentionMap>> {
        let Encoded { hidden, mask, .. } = self.encode(batch, NoneTape)?;
        let keys = hidden.shape().1;
        let ids = self
            .language_model
            .ids(&batch.decoder_input_ids, batch.size);
        let (_, maps) = record_attention(|| self.language_model.decode(ids, hidden, &mask));
        // Each decoder block attends to the target first, then to the encoder.
        let cross: Vec<AttentionMap> = maps.into_iter().skip(1).step_by(2).collect();
        let blocks = self.language_model.decoder.block.len();
        if cross.len() != blocks || cross.iter().any(|m| m.shape.3 != keys) {
            return Err(ModelError::Invalid(format!(
                "expected {blocks} cross-attention maps over {keys} encoder tokens, recorded {:?}",
                cross.iter().map(|m| m.shape).collect::<Vec<_>>()
            )));
        }
        Ok(cross)
    }

    /// `[B * (N + S)]`: the visual tokens are always real, the text prompt may be padded.
    fn encoder_mask(&self, batch: &Batch, visual_tokens: usize) -> Vec<bool> {
        let s = batch.context_len;
        (0..batch.size)
            .flat_map(|b| {
                std::iter::repeat_n(true, visual_tokens)
                    .chain(batch.context_mask[b * s..(b + 1) * s].iter().copied())
            })
            .collect()
    }

    fn head_inputs<'a>(
        &'a self,
        decoder: &'a Seq<LmWidth<P>, D>,
        image: &'a FeatureMap<P::Visual, D>,
        batch: &'a Batch,
    ) -> HeadInputs<'a, P, D> {
        HeadInputs {
            decoder,
            image,
            prompt_encoder: &self.prompt_encoder,
            batch,
            vocab: &self.vocab,
        }
    }

    /// Every head's predictions, `[example][head]`, heads in config order (each sees the ones
    /// before it).
    fn decode_heads(
        &self,
        inputs: &HeadInputs<P, D>,
        tokens: &DecodedTokens,
    ) -> Result<Vec<Vec<HeadPrediction>>> {
        let mut by_head: Vec<Vec<HeadPrediction>> = Vec::with_capacity(self.heads.len());
        for head in &self.heads {
            let predictions = head.decode(inputs, tokens, &by_head)?;
            if predictions.len() != inputs.batch.size {
                return Err(ModelError::Invalid(format!(
                    "head \"{}\" decoded {} examples of a batch of {}",
                    head.name(),
                    predictions.len(),
                    inputs.batch.size
                )));
            }
            by_head.push(predictions);
        }
        Ok((0..inputs.batch.size)
            .map(|b| by_head.iter().map(|preds| preds[b].clone()).collect())
            .collect())
    }

    /// The scored head's location at each position of one example, the whole image where it
    /// read none (a text head whose output does not parse).
    fn scored_corners(&self, heads: &[HeadPrediction]) -> Vec<[f32; 4]> {
        heads[self.scored_head()]
            .tokens
            .iter()
            .map(|c| c.unwrap_or(BoxXyxy::whole_image().to_array()))
            .collect()
    }
}

fn as_strs(words: &[String]) -> Vec<&str> {
    words.iter().map(String::as_str).collect()
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> TrainStep<D> for PixelLlm<P, D> {
    /// Raw examples: the model's heads turn them into their targets (see [`Predictor::batch`]).
    type Batch = Vec<Example>;

    fn loss(
        &self,
        examples: &Vec<Example>,
        grads: Gradients<f32, D>,
    ) -> pixel_train::Result<(TapedScalar<D>, LossParts)> {
        Ok(self.loss_terms(&self.batch(examples)?, grads)?)
    }

    fn set_aux_loss_scale(&mut self, scale: f32) {
        self.aux_loss_scale = scale;
    }

    fn freeze_image_encoder(&mut self) -> Option<&'static str> {
        self.image_encoder_frozen = true;
        Some("image_encoder.*")
    }

    fn split_batch(examples: &Vec<Example>, shards: usize) -> Option<Vec<Vec<Example>>> {
        pixel_train::split_evenly(examples, shards)
    }
}

/// The name of the vocabulary head's label-smoothed cross-entropy among the loss parts; every
/// other part is named after its head.
pub const TEXT_LOSS: &str = "text";

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> PixelLlm<P, D> {
    /// The training loss of `batch` with its gradient tape (slots from `grads`), and its terms.
    pub fn loss_terms(
        &self,
        batch: &Batch,
        grads: Gradients<f32, D>,
    ) -> Result<(TapedScalar<D>, LossParts)> {
        // The tape starts with the slots allocated for the trainable parameters.
        let start: Tensor<(), f32, D> = self.dev.zeros_like(&());
        let (_, tape) = start.traced(grads).split_tape();
        let out = self.forward(batch, tape)?;
        let text = label_smoothed_cross_entropy(
            out.logits,
            &batch.target_ids,
            &batch.target_weights,
            self.config.label_smoothing,
        )?;
        let mut terms = vec![LossPart::new(TEXT_LOSS, text.as_vec()[0], 1.0)];
        let inputs = self.head_inputs(&out.decoder, &out.image, batch);
        let mut total = text;
        for (head, config) in self.heads.iter().zip(&self.config.heads) {
            for part in head.loss(&inputs)? {
                let name = part.logged_name(head.name());
                if terms.iter().any(|t| t.name == name) {
                    return Err(ModelError::Invalid(format!(
                        "head \"{}\" gives a second loss part logged as `{name}`",
                        head.name()
                    )));
                }
                let weight = config.weight * part.weight * self.aux_loss_scale;
                terms.push(LossPart::new(name, part.loss.as_vec()[0], weight));
                total = total + part.loss * weight;
            }
        }
        Ok((total, terms))
    }

    /// Runs `f` on what the heads read for `batch`, from a forward pass without a tape: to
    /// look at one head's loss parts or predictions alone (the conformance kit does).
    pub fn with_head_inputs<R>(
        &self,
        batch: &Batch,
        f: impl FnOnce(&HeadInputs<P, D>) -> R,
    ) -> Result<R> {
        let out = self.forward(batch, NoneTape)?;
        Ok(f(&self.head_inputs(&out.decoder, &out.image, batch)))
    }
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> Predictor for PixelLlm<P, D> {
    fn batch(&self, examples: &[Example]) -> Result<Batch> {
        let prepared = examples
            .iter()
            .map(|e| {
                self.heads
                    .iter()
                    .try_fold(e.clone(), |e, head| head.prepare(e, &self.vocab))
            })
            .collect::<Result<Vec<_>>>()?;
        Batch::new(&prepared)
    }

    fn reads(&self) -> Reads {
        self.heads[self.scored_head()].reads()
    }

    fn teacher_forced(&self, batch: &Batch) -> Result<TeacherForced> {
        let out = self.forward(batch, NoneTape)?;
        let v = LmVocab::<P>::SIZE;
        let logits = out.logits.as_vec();
        let argmax: Vec<usize> = logits
            .chunks(v)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i)
            })
            .collect();
        let t = batch.target_len;
        let tokens = DecodedTokens {
            mode: DecodeMode::TeacherForced,
            said: argmax.chunks(t).map(<[usize]>::to_vec).collect(),
            valid: batch
                .location_weights
                .chunks(t * 4)
                .map(|row| row.chunks(4).map(|w| w[0] > 0.0).collect())
                .collect(),
        };
        let inputs = self.head_inputs(&out.decoder, &out.image, batch);
        let heads = self.decode_heads(&inputs, &tokens)?;
        let corners = heads
            .iter()
            .flat_map(|h| self.scored_corners(h))
            .flatten()
            .collect();
        Ok(TeacherForced {
            argmax,
            corners,
            heads,
        })
    }

    /// Each head's [`OutputHead::metrics`] on its own predictions; a non-finite value is an
    /// error naming the head and the metric.
    fn head_metrics(
        &self,
        examples: &[Example],
        predictions: &[Vec<HeadPrediction>],
    ) -> Result<HeadMetrics> {
        let mut all = HeadMetrics::new();
        for (i, head) in self.heads.iter().enumerate() {
            let own = predictions
                .iter()
                .map(|p| p.get(i).filter(|p| p.head == head.name()).cloned())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ModelError::Invalid(format!(
                        "metrics: an example has no prediction of head \"{}\"",
                        head.name()
                    ))
                })?;
            let metrics = head.metrics(examples, &own)?;
            if let Some((name, value)) = metrics.iter().find(|(_, v)| !v.is_finite()) {
                return Err(ModelError::Invalid(format!(
                    "head \"{}\": metric `{name}` is {value}",
                    head.name()
                )));
            }
            if !metrics.is_empty() {
                all.insert(head.name().to_string(), metrics);
            }
        }
        Ok(all)
    }

    fn generate(&self, batch: &Batch, max_new_tokens: usize) -> Result<Vec<Generated>> {
        let out = self.forward(batch, NoneTape)?;
        let n = out.encoder_states.shape().1 - batch.context_len;
        let mask = self.encoder_mask(batch, n);
        let generation = self.language_model.generate(
            &out.encoder_states,
            &mask,
            &GenerateOptions {
                max_new_tokens,
                num_beams: 1,
                length_penalty: 1.0,
            },
        );
        // As scenic's inference: the generated text is decoded once more with teacher forcing
        // and each token's location is read where that token is the decoder's input. The
        // locations are never fed back into decoding.
        let len = generation.sequences.first().map_or(0, Vec::len);
        if generation.sequences.iter().any(|s| s.len() != len) {
            return Err(ModelError::Invalid(
                "generated sequences differ in length".into(),
            ));
        }
        let ids: Vec<usize> = generation.sequences.iter().flatten().copied().collect();
        let hidden = self.language_model.decode::<NoneTape>(
            self.language_model.ids(&ids, batch.size),
            out.encoder_states,
            &mask,
        );
        let tokens = DecodedTokens {
            mode: DecodeMode::Generated,
            said: generation
                .sequences
                .iter()
                .map(|s| s[1..].to_vec())
                .collect(),
            valid: generation
                .sequences
                .iter()
                .map(|s| {
                    let end = s[1..]
                        .iter()
                        .position(|&id| id == EOS_ID || id == PAD_ID)
                        .map_or(s.len(), |k| k + 1);
                    (0..s.len()).map(|i| i >= 1 && i < end).collect()
                })
                .collect(),
        };
        let inputs = self.head_inputs(&hidden, &out.image, batch);
        let heads = self.decode_heads(&inputs, &tokens)?;
        Ok(generation
            .sequences
            .iter()
            .zip(heads)
            .map(|(seq, heads)| Generated {
                ids: seq[1..].to_vec(),
                corners: self.scored_corners(&heads)[1..].to_vec(),
                heads,
            })
            .collect())
    }
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> Params<D> for PixelLlm<P, D> {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        self.image_encoder
            .visit_params(&join(prefix, "image_encoder"), v)?;
        self.prompt_encoder
            .visit_params(&join(prefix, "prompt_encoder"), v)?;
        self.prompt_feature_extractor
            .visit_params(&join(prefix, "prompt_feature_extractor"), v)?;
        self.visual_projection
            .visit_params(&join(prefix, "visual_projection"), v)?;
        self.language_model
            .visit_params(&join(prefix, "language_model"), v)?;
        self.visual_positions
            .visit_params(&join(prefix, "visual_position_embedding"), v)?;
        for head in &mut self.heads {
            let name = join(prefix, &format!("heads.{}", head.name()));
            head.visit_params(&name, v)?;
        }
        Ok(())
    }
}

/// The head kinds a `pixel-tiny` model can be built with: the built-in ones
/// ([`HeadRegistry::builtin`]) and whatever a user registers; every runner (demo, eval, ablate,
/// grads) takes one, so a head defined outside this crate runs through all of them.
pub type TinyHeadRegistry = HeadRegistry<PixelTiny, pixel_core::DefaultDevice>;

impl TinyPixelLlm {
    /// The demo's model: `pixel-tiny` on the default device, seeded, with the built-in heads.
    pub fn build(config: &ModelConfig, seed: u64) -> Result<Self> {
        Self::build_with(config, seed, &HeadRegistry::builtin())
    }

    /// As [`TinyPixelLlm::build`], with the head kinds of `registry`.
    pub fn build_with(
        config: &ModelConfig,
        seed: u64,
        registry: &TinyHeadRegistry,
    ) -> Result<Self> {
        let dev = pixel_core::DefaultDevice::seed_from_u64(seed);
        PixelLlm::new(&dev, config, registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task_mix::{evaluation_examples, training_examples, TaskMix};
    use crate::tasks::ExampleBuilder;
    use crate::testing::{demo_section, demo_section_with_heads};
    use pixel_core::optim::alloc_grads;
    use pixel_data::shapes_ln::ShapesLn;
    use pixel_data::shapes_ln::ShapesLnConfig;

    /// The demo's model, data and task mix (`configs/demo.toml`).
    struct Demo {
        model: ModelConfig,
        data: ShapesLnConfig,
        tasks: TaskMix,
    }

    fn demo() -> Demo {
        Demo {
            model: demo_section("model"),
            data: demo_section("data"),
            tasks: demo_section("tasks"),
        }
    }

    /// [`demo`] with `heads` (TOML `[[model.heads]]` tables) in place of its heads.
    fn demo_with_heads(heads: &str) -> Demo {
        Demo {
            model: demo_section_with_heads("model", heads),
            ..demo()
        }
    }

    /// Names of the trainable parameters of `model` that `grads` has no gradient for.
    fn without_gradient(
        model: &mut TinyPixelLlm,
        grads: &Gradients<f32, pixel_core::DefaultDevice>,
        trainable: &Trainable,
    ) -> Vec<String> {
        // The slots are allocated up front, so a parameter whose ops were dropped on the way to
        // the loss (a tape left on an unused output) still has one, all zeros: that is what
        // this looks for. dfdx's `Gradients::get` panics on a missing slot; count that too.
        struct Check<'a>(
            &'a Gradients<f32, pixel_core::DefaultDevice>,
            &'a Trainable,
            Vec<String>,
        );
        impl<'a> ParamVisitor<pixel_core::DefaultDevice> for Check<'a> {
            fn visit(
                &mut self,
                name: &str,
                t: &mut dyn pixel_core::params::ParamTensor<pixel_core::DefaultDevice>,
            ) -> pixel_core::Result<()> {
                if self.1.is_trainable(name) {
                    let g = self.0;
                    let t = &*t;
                    let grad = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.grad(g)));
                    if !grad.is_ok_and(|g| g.iter().any(|&v| v != 0.0)) {
                        self.2.push(name.to_string());
                    }
                }
                Ok(())
            }
        }
        let mut c = Check(grads, trainable, vec![]);
        model.visit_params("", &mut c).unwrap();
        c.2.retain(|name| !UNUSED_BY_DESIGN.iter().any(|p| name.starts_with(p)));
        c.2
    }

    /// Parameters no loss reaches in these configs, by design: the prompt encoder's mask and point-label embeddings (the
    /// prompts are boxes), EVA02's pooling norm (the model reads feature maps), the two-way
    /// transformer's last token-to-image attention (dense fusion reads the image tokens) and
    /// the mask decoder's multimask outputs (the mask head asks for one mask).
    const UNUSED_BY_DESIGN: &[&str] = &[
        "prompt_encoder.mask_embed.",
        "prompt_encoder.point_embed.0.",
        "prompt_encoder.point_embed.1.",
        "prompt_encoder.not_a_point_embed.",
        "image_encoder.eva.fc_norm.",
        "prompt_feature_extractor.transformer.final_attn_token_to_image.",
        "prompt_feature_extractor.transformer.layer_norm_final_attn.",
        "heads.mask.mask_decoder.output_hypernetworks_mlps.1.",
        "heads.mask.mask_decoder.output_hypernetworks_mlps.2.",
        "heads.mask.mask_decoder.output_hypernetworks_mlps.3.",
    ];

    /// Per token, how much the features of `b` differ from those of `a` (`[1, N, C]` each).
    fn token_change(a: &[f32], b: &[f32], tokens: usize) -> Vec<f32> {
        let c = a.len() / tokens;
        (0..tokens)
            .map(|i| {
                (i * c..(i + 1) * c)
                    .map(|k| (a[k] - b[k]).powi(2))
                    .sum::<f32>()
                    .sqrt()
            })
            .collect()
    }

    #[test]
    fn a_visual_token_reads_its_own_patch() {
        let config = demo();
        let model = TinyPixelLlm::build(&config.model, 0).unwrap();
        let e = examples(&config, &model.vocab, 1).remove(0);
        let grid = 8;
        let patch = e.image.width() as usize / grid;
        for (row, col) in [(1, 6), (5, 2), (7, 7)] {
            let mut changed = e.clone();
            for y in row * patch..(row + 1) * patch {
                for x in col * patch..(col + 1) * patch {
                    changed
                        .image
                        .put_pixel(x as u32, y as u32, image::Rgb([250, 10, 200]));
                }
            }
            // The image encoder's features, and the visual tokens the LM reads (dense fusion).
            let features = |ex: &Example| {
                let batch = model.batch(std::slice::from_ref(ex)).unwrap();
                let sam = model.pixel_values(&batch, &SAM_NORMALIZATION);
                let eva = model.pixel_values(&batch, &CLIP_NORMALIZATION);
                let image = model.image_encoder.forward(sam, eva).tokens;
                let boxes: Vec<f32> = batch.prompt_boxes[0].to_array().map(|v| v * 64.0).to_vec();
                let visual = model.prompt_feature_extractor.forward(
                    image.clone(),
                    &model.prompt_encoder.dense_pe(),
                    model.prompt_encoder.dense_without_mask::<NoneTape>(1),
                    model.prompt_encoder.embed_boxes::<NoneTape>(&boxes, 1),
                );
                (image.as_vec(), visual.as_vec())
            };
            let ((image_a, visual_a), (image_b, visual_b)) = (features(&e), features(&changed));
            for (what, a, b) in [
                ("image features", image_a, image_b),
                ("visual tokens", visual_a, visual_b),
            ] {
                let change = token_change(&a, &b, grid * grid);
                let most = (0..change.len())
                    .max_by(|&i, &j| change[i].total_cmp(&change[j]))
                    .unwrap();
                assert_eq!(
                    (most / grid, most % grid),
                    (row, col),
                    "the {what} changed most at another token: {change:?}"
                );
            }
        }
    }

    fn examples(config: &Demo, vocab: &VocabMap, count: usize) -> Vec<Example> {
        let tok = pixel_lm::tokenizer::T5Tokenizer::bundled().unwrap();
        let builder = ExampleBuilder {
            tokenizer: &tok,
            vocab,
            max_target_tokens: 40,
        };
        let data = ShapesLn::new(config.data.clone(), 0).unwrap();
        training_examples(&data, &builder, &config.tasks, count, 0, 0).unwrap()
    }

    #[test]
    fn every_trainable_parameter_gets_a_gradient() {
        for freeze_sam in [true, false] {
            let mut config = demo();
            config.model.freeze_sam = freeze_sam;
            let mut model = TinyPixelLlm::build(&config.model, 0).unwrap();
            let ex = examples(&config, &model.vocab.clone(), 2);
            let trainable = config.model.trainable();
            assert_eq!(
                trainable.is_trainable("image_encoder.sam.neck.conv1.weight"),
                !freeze_sam
            );
            let grads = alloc_grads(&mut model, &trainable).unwrap();
            let (loss, _) = model.loss(&ex, grads).unwrap();
            let missing = without_gradient(&mut model, &loss.backward(), &trainable);
            assert!(missing.is_empty(), "freeze_sam = {freeze_sam}: {missing:?}");
        }
    }

    #[test]
    fn a_visual_position_table_trains_and_leaves_the_rest_of_the_initialisation_alone() {
        let mut config = demo();
        let mut plain = TinyPixelLlm::build(&config.model, 0).unwrap();
        config.model.visual_position_std = 1.0;
        config.model.visual_relative_bias = false;
        let weights: toml::Table = toml::from_str("l1 = 50.0\ngiou = 20.0").unwrap();
        config.model.heads[0]
            .options
            .insert("referring_box".into(), toml::Value::Table(weights));
        let mut model = TinyPixelLlm::build(&config.model, 0).unwrap();
        let with_table = snapshot(&mut model);
        let table = with_table
            .iter()
            .find(|(name, _)| name == "visual_position_embedding")
            .expect("the table is a parameter");
        assert_eq!(table.1.len(), 64 * 128);
        let std = (table.1.iter().map(|v| v * v).sum::<f32>() / table.1.len() as f32).sqrt();
        assert!((std - 1.0).abs() < 0.05, "std {std}");
        let others: Vec<_> = with_table
            .into_iter()
            .filter(|(name, _)| name != "visual_position_embedding")
            .collect();
        assert_eq!(others, snapshot(&mut plain));
        let trainable = config.model.trainable();
        let ex = examples(&config, &model.vocab.clone(), 2);
        let grads = alloc_grads(&mut model, &trainable).unwrap();
        let (loss, _) = model.loss(&ex, grads).unwrap();
        let missing = without_gradient(&mut model, &loss.backward(), &trainable);
        assert!(missing.is_empty(), "{missing:?}");
    }

    /// Every parameter's values by name.
    fn snapshot(model: &mut TinyPixelLlm) -> Vec<(String, Vec<f32>)> {
        let mut store = pixel_core::checkpoint::TensorStore::default();
        pixel_core::checkpoint::collect_params(model, &mut store, "").unwrap();
        store
            .tensors
            .into_iter()
            .map(|(name, t)| (name, t.to_f32()))
            .collect()
    }

    /// Two optimizer steps in each LM mode: frozen tensors never move, and every trainable
    /// tensor has a non-zero gradient at the second step and has moved after it (LoRA's B starts
    /// at zero, so its A gets no gradient before B has had one update).
    #[test]
    fn each_lm_mode_updates_what_trains_and_nothing_frozen() {
        for mode in [LmMode::Full, LmMode::Lora, LmMode::Frozen] {
            let mut config = demo();
            config.model.lm.mode = mode;
            let mut model = TinyPixelLlm::build(&config.model, 0).unwrap();
            let ex = examples(&config, &model.vocab.clone(), 2);
            let trainable = config.model.trainable();
            let before = snapshot(&mut model);
            let mut optimizer = pixel_core::optim::AdamW::new(Default::default());
            for step in 0..2 {
                let grads = alloc_grads(&mut model, &trainable).unwrap();
                let (loss, _) = model.loss(&ex, grads).unwrap();
                let grads = loss.backward();
                if step == 1 {
                    let missing = without_gradient(&mut model, &grads, &trainable);
                    assert!(missing.is_empty(), "{mode:?}: {missing:?}");
                }
                optimizer
                    .update(&mut model, &grads, &trainable, 1e-3)
                    .unwrap();
            }
            let after = snapshot(&mut model);
            for ((name, old), (_, new)) in before.iter().zip(&after) {
                let moved = old != new;
                if trainable.is_trainable(name) {
                    let unused = UNUSED_BY_DESIGN.iter().any(|p| name.starts_with(p));
                    assert!(moved || unused, "{mode:?}: trainable `{name}` did not move");
                } else {
                    assert!(!moved, "{mode:?}: frozen `{name}` moved");
                }
            }
            let lm_moved = before
                .iter()
                .zip(&after)
                .any(|((name, old), (_, new))| name.starts_with("language_model.") && old != new);
            assert_eq!(lm_moved, mode != LmMode::Frozen, "{mode:?}");
        }
    }

    /// Once the image encoder is frozen, no gradient reaches it (it runs without a tape) and
    /// everything after it still trains.
    #[test]
    fn a_frozen_image_encoder_gets_no_gradient_and_the_rest_still_trains() {
        let config = demo();
        let mut model = TinyPixelLlm::build(&config.model, 0).unwrap();
        let ex = examples(&config, &model.vocab.clone(), 2);
        let pattern = model.freeze_image_encoder().unwrap();
        let trainable = config.model.trainable();
        let grads = alloc_grads(&mut model, &trainable).unwrap();
        let grads = model.loss(&ex, grads).unwrap().0.backward();
        let missing = without_gradient(&mut model, &grads, &trainable);
        let eva = "image_encoder.eva.";
        assert!(missing.iter().any(|n| n.starts_with(eva)), "{missing:?}");
        assert!(
            missing.iter().all(|n| n.starts_with("image_encoder.")),
            "{missing:?}"
        );
        let frozen = trainable.clone().freeze(pattern);
        let still = without_gradient(&mut model, &grads, &frozen);
        assert!(still.is_empty(), "{still:?}");
    }

    #[test]
    fn every_built_in_head_trains_and_decodes_side_by_side() {
        let heads = "[[model.heads]]\nkind = \"point\"\nweight = 0.1\n\
                     [[model.heads]]\nkind = \"box\"\nweight = 0.1\n\
                     [[model.heads]]\nkind = \"bins\"\nbins = 16\n\
                     [[model.heads]]\nkind = \"mask\"\nprompt = \"point\"\n\
                     [[model.heads]]\nkind = \"detection\"\n";
        let mut config = demo_with_heads(heads);
        config.tasks.trace_captioning = 0.3;
        config.tasks.referring_localization = 0.7;
        let mut model = TinyPixelLlm::build(&config.model, 0).unwrap();
        let ex = examples(&config, &model.vocab.clone(), 4);
        assert!(ex
            .iter()
            .any(|e| e.task == crate::tasks::TaskKind::ReferringLocalization));
        let trainable = config.model.trainable();
        let grads = alloc_grads(&mut model, &trainable).unwrap();
        let (loss, parts) = model.loss(&ex, grads).unwrap();
        // Each loss under its own name; the text-coordinate head (bins) has none of its own.
        let named: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(named, [TEXT_LOSS, "point", "box", "mask", "detection"]);
        assert!(
            parts.iter().all(|p| p.value > 0.0 && p.value.is_finite()),
            "{parts:?}"
        );
        let weighted: f32 = parts.iter().map(LossPart::weighted).sum();
        assert!(
            (weighted - loss.array()).abs() <= 1e-4 * weighted,
            "{parts:?}"
        );
        let missing = without_gradient(&mut model, &loss.backward(), &trainable);
        assert!(missing.is_empty(), "{missing:?}");

        let batch = model.batch(&ex).unwrap();
        let out = model.teacher_forced(&batch).unwrap();
        let names: Vec<&str> = out.heads[0].iter().map(|h| h.head.as_str()).collect();
        assert_eq!(names, ["point", "box", "bins", "mask", "detection"]);
        for example in &out.heads {
            assert!(example[0].tokens.iter().all(Option::is_some));
            let mask = example[3].mask.as_ref().unwrap();
            assert_eq!(mask.dimensions(), (64, 64));
            // The mask is prompted by the point head's box (the whole image when the point head
            // has none: a referring target the bins head rewrote has no token boxes).
            let prompt = example[0].object.unwrap_or_else(BoxXyxy::whole_image);
            assert_eq!(example[3].object, Some(prompt));
        }
        let generated = model.generate(&batch, 6).unwrap();
        assert_eq!(generated.len(), batch.size);
        assert!(generated.iter().all(|g| g.heads.len() == 5));
        assert_eq!(model.reads(), Reads::DecoderFeatures);
    }

    #[test]
    fn a_head_with_parts_logs_each_under_its_name_with_its_weight() {
        let heads = "[[model.heads]]\nkind = \"point\"\nweight = 0.1\n\
                     referring_box = { l1 = 50.0, giou = 20.0 }\n";
        let mut config = demo_with_heads(heads);
        config.tasks.trace_captioning = 0.5;
        config.tasks.referring_localization = 0.5;
        let mut model = TinyPixelLlm::build(&config.model, 0).unwrap();
        model.set_aux_loss_scale(0.5);
        let ex = examples(&config, &model.vocab.clone(), 4);
        let trainable = config.model.trainable();
        let grads = alloc_grads(&mut model, &trainable).unwrap();
        let (loss, parts) = model.loss(&ex, grads).unwrap();
        let logged: Vec<(&str, f32)> = parts.iter().map(|p| (p.name.as_str(), p.weight)).collect();
        assert_eq!(
            logged,
            [
                (TEXT_LOSS, 1.0),
                ("point/pixel_l1", 0.1 * 0.5),
                ("point/referring_l1", 0.1 * 50.0 * 0.5),
                ("point/referring_giou", 0.1 * 20.0 * 0.5),
            ]
        );
        assert!(parts.iter().all(|p| p.value > 0.0 && p.value.is_finite()));
        let weighted: f32 = parts.iter().map(LossPart::weighted).sum();
        assert!(
            (weighted - loss.array()).abs() <= 1e-5 * weighted,
            "{parts:?}"
        );
    }

    #[test]
    fn a_text_head_reads_back_the_boxes_it_wrote() {
        let heads = "[[model.heads]]\nkind = \"bins\"\nbins = 50\n";
        let config = demo_with_heads(heads);
        let model = TinyPixelLlm::build(&config.model, 0).unwrap();
        let ex = examples(&config, &model.vocab, 6);
        let batch = model.batch(&ex).unwrap();
        // Teacher forcing with the targets themselves as what the model said.
        let tokens = DecodedTokens {
            mode: DecodeMode::TeacherForced,
            said: batch
                .target_ids
                .chunks(batch.target_len)
                .map(<[usize]>::to_vec)
                .collect(),
            valid: vec![vec![true; batch.target_len]; batch.size],
        };
        let decoder: Seq<LmWidth<PixelTiny>, pixel_core::DefaultDevice> =
            model.dev.zeros_like(&(batch.size, batch.target_len, Const));
        let image = FeatureMap::new(model.dev.zeros_like(&(batch.size, 64, Const)), 8, 8);
        let inputs = model.head_inputs(&decoder, &image, &batch);
        let read = model.heads[0].decode(&inputs, &tokens, &[]).unwrap();
        let half_bin = 0.5 / 50.0 + 1e-6;
        let close =
            |a: [f32; 4], b: [f32; 4]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= half_bin);
        for (b, (e, p)) in ex.iter().zip(&read).enumerate() {
            if let Some(target) = e.target_box {
                assert!(
                    close(p.object.unwrap().to_array(), target.to_array()),
                    "{p:?}"
                );
            }
            // Every supervised word token carries its word's box, read back from the text.
            let t = batch.target_len;
            for i in 0..t {
                if batch.location_weights[(b * t + i) * 4] > 0.0 {
                    let truth = &batch.location_targets[(b * t + i) * 4..(b * t + i + 1) * 4];
                    let got = p.tokens[i].unwrap();
                    assert!(
                        close(got, [truth[0], truth[1], truth[2], truth[3]]),
                        "{got:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn evaluation_scores_a_box_head_and_a_text_head() {
        for heads in [
            "[[model.heads]]\nkind = \"box\"\nweight = 0.1\n",
            "[[model.heads]]\nkind = \"string\"\ndecimals = 1\n",
        ] {
            let config = demo_with_heads(heads);
            let model = TinyPixelLlm::build(&config.model, 0).unwrap();
            let tok = pixel_lm::tokenizer::T5Tokenizer::bundled().unwrap();
            let builder = ExampleBuilder {
                tokenizer: &tok,
                vocab: &model.vocab,
                max_target_tokens: 20,
            };
            let data = ShapesLn::new(config.data.clone(), 0).unwrap();
            let examples =
                evaluation_examples(&data, &builder, pixel_data::shapes_ln::Split::Validation, 2)
                    .unwrap();
            let referring = examples
                .iter()
                .filter(|e| e.task == crate::tasks::TaskKind::ReferringLocalization)
                .count();
            let baselines = crate::eval::Baselines::fit(&examples);
            let report = crate::eval::evaluate(&model, &examples, &baselines, 8).unwrap();
            assert_eq!(report.referring_localization.count, referring, "{heads}");
            assert!(report.trace_captioning.tokens > 0, "{heads}");
            assert!(report.trace_captioning.point_l1.is_finite(), "{heads}");
        }
    }
}
