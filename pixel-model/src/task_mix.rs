//! Which examples a training step draws (each task's share, a curriculum over steps) and
//! which examples evaluation scores, from any sample source.
use crate::error::{ModelError, Result};
use crate::tasks::{Example, ExampleBuilder};
use pixel_data::data_source::SampleSource;
use pixel_data::shapes_ln::Split;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How often each task is drawn when filling a training batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMix {
    /// The tasks' shares (finite, >= 0, not all 0).
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub trace_captioning: f32,
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub referring_localization: f32,
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub location_captioning: f32,
    /// Captions are cut to this many tokens (EOS included); at least 2.
    #[serde(deserialize_with = "at_least_two")]
    pub max_target_tokens: usize,
    /// Referring examples are drawn only from images with at least this many objects (their
    /// regions, as evaluation counts them): 1, the default, takes any image; 2 spends the
    /// referring share on expressions that must be bound to one of several objects.
    #[serde(
        default = "one_object",
        deserialize_with = "pixel_core::config::range::count"
    )]
    pub referring_min_objects: usize,
    /// A curriculum: from each entry's `from_step` on (increasing), its shares replace the
    /// ones above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<LaterTaskMix>,
}

/// Task shares that take over from a step on (`[[tasks.schedule]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaterTaskMix {
    pub from_step: u64,
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub trace_captioning: f32,
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub referring_localization: f32,
    #[serde(deserialize_with = "pixel_core::config::range::non_negative")]
    pub location_captioning: f32,
    /// As [`TaskMix::referring_min_objects`], from `from_step` on.
    #[serde(
        default = "one_object",
        deserialize_with = "pixel_core::config::range::count"
    )]
    pub referring_min_objects: usize,
}

fn one_object() -> usize {
    1
}

impl TaskMix {
    /// The schedule entry in force at `step`; `None` before the first.
    fn later_at(&self, step: u64) -> Option<&LaterTaskMix> {
        self.schedule
            .iter()
            .rev()
            .find(|later| step >= later.from_step)
    }

    /// The fewest objects an image needs to give a referring example at `step`.
    pub fn referring_min_objects_at(&self, step: u64) -> usize {
        self.later_at(step)
            .map_or(self.referring_min_objects, |l| l.referring_min_objects)
    }

    /// The shares (trace captioning, referring, location captioning) in force at `step`.
    pub fn shares_at(&self, step: u64) -> [f32; 3] {
        self.later_at(step).map_or(
            [
                self.trace_captioning,
                self.referring_localization,
                self.location_captioning,
            ],
            |later| {
                [
                    later.trace_captioning,
                    later.referring_localization,
                    later.location_captioning,
                ]
            },
        )
    }

    /// Whether some step of the run draws location-captioning examples (evaluation then
    /// scores the task).
    pub fn trains_location_captioning(&self) -> bool {
        self.location_captioning > 0.0 || self.schedule.iter().any(|l| l.location_captioning > 0.0)
    }

    /// Every set of shares has a positive total, and the schedule's steps increase.
    pub fn check(&self) -> std::result::Result<(), ModelError> {
        let invalid = |key: String, message: String| ModelError::Config { key, message };
        let steps: Vec<u64> = self.schedule.iter().map(|l| l.from_step).collect();
        if steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid(
                "tasks.schedule".into(),
                format!("from_step must increase, got {steps:?}"),
            ));
        }
        let first = std::iter::once((String::from("tasks"), self.shares_at(0)));
        let later = self
            .schedule
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("tasks.schedule[{i}]"), self.shares_at(l.from_step)));
        for (key, shares) in first.chain(later) {
            if shares.iter().sum::<f32>() <= 0.0 {
                return Err(invalid(
                    key,
                    "the task shares are all 0: give at least one task a share".into(),
                ));
            }
        }
        Ok(())
    }
}

fn at_least_two<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    let v = usize::deserialize(d)?;
    if v >= 2 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be at least 2 (a word and EOS), got {v}"
        )))
    }
}

/// Draws in a row without an example before [`training_examples`] gives up on the data.
const MAX_EMPTY_DRAWS: usize = 1000;

/// Draws the examples of training step `step`: deterministic in `(seed, step)`.
pub fn training_examples(
    data: &impl SampleSource,
    builder: &ExampleBuilder,
    mix: &TaskMix,
    batch_size: usize,
    seed: u64,
    step: u64,
) -> Result<Vec<Example>> {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let [trace, referring, location] = mix.shares_at(step);
    let total = trace + referring + location;
    if total.is_nan() || total <= 0.0 {
        return Err(ModelError::Invalid(format!(
            "tasks: at step {step} no task share is positive"
        )));
    }
    let min_objects = mix.referring_min_objects_at(step);
    let mut examples = Vec::with_capacity(batch_size);
    let mut empty_draws = 0;
    while examples.len() < batch_size {
        let sample = data.load(Split::Train, rng.gen_range(0..data.images(Split::Train)))?;
        let pick = rng.gen::<f32>() * total;
        let mut candidates = if pick < trace {
            vec![builder.trace_captioning(&sample)?]
        } else if pick < trace + referring {
            let mut referring = builder.referring_localization(&sample)?;
            referring.retain(|e| e.object_boxes.len() >= min_objects);
            referring
        } else {
            builder.location_captioning(&sample)?
        };
        if candidates.is_empty() {
            // A file sample may lack the drawn task (an image without referring expressions),
            // or have fewer objects than the referring examples need.
            empty_draws += 1;
            if empty_draws == MAX_EMPTY_DRAWS {
                return Err(ModelError::Config {
                    key: "tasks".into(),
                    message: format!(
                        "at step {step}, {MAX_EMPTY_DRAWS} training images in a row had no example of the drawn task (referring examples need images with at least {min_objects} objects: referring_min_objects)"
                    ),
                });
            }
            continue;
        }
        empty_draws = 0;
        let i = rng.gen_range(0..candidates.len());
        examples.push(candidates.swap_remove(i));
    }
    Ok(examples)
}

/// Every example of the evaluated tasks for images `0..count` of `split` (or all it has).
pub fn evaluation_examples(
    data: &impl SampleSource,
    builder: &ExampleBuilder,
    split: Split,
    count: u64,
) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    for i in 0..count.min(data.images(split)) {
        let sample = data.load(split, i)?;
        examples.push(builder.trace_captioning(&sample)?);
        examples.extend(builder.referring_localization(&sample)?);
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::TaskKind;
    use crate::testing::demo_section;
    use crate::vocab::VocabMap;
    use pixel_data::shapes_ln::ShapesLn;
    use pixel_lm::tokenizer::T5Tokenizer;

    #[test]
    fn a_task_schedule_takes_over_from_its_steps() {
        let mut mix: TaskMix = demo_section("tasks");
        let later = |from_step, referring| LaterTaskMix {
            from_step,
            trace_captioning: 1.0 - referring,
            referring_localization: referring,
            location_captioning: 0.0,
            referring_min_objects: 1,
        };
        mix.schedule = vec![later(10, 0.75), later(20, 1.0)];
        assert!(!mix.trains_location_captioning());
        mix.schedule[0].location_captioning = 0.1;
        assert!(mix.trains_location_captioning());
        mix.schedule[0].location_captioning = 0.0;
        let referring: Vec<f32> = [0, 9, 10, 19, 20, 99]
            .iter()
            .map(|&s| mix.shares_at(s)[1])
            .collect();
        assert_eq!(referring, vec![0.5, 0.5, 0.75, 0.75, 1.0, 1.0]);
        assert!(mix.check().is_ok());
        // Only referring from step 20: every drawn example is one.
        let data = ShapesLn::new(demo_section("data"), 0).unwrap();
        let tokenizer = T5Tokenizer::bundled().unwrap();
        let vocab = VocabMap::identity(32128);
        let builder = ExampleBuilder {
            tokenizer: &tokenizer,
            vocab: &vocab,
            max_target_tokens: 40,
        };
        let drawn = training_examples(&data, &builder, &mix, 16, 0, 20).unwrap();
        assert!(drawn
            .iter()
            .all(|e| e.task == TaskKind::ReferringLocalization));

        // Referring examples from images with several objects only, from step 20 on.
        let objects = |mix: &TaskMix, step| -> Vec<usize> {
            (0..4)
                .flat_map(|seed| training_examples(&data, &builder, mix, 16, seed, step).unwrap())
                .map(|e| e.object_boxes.len())
                .collect()
        };
        assert!(objects(&mix, 20).contains(&1), "ShapesLN has lone objects");
        mix.schedule[1].referring_min_objects = 2;
        assert_eq!(mix.referring_min_objects_at(19), 1);
        assert!(objects(&mix, 20).iter().all(|&n| n >= 2));
        assert!(objects(&mix, 19).contains(&1), "before step 20, any image");
        // More objects than any image has: an error that names the key, not an endless draw.
        mix.schedule[1].referring_min_objects = 4;
        let err = training_examples(&data, &builder, &mix, 16, 0, 20).unwrap_err();
        assert!(err.to_string().contains("referring_min_objects"), "{err}");
    }

    #[test]
    fn training_batches_are_deterministic_in_step() {
        let tokenizer = T5Tokenizer::bundled().unwrap();
        let tasks: TaskMix = demo_section("tasks");
        let data = ShapesLn::new(demo_section("data"), 0).unwrap();
        let vocab = VocabMap::identity(32128);
        let builder = ExampleBuilder {
            tokenizer: &tokenizer,
            vocab: &vocab,
            max_target_tokens: 48,
        };
        let a = training_examples(&data, &builder, &tasks, 4, 0, 7).unwrap();
        let b = training_examples(&data, &builder, &tasks, 4, 0, 7).unwrap();
        let c = training_examples(&data, &builder, &tasks, 4, 0, 8).unwrap();
        let ids = |e: &[Example]| e.iter().map(|x| x.target_ids.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(ids(&a), ids(&c));
        assert!(
            a.iter().all(|e| e.task != TaskKind::LocationCaptioning)
                || tasks.location_captioning > 0.0
        );
    }
}
