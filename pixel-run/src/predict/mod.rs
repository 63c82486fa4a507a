//! A trained model used on images of one's own: `pixel predict` and `pixel serve` share it.
//!
//! [`TrainedModel::load`] builds the model of a run once; [`TrainedModel::query`] checks a
//! [`Request`] against its image and the model's heads (every user error is found there);
//! [`TrainedModel::predict`] answers a batch of checked queries, each task batched through the
//! model the way `pixel eval` runs it, with coordinates in the pixels of the image as given.
mod annotate;
mod answer;
mod request;

pub use annotate::annotate;
pub use answer::{mask_from_rle, mask_rle, to_pixels, words_at, Answer, Region, WordAt};
pub use pixel_data::data_source::model_image;
pub use request::{Query, Request, Task};

use crate::error::{Result, RunError};
use crate::eval_run::resolve_checkpoint;
use crate::experiment::ExperimentConfig;
use pixel_core::checkpoint::load_params_file;
use pixel_core::geometry::BoxXyxy;
use pixel_lm::tokenizer::{T5Tokenizer, EOS_ID, PAD_ID};
use pixel_model::eval::{referring_head_predictions, scored, Predictor};
use pixel_model::heads::{HeadConfig, HeadPrediction, Scored};
use pixel_model::model::{TinyHeadRegistry, TinyPixelLlm};
use pixel_model::tasks::{tokenize_words, Example, TaskKind, REFERRING_PREFIX};
use pixel_model::vocab::UNK_ID;
use std::path::{Path, PathBuf};

/// A model loaded from a checkpoint, with its config and tokenizer.
pub struct TrainedModel {
    model: TinyPixelLlm,
    pub config: ExperimentConfig,
    tokenizer: T5Tokenizer,
    /// The weights file loaded and its training step, when the checkpoint folder names it.
    pub weights: PathBuf,
    pub step: Option<u64>,
}

impl TrainedModel {
    /// Loads `checkpoint` (a run folder, a checkpoint folder or a `.safetensors` file) with the
    /// experiment config `config` (TOML, or a run's `config.json`); without one, the
    /// `config.json` of the run the checkpoint is in.
    pub fn load(
        checkpoint: &Path,
        config: Option<&Path>,
        heads: &TinyHeadRegistry,
    ) -> Result<TrainedModel> {
        let config = match config {
            Some(path) => read_config(path)?,
            None => read_config(&run_config(checkpoint)?)?,
        };
        let tokenizer = T5Tokenizer::bundled().map_err(|e| RunError::Invalid(e.to_string()))?;
        let mut model = TinyPixelLlm::build_with(&config.model, config.seed, heads)?;
        let (weights, step) = resolve_checkpoint(checkpoint)?;
        load_params_file(&mut model, &weights)?;
        Ok(TrainedModel {
            model,
            config,
            tokenizer,
            weights,
            step,
        })
    }

    /// The tasks this model's heads can answer.
    pub fn tasks(&self) -> Vec<Task> {
        Task::ALL
            .into_iter()
            .filter(|&t| self.missing_head(t).is_none())
            .collect()
    }

    /// Why the model cannot answer `task`, when it cannot.
    fn missing_head(&self, task: Task) -> Option<String> {
        let locates = self.model.heads.iter().any(|h| h.reads().locates_tokens());
        match task {
            Task::Trace | Task::Refer if !locates => Some(format!(
                "task `{}` needs a head that locates words (point, box, bins or string), and \
                 this model has {}",
                task.name(),
                self.head_list()
            )),
            Task::Densecap if self.head_of_kind("detection").is_none() => Some(format!(
                "task `densecap` needs a detection head, and this model has {}; train one with \
                 a `[[model.heads]] kind = \"detection\"` entry (configs/densecap.toml)",
                self.head_list()
            )),
            _ => None,
        }
    }

    fn head_list(&self) -> String {
        let kinds: Vec<&str> = self
            .config
            .model
            .heads
            .iter()
            .map(|h| h.kind.as_str())
            .collect();
        if kinds.is_empty() {
            "no output heads".into()
        } else {
            format!("the heads {}", kinds.join(", "))
        }
    }

    /// The name of the first configured head of `kind`.
    fn head_of_kind(&self, kind: &str) -> Option<&str> {
        self.config
            .model
            .heads
            .iter()
            .find(|h| h.kind == kind)
            .map(HeadConfig::name)
    }

    /// The side of the model's square input images.
    pub fn image_side(&self) -> u32 {
        self.config.data.image_size
    }

    /// Checks `request` with its image `bytes` (`source` names them in errors) against the
    /// model: an error here is the requester's.
    pub fn query(&self, request: &Request, source: &str, bytes: &[u8]) -> Result<Query> {
        if let Some(why) = self.missing_head(request.task) {
            return Err(RunError::Invalid(why));
        }
        Query::new(request, source, bytes, self.image_side())
    }

    /// Answers `queries` in order, running each task's queries as one batch.
    pub fn predict(&self, queries: &[Query]) -> Result<Vec<Answer>> {
        let mut answers: Vec<Option<Answer>> = vec![None; queries.len()];
        for task in Task::ALL {
            let (indices, chosen): (Vec<usize>, Vec<&Query>) = queries
                .iter()
                .enumerate()
                .filter(|(_, q)| q.task == task)
                .unzip();
            if chosen.is_empty() {
                continue;
            }
            let found = match task {
                Task::Caption | Task::Trace | Task::Locate => self.describe(&chosen)?,
                Task::Refer => self.refer(&chosen)?,
                Task::Densecap => self.densecap(&chosen)?,
            };
            for (i, answer) in indices.into_iter().zip(found) {
                answers[i] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|a| a.ok_or_else(|| RunError::Invalid("a query got no answer".into())))
            .collect()
    }

    /// Captioning, trace captioning and location captioning: one greedy generation each, with
    /// every token's location read where that token is the decoder's input.
    fn describe(&self, queries: &[&Query]) -> Result<Vec<Answer>> {
        let examples: Vec<Example> = queries
            .iter()
            .map(|q| match q.prompt {
                Some(b) => prompt_example(TaskKind::LocationCaptioning, q, b),
                None => prompt_example(TaskKind::TraceCaptioning, q, BoxXyxy::whole_image()),
            })
            .collect();
        let generated = self.model.generate(
            &self.model.batch(&examples)?,
            self.config.eval.max_new_tokens,
        )?;
        queries
            .iter()
            .zip(generated)
            .map(|(q, g)| {
                let t5 = self.t5_text(&g.ids);
                // Position 0 reads the start token; token k is read at position k + 1.
                let locations: Vec<Option<[f32; 4]>> = scored(&g.heads)
                    .map(|p| p.tokens.iter().skip(1).copied().collect())
                    .unwrap_or_default();
                let (caption, words) = words_at(&self.tokenizer, &t5, &locations, q.size())?;
                let mut answer = Answer::new(q.id.clone(), q.task, q.size());
                answer.caption = Some(caption);
                match q.task {
                    Task::Trace => answer.words = Some(words),
                    Task::Locate => answer.bbox = q.prompt.map(|b| to_pixels(b, q.size())),
                    _ => {}
                }
                Ok(answer)
            })
            .collect()
    }

    /// Referring localization as `pixel eval` scores it: the expression teacher-forced for a
    /// regression head (its last token gives the box), generated for a text head; a mask head
    /// segments inside that box.
    fn refer(&self, queries: &[&Query]) -> Result<Vec<Answer>> {
        let mut unknown = Vec::with_capacity(queries.len());
        let examples: Vec<Example> = queries
            .iter()
            .map(|q| {
                let (example, words) = self.referring_example(q)?;
                unknown.push(words);
                Ok(example)
            })
            .collect::<Result<_>>()?;
        let mask_head = self.head_of_kind("mask");
        let predictions = referring_head_predictions(&self.model, &examples)?;
        queries
            .iter()
            .zip(predictions)
            .zip(unknown)
            .map(|((q, heads), unknown_words)| {
                let mut answer = Answer::new(q.id.clone(), q.task, q.size());
                answer.bbox = scored(&heads)
                    .and_then(|p| p.object)
                    .map(|b| to_pixels(b, q.size()));
                if let Some(name) = mask_head {
                    let mask = prediction_of(&heads, name)?.mask.as_ref().ok_or_else(|| {
                        RunError::Invalid(format!("head \"{name}\" gave no mask"))
                    })?;
                    answer.mask = Some(mask_rle(mask, q.size()));
                }
                answer.unknown_words = unknown_words;
                Ok(answer)
            })
            .collect()
    }

    /// The referring example of a query, as `ExampleBuilder::referring_localization` builds it
    /// for training: prompt `where is <text>`, target the expression, whose last token reads the
    /// box. The box there only marks that token (and sizes a text head's answer); it is never
    /// read. Also the words the model's vocabulary lacks.
    fn referring_example(&self, q: &Query) -> Result<(Example, Vec<String>)> {
        let text = q.text.as_deref().unwrap_or_default();
        let vocab = &self.model.vocab;
        let encode = |text: &str| {
            self.tokenizer
                .encode(text)
                .map_err(|e| RunError::Invalid(e.to_string()))
        };
        let to_model = |ids: Vec<usize>| -> Vec<usize> {
            ids.into_iter().map(|id| vocab.to_model(id)).collect()
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut unknown = Vec::new();
        for word in &words {
            if encode(word)?.iter().any(|&id| vocab.to_model(id) == UNK_ID) {
                unknown.push(word.to_string());
            }
        }
        let context_ids = to_model(encode(&format!("{REFERRING_PREFIX}{text}"))?);
        let mut target_ids = to_model(tokenize_words(&self.tokenizer, &words)?.0);
        let marker = BoxXyxy::whole_image();
        let mut token_boxes = vec![None; target_ids.len()];
        if let Some(last) = token_boxes.last_mut() {
            *last = Some(marker);
        }
        target_ids.push(EOS_ID);
        token_boxes.push(None);
        let example = Example {
            task: TaskKind::ReferringLocalization,
            image: q.model_image.clone(),
            prompt_box: BoxXyxy::whole_image(),
            context_ids,
            target_ids,
            token_boxes,
            target_box: Some(marker),
            target_mask: None,
            object_boxes: Vec::new(),
        };
        Ok((example, unknown))
    }

    /// Dense captioning as `pixel eval` runs it: the detection head's best
    /// `eval.densecap_max_proposals` boxes, each captioned as a location prompt.
    fn densecap(&self, queries: &[&Query]) -> Result<Vec<Answer>> {
        let head = self
            .head_of_kind("detection")
            .ok_or_else(|| RunError::Invalid("the model has no detection head".into()))?;
        let carriers: Vec<Example> = queries
            .iter()
            .map(|q| prompt_example(TaskKind::TraceCaptioning, q, BoxXyxy::whole_image()))
            .collect();
        let mut proposals: Vec<Vec<Scored>> = Vec::with_capacity(queries.len());
        for heads in self
            .model
            .teacher_forced(&self.model.batch(&carriers)?)?
            .heads
        {
            let mut found = prediction_of(&heads, head)?.proposals.clone();
            found.truncate(self.config.eval.densecap_max_proposals);
            proposals.push(found);
        }
        let prompts: Vec<Example> = queries
            .iter()
            .zip(&proposals)
            .flat_map(|(q, found)| {
                found
                    .iter()
                    .map(|p| prompt_example(TaskKind::LocationCaptioning, q, p.bbox))
            })
            .collect();
        let mut captions = if prompts.is_empty() {
            Vec::new()
        } else {
            self.model.generate(
                &self.model.batch(&prompts)?,
                self.config.eval.max_new_tokens,
            )?
        }
        .into_iter()
        .map(|g| {
            self.tokenizer
                .decode(&self.t5_text(&g.ids))
                .map_err(|e| RunError::Invalid(e.to_string()))
        });
        queries
            .iter()
            .zip(proposals)
            .map(|(q, found)| {
                let mut answer = Answer::new(q.id.clone(), q.task, q.size());
                answer.regions = Some(
                    found
                        .into_iter()
                        .map(|p| {
                            let caption = captions.next().transpose()?.unwrap_or_default();
                            Ok(Region {
                                bbox: to_pixels(p.bbox, q.size()),
                                score: p.score,
                                caption,
                            })
                        })
                        .collect::<Result<_>>()?,
                );
                Ok(answer)
            })
            .collect()
    }

    /// T5 ids of generated model ids, up to the first EOS.
    fn t5_text(&self, ids: &[usize]) -> Vec<usize> {
        ids.iter()
            .map(|&id| self.model.vocab.to_t5(id))
            .take_while(|&id| id != EOS_ID && id != PAD_ID)
            .collect()
    }
}

/// A generation example with location prompt `prompt` and no text prompt or target, as
/// `ExampleBuilder::location_prompts` builds dense captioning's.
fn prompt_example(task: TaskKind, q: &Query, prompt: BoxXyxy) -> Example {
    Example {
        task,
        image: q.model_image.clone(),
        prompt_box: prompt,
        context_ids: vec![EOS_ID],
        target_ids: vec![EOS_ID],
        token_boxes: vec![None],
        target_box: (task == TaskKind::LocationCaptioning).then_some(prompt),
        target_mask: None,
        object_boxes: Vec::new(),
    }
}

/// What head `name` read off one example.
fn prediction_of<'p>(heads: &'p [HeadPrediction], name: &str) -> Result<&'p HeadPrediction> {
    heads
        .iter()
        .find(|h| h.head == name)
        .ok_or_else(|| RunError::Invalid(format!("head \"{name}\" gave no prediction")))
}

/// The `config.json` of the run `checkpoint` is in: the folder itself, or up to two folders
/// above a checkpoint folder or weights file (`RUN/checkpoints/step-N/model.safetensors`).
fn run_config(checkpoint: &Path) -> Result<PathBuf> {
    checkpoint
        .ancestors()
        .take(4)
        .map(|dir| dir.join("config.json"))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            RunError::Invalid(format!(
                "no config.json in `{}` or the run folder above it\n  help: give --config with \
                 the experiment config (TOML) the checkpoint was trained with",
                checkpoint.display()
            ))
        })
}

/// An experiment config: a run's `config.json`, or TOML.
fn read_config(path: &Path) -> Result<ExperimentConfig> {
    if path.extension().is_some_and(|e| e == "json") {
        let text = pixel_core::text::read_text(path).map_err(|e| RunError::io(path, e))?;
        let config: ExperimentConfig =
            serde_json::from_str(&text).map_err(|e| RunError::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    } else {
        ExperimentConfig::load(path)
    }
}
