//! Tasks as training examples: what goes into the language model's encoder (a location prompt
//! and a text prompt), what its decoder must say, and where each said token lies.
//!
//! Prompts follow the official configs: referring localization prompts with
//! `"where is " + expression` and teaches the decoder to repeat the expression, whose last token
//! regresses the object's box (scenic's `point_output_ignore = '^end-1'`); trace captioning has no text prompt and supervises each word with
//! its mouse-trace box; location-conditioned captioning prompts with a box.
use crate::error::{ModelError, Result};
use crate::vocab::VocabMap;
use image::{GrayImage, RgbImage};
use pixel_core::geometry::BoxXyxy;
use pixel_data::shapes_ln::Sample;
use pixel_lm::tokenizer::{T5Tokenizer, EOS_ID, PAD_ID};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A scored box: a detection proposal, which [`ExampleBuilder::location_prompts`] prompts with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub bbox: BoxXyxy,
    pub score: f32,
}

/// The tasks PixelLLM is trained and evaluated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Image -> caption with a location for every word.
    TraceCaptioning,
    /// Image + expression -> box.
    ReferringLocalization,
    /// Image + box -> text.
    LocationCaptioning,
}

/// The official referring-localization prompt prefix.
pub const REFERRING_PREFIX: &str = "where is ";

/// One training or evaluation example.
#[derive(Debug, Clone)]
pub struct Example {
    pub task: TaskKind,
    pub image: RgbImage,
    /// The location prompt; the whole image when the task has none.
    pub prompt_box: BoxXyxy,
    /// Tokens of the text prompt, ending with EOS.
    pub context_ids: Vec<usize>,
    /// Tokens the decoder must produce, ending with EOS.
    pub target_ids: Vec<usize>,
    /// The box of each target token; `None` where no location is supervised (EOS).
    pub token_boxes: Vec<Option<BoxXyxy>>,
    /// For referring localization: the box to find.
    pub target_box: Option<BoxXyxy>,
    /// For referring localization: the object's mask (image size), when the sample has it.
    pub target_mask: Option<GrayImage>,
    /// Every object's box in the image: what a detection head should propose.
    pub object_boxes: Vec<BoxXyxy>,
}

/// Token ids of `words` and, for each token, the index of the word it came from.
///
/// T5's SentencePiece splits on whitespace, so encoding word by word gives the ids of the
/// whole sentence (a tested property) and an exact token -> word map.
pub fn tokenize_words(tokenizer: &T5Tokenizer, words: &[&str]) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut ids = Vec::new();
    let mut word_of = Vec::new();
    for (w, word) in words.iter().enumerate() {
        let mut piece = tokenizer.encode(word).map_err(lm_error)?;
        if piece.last() == Some(&EOS_ID) {
            piece.pop();
        }
        word_of.extend(std::iter::repeat_n(w, piece.len()));
        ids.extend(piece);
    }
    Ok((ids, word_of))
}

fn lm_error(e: pixel_lm::error::LmError) -> ModelError {
    ModelError::Invalid(e.to_string())
}

fn boxed(b: [f32; 4]) -> Result<BoxXyxy> {
    Ok(BoxXyxy::from_array(b)?)
}

/// The boxes of the sample's regions (one per object): the detection targets.
fn object_boxes(sample: &Sample) -> Result<Vec<BoxXyxy>> {
    sample.regions.iter().map(|r| boxed(r.bbox)).collect()
}

/// Builds examples of each task from synthetic samples.
pub struct ExampleBuilder<'a> {
    pub tokenizer: &'a T5Tokenizer,
    /// T5 ids -> the model's ids (identity for full-vocabulary presets).
    pub vocab: &'a VocabMap,
    /// Captions are cut to this many target tokens (EOS included).
    pub max_target_tokens: usize,
}

impl<'a> ExampleBuilder<'a> {
    fn to_model(&self, t5_ids: &[usize]) -> Vec<usize> {
        t5_ids.iter().map(|&id| self.vocab.to_model(id)).collect()
    }

    /// The caption with each token supervised by its word's trace box.
    pub fn trace_captioning(&self, sample: &Sample) -> Result<Example> {
        let words: Vec<&str> = sample.words.iter().map(|w| w.word.as_str()).collect();
        let (ids, word_of) = tokenize_words(self.tokenizer, &words)?;
        let mut ids = self.to_model(&ids);
        let mut token_boxes = word_of
            .iter()
            .map(|&w| boxed(sample.words[w].bbox).map(Some))
            .collect::<Result<Vec<_>>>()?;
        ids.truncate(self.max_target_tokens - 1);
        token_boxes.truncate(self.max_target_tokens - 1);
        ids.push(EOS_ID);
        token_boxes.push(None);
        Ok(Example {
            task: TaskKind::TraceCaptioning,
            image: sample.image.clone(),
            prompt_box: BoxXyxy::whole_image(),
            context_ids: vec![EOS_ID],
            target_ids: ids,
            token_boxes,
            target_box: None,
            target_mask: None,
            object_boxes: object_boxes(sample)?,
        })
    }

    /// One example per referring expression of the sample.
    pub fn referring_localization(&self, sample: &Sample) -> Result<Vec<Example>> {
        sample
            .referring
            .iter()
            .map(|r| {
                let target = boxed(r.bbox)?;
                let context = self
                    .tokenizer
                    .encode(&format!("{REFERRING_PREFIX}{}", r.text))
                    .map_err(lm_error)?;
                let context_ids = self.to_model(&context);
                let words: Vec<&str> = r.text.split_whitespace().collect();
                let mut ids = self.to_model(&tokenize_words(self.tokenizer, &words)?.0);
                // As scenic's `point_output_ignore = '^end-1'`: only the expression's last
                // token, read once the whole expression is known, regresses the box.
                let mut token_boxes = vec![None; ids.len()];
                if let Some(last) = token_boxes.last_mut() {
                    *last = Some(target);
                }
                ids.push(EOS_ID);
                token_boxes.push(None);
                Ok(Example {
                    task: TaskKind::ReferringLocalization,
                    image: sample.image.clone(),
                    prompt_box: BoxXyxy::whole_image(),
                    context_ids,
                    target_ids: ids,
                    token_boxes,
                    target_box: Some(target),
                    target_mask: r
                        .mask
                        .clone()
                        .or_else(|| sample.objects.get(r.object).map(|o| o.mask.clone())),
                    object_boxes: object_boxes(sample)?,
                })
            })
            .collect()
    }

    /// One example per region: the region's box as the location prompt, its phrase as target.
    pub fn location_captioning(&self, sample: &Sample) -> Result<Vec<Example>> {
        sample
            .regions
            .iter()
            .map(|region| {
                let b = boxed(region.bbox)?;
                let words: Vec<&str> = region.caption.split_whitespace().collect();
                let mut ids = self.to_model(&tokenize_words(self.tokenizer, &words)?.0);
                let mut token_boxes = vec![Some(b); ids.len()];
                ids.push(EOS_ID);
                token_boxes.push(None);
                Ok(Example {
                    task: TaskKind::LocationCaptioning,
                    image: sample.image.clone(),
                    prompt_box: b,
                    context_ids: vec![EOS_ID],
                    target_ids: ids,
                    token_boxes,
                    target_box: Some(b),
                    target_mask: None,
                    object_boxes: object_boxes(sample)?,
                })
            })
            .collect()
    }

    /// Dense captioning's second step: one location-captioning example per proposal of a
    /// detection head, the proposal as the location prompt and no target text (EOS only).
    pub fn location_prompts(&self, image: &RgbImage, proposals: &[Scored]) -> Vec<Example> {
        proposals
            .iter()
            .map(|p| Example {
                task: TaskKind::LocationCaptioning,
                image: image.clone(),
                prompt_box: p.bbox,
                context_ids: vec![EOS_ID],
                target_ids: vec![EOS_ID],
                token_boxes: vec![None],
                target_box: Some(p.bbox),
                target_mask: None,
                object_boxes: Vec::new(),
            })
            .collect()
    }
}

/// A padded batch of examples, flattened row-major, ready for the model.
#[derive(Debug, Clone)]
pub struct Batch {
    pub size: usize,
    pub image_size: u32,
    /// `[B, 3, H, W]`, RGB in `[0, 1]`; each backbone normalizes it its own way.
    pub pixels: Vec<f32>,
    /// `[B]` normalized prompt boxes.
    pub prompt_boxes: Vec<BoxXyxy>,
    /// `[B, S]` text-prompt ids padded with pad, and the mask of real tokens.
    pub context_ids: Vec<usize>,
    pub context_mask: Vec<bool>,
    pub context_len: usize,
    /// `[B, T]` decoder inputs: the targets shifted right behind the start token (pad).
    pub decoder_input_ids: Vec<usize>,
    /// `[B, T]` targets, and 1.0 where a target token is real.
    pub target_ids: Vec<usize>,
    pub target_weights: Vec<f32>,
    pub target_len: usize,
    /// `[B, T, 4]` corner targets and their weights (0 where a token has no box), aligned with
    /// `decoder_input_ids`: position i holds the box of the token read at position i. The
    /// weights sum to 1, each task in the batch getting an equal share (see
    /// `balance_location_weights`).
    pub location_targets: Vec<f32>,
    pub location_weights: Vec<f32>,
    pub tasks: Vec<TaskKind>,
    /// `[B]` each example's target box (referring localization, location captioning).
    pub target_boxes: Vec<Option<BoxXyxy>>,
    /// `[B]` each example's target mask, at image size.
    pub target_masks: Vec<Option<GrayImage>>,
    /// `[B]` the boxes of every object in each image.
    pub object_boxes: Vec<Vec<BoxXyxy>>,
}

impl Batch {
    /// Pads `examples` into one batch; all images must have the same size.
    pub fn new(examples: &[Example]) -> Result<Batch> {
        let first = examples
            .first()
            .ok_or_else(|| ModelError::Invalid("cannot batch zero examples".into()))?;
        let (w, h) = first.image.dimensions();
        if w != h {
            return Err(ModelError::Invalid(format!(
                "images must be square, got {w}x{h}"
            )));
        }
        let size = examples.len();
        let context_len = examples
            .iter()
            .map(|e| e.context_ids.len())
            .max()
            .unwrap_or(1);
        let target_len = examples
            .iter()
            .map(|e| e.target_ids.len())
            .max()
            .unwrap_or(1);
        let mut batch = Batch {
            size,
            image_size: w,
            pixels: Vec::with_capacity(size * 3 * (w * h) as usize),
            prompt_boxes: Vec::with_capacity(size),
            context_ids: Vec::with_capacity(size * context_len),
            context_mask: Vec::with_capacity(size * context_len),
            context_len,
            decoder_input_ids: Vec::with_capacity(size * target_len),
            target_ids: Vec::with_capacity(size * target_len),
            target_weights: Vec::with_capacity(size * target_len),
            target_len,
            location_targets: Vec::with_capacity(size * target_len * 4),
            location_weights: Vec::with_capacity(size * target_len * 4),
            tasks: Vec::with_capacity(size),
            target_boxes: examples.iter().map(|e| e.target_box).collect(),
            target_masks: examples.iter().map(|e| e.target_mask.clone()).collect(),
            object_boxes: examples.iter().map(|e| e.object_boxes.clone()).collect(),
        };
        for e in examples {
            if e.image.dimensions() != (w, h) {
                return Err(ModelError::Invalid(format!(
                    "batch mixes image sizes {:?} and {:?}",
                    (w, h),
                    e.image.dimensions()
                )));
            }
            if e.target_ids.len() != e.token_boxes.len() {
                return Err(ModelError::Invalid(
                    "an example has a different number of target tokens and token boxes".into(),
                ));
            }
            for c in 0..3 {
                batch
                    .pixels
                    .extend(e.image.pixels().map(|p| p.0[c] as f32 / 255.0));
            }
            batch.prompt_boxes.push(e.prompt_box);
            batch
                .context_ids
                .extend(pad(&e.context_ids, context_len, PAD_ID));
            batch
                .context_mask
                .extend((0..context_len).map(|i| i < e.context_ids.len()));
            let mut shifted = vec![PAD_ID];
            shifted.extend(&e.target_ids[..e.target_ids.len() - 1]);
            batch
                .decoder_input_ids
                .extend(pad(&shifted, target_len, PAD_ID));
            batch
                .target_ids
                .extend(pad(&e.target_ids, target_len, PAD_ID));
            batch.target_weights.extend((0..target_len).map(|i| {
                if i < e.target_ids.len() {
                    1.0
                } else {
                    0.0
                }
            }));
            for i in 0..target_len {
                // Position i reads input token i (the start token at 0): as in scenic, a
                // token's location is regressed where the token is the decoder's input, so
                // position i carries the box of target token i - 1.
                match i
                    .checked_sub(1)
                    .and_then(|k| e.token_boxes.get(k).copied().flatten())
                {
                    Some(b) => {
                        batch.location_targets.extend(b.to_array());
                        batch.location_weights.extend([1.0; 4]);
                    }
                    None => {
                        batch.location_targets.extend([0.0; 4]);
                        batch.location_weights.extend([0.0; 4]);
                    }
                }
            }
            batch.tasks.push(e.task);
        }
        batch.balance_location_weights();
        Ok(batch)
    }
}

impl Batch {
    /// Gives each task in the batch the same total location weight, spread evenly over its
    /// supervised coordinates. A referring example supervises one token and a caption about
    /// thirty, so one average over all of a mixed batch's tokens would leave referring with a
    /// few percent of the location gradient; per task, the loss is what a batch of that task
    /// alone would give, and the tasks count equally.
    fn balance_location_weights(&mut self) {
        let per_example = self.target_len * 4;
        let mut totals: HashMap<TaskKind, f32> = HashMap::new();
        for (task, weights) in self
            .tasks
            .iter()
            .zip(self.location_weights.chunks(per_example))
        {
            *totals.entry(*task).or_default() += weights.iter().sum::<f32>();
        }
        let present = totals.values().filter(|&&total| total > 0.0).count() as f32;
        for (task, weights) in self
            .tasks
            .iter()
            .zip(self.location_weights.chunks_mut(per_example))
        {
            let total = totals[task];
            if total > 0.0 {
                weights.iter_mut().for_each(|w| *w /= total * present);
            }
        }
    }
}

fn pad(ids: &[usize], len: usize, fill: usize) -> impl Iterator<Item = usize> + '_ {
    ids.iter().copied().chain(std::iter::repeat(fill)).take(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_data::shapes_ln::{ShapesLn, ShapesLnConfig, Split};

    fn tokenizer() -> T5Tokenizer {
        T5Tokenizer::bundled().unwrap()
    }

    #[test]
    fn word_by_word_tokens_equal_sentence_tokens() {
        let tok = tokenizer();
        let data = ShapesLn::new(ShapesLnConfig::default(), 3).unwrap();
        for i in 0..20 {
            let s = data.sample(Split::Train, i);
            let words: Vec<&str> = s.words.iter().map(|w| w.word.as_str()).collect();
            let (ids, word_of) = tokenize_words(&tok, &words).unwrap();
            let mut sentence = tok.encode(&s.caption).unwrap();
            sentence.pop();
            assert_eq!(ids, sentence, "{}", s.caption);
            assert_eq!(word_of.len(), ids.len());
            assert!(word_of.windows(2).all(|p| p[0] <= p[1]));
        }
    }

    #[test]
    fn batch_shifts_targets_and_masks_padding() {
        let tok = tokenizer();
        let data = ShapesLn::new(ShapesLnConfig::default(), 1).unwrap();
        let vocab = VocabMap::identity(32128);
        let builder = ExampleBuilder {
            tokenizer: &tok,
            vocab: &vocab,
            max_target_tokens: 64,
        };
        let s = data.sample(Split::Train, 0);
        let mut examples = builder.referring_localization(&s).unwrap();
        examples.push(builder.trace_captioning(&s).unwrap());
        let batch = Batch::new(&examples).unwrap();
        let t = batch.target_len;
        for (b, e) in examples.iter().enumerate() {
            let row = &batch.decoder_input_ids[b * t..(b + 1) * t];
            assert_eq!(row[0], PAD_ID);
            assert_eq!(
                &row[1..e.target_ids.len()],
                &e.target_ids[..e.target_ids.len() - 1]
            );
            let weights = &batch.target_weights[b * t..(b + 1) * t];
            assert_eq!(weights.iter().sum::<f32>() as usize, e.target_ids.len());
            assert_eq!(
                batch.location_weights[b * t * 4],
                0.0,
                "the start token has no box"
            );
            // Token k's box sits at position k + 1, where token k is the decoder input; EOS has
            // none, and neither has any position past the example.
            for k in 0..t - 1 {
                let at = (b * t + k + 1) * 4;
                match e.token_boxes.get(k).copied().flatten() {
                    Some(bx) => assert_eq!(&batch.location_targets[at..at + 4], &bx.to_array()),
                    None => assert_eq!(batch.location_weights[at], 0.0, "token {k} has no box"),
                }
            }
        }
        assert!(examples[0].context_ids.len() > 3);
    }

    #[test]
    fn each_task_gets_an_equal_share_of_the_location_weight() {
        let tok = tokenizer();
        let data = ShapesLn::new(ShapesLnConfig::default(), 2).unwrap();
        let vocab = VocabMap::identity(32128);
        let builder = ExampleBuilder {
            tokenizer: &tok,
            vocab: &vocab,
            max_target_tokens: 64,
        };
        let mut examples = Vec::new();
        for i in 0..3 {
            let s = data.sample(Split::Train, i);
            examples.push(builder.trace_captioning(&s).unwrap());
            examples.extend(builder.referring_localization(&s).unwrap());
        }
        let batch = Batch::new(&examples).unwrap();
        let per_example = batch.target_len * 4;
        let share = |task: TaskKind| -> f32 {
            (0..batch.size)
                .filter(|&b| batch.tasks[b] == task)
                .map(|b| {
                    batch.location_weights[b * per_example..(b + 1) * per_example]
                        .iter()
                        .sum::<f32>()
                })
                .sum()
        };
        assert!((share(TaskKind::TraceCaptioning) - 0.5).abs() < 1e-5);
        assert!((share(TaskKind::ReferringLocalization) - 0.5).abs() < 1e-5);
        // Within a task every supervised coordinate weighs the same.
        let referring: Vec<f32> = batch
            .location_weights
            .iter()
            .enumerate()
            .filter(|(i, &w)| {
                w > 0.0 && batch.tasks[i / per_example] == TaskKind::ReferringLocalization
            })
            .map(|(_, &w)| w)
            .collect();
        assert!(referring.windows(2).all(|p| (p[0] - p[1]).abs() < 1e-9));

        let alone = Batch::new(&examples[..1]).unwrap();
        let total: f32 = alone.location_weights.iter().sum();
        assert!(
            (total - 1.0).abs() < 1e-5,
            "one task alone: weights sum to 1, got {total}"
        );
    }
}
