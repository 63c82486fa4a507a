//! A conformance kit for output heads: one call that checks any head, built-in or a user's,
//! against what the model, the trainer and evaluation rely on.
//!
//! [`check_head`] builds the tiny model with the given `[[model.heads]]` entries (the head under
//! test last, after any head it needs, e.g. the box head a mask head prompts with) and runs
//! random cases: batch sizes 1 to 4, caption lengths 2 to 24 tokens, every task mixed. In each
//! case the head must give
//! - one prediction per example, named after it, with one entry per decoder position,
//!   teacher-forced and generated;
//! - loss parts with unique names and finite values, each of which reaches the head's trainable
//!   tensors on its own (a gradient on at least one of them), and together a gradient on every
//!   one of them;
//! - metrics that run on its predictions and on no predictions at all, with finite values;
//! - the same predictions after its weights go through a checkpoint into a model built from
//!   another seed;
//! - a decode of a generation with no new token (an empty prediction) without an error;
//!
//! and its config entry must survive TOML and JSON round trips unchanged. A failure names the
//! check and the case (seed, batch size, caption length), so it can be run again alone.
use crate::error::{Result, RunError};
use crate::experiment::ExperimentConfig;
use dfdx::prelude::*;
use pixel_core::checkpoint::{collect_params, load_params, LoadOptions};
use pixel_core::optim::alloc_grads;
use pixel_core::params::{ParamTensor, ParamVisitor, Params, Trainable};
use pixel_core::DefaultDevice;
use pixel_data::shapes_ln::ShapesLn;
use pixel_lm::tokenizer::T5Tokenizer;
use pixel_model::eval::Predictor;
use pixel_model::heads::{HeadConfig, HeadInputs, HeadPrediction, OutputHead};
use pixel_model::model::PixelTiny;
use pixel_model::model::{TinyHeadRegistry, TinyPixelLlm};
use pixel_model::task_mix::training_examples;
use pixel_model::tasks::{Batch, Example, ExampleBuilder};
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// How [`check_head`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Conformance<'a> {
    /// Random cases to run.
    pub cases: usize,
    /// Seeds the cases (and the models they build).
    pub seed: u64,
    /// Tensor-name prefixes, below `heads.<name>.`, that no loss reaches by design (e.g. the
    /// mask decoder's multimask outputs); they may go without a gradient.
    pub unused: &'a [&'a str],
}

impl Default for Conformance<'_> {
    fn default() -> Self {
        Conformance {
            cases: 4,
            seed: 0,
            unused: &[],
        }
    }
}

/// One random case.
#[derive(Debug, Clone, Copy)]
struct Case {
    seed: u64,
    batch_size: usize,
    max_target_tokens: usize,
}

/// Checks the last head of `heads_toml` (one or more `[[model.heads]]` entries) built by
/// `registry`, as the module documentation says; the error names the check and the case.
pub fn check_head(registry: &TinyHeadRegistry, heads_toml: &str, run: Conformance) -> Result<()> {
    let config = config_with_heads(heads_toml)?;
    let head = config
        .model
        .heads
        .last()
        .ok_or_else(|| RunError::Invalid("conformance: no [[model.heads]] entry given".into()))?
        .clone();
    config_round_trips(&head)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(run.seed);
    for _ in 0..run.cases {
        let case = Case {
            seed: rng.gen(),
            batch_size: rng.gen_range(1..=4),
            max_target_tokens: rng.gen_range(2..=24),
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            check_case(registry, &config, head.name(), run.unused, case)
        }));
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("panicked: {}", panic_message(&panic)),
        };
        return Err(RunError::Invalid(format!(
            "head \"{}\" fails conformance in {case:?}: {failure}",
            head.name()
        )));
    }
    Ok(())
}

/// The built-in demo config with `heads_toml` in place of its heads, every task in the mix.
fn config_with_heads(heads_toml: &str) -> Result<ExperimentConfig> {
    let mut config = ExperimentConfig::builtin()?;
    #[derive(serde::Deserialize)]
    struct Heads {
        model: Model,
    }
    #[derive(serde::Deserialize)]
    struct Model {
        heads: Vec<HeadConfig>,
    }
    let parsed: Heads = toml::from_str(heads_toml).map_err(|e| RunError::Config {
        key: "model.heads".into(),
        message: e.to_string(),
    })?;
    config.model.heads = parsed.model.heads;
    config.model.validate()?;
    config.tasks.trace_captioning = 1.0;
    config.tasks.referring_localization = 1.0;
    config.tasks.location_captioning = 1.0;
    Ok(config)
}

/// The head's entry reads back equal from TOML and from JSON (run folders keep configs as JSON).
fn config_round_trips(head: &HeadConfig) -> Result<()> {
    let invalid = |what: &str, e: String| {
        RunError::Invalid(format!(
            "head \"{}\": config {what} round trip: {e}",
            head.name()
        ))
    };
    let toml_text = toml::to_string(head).map_err(|e| invalid("TOML", e.to_string()))?;
    let from_toml: HeadConfig =
        toml::from_str(&toml_text).map_err(|e| invalid("TOML", e.to_string()))?;
    let json = serde_json::to_string(head).map_err(|e| invalid("JSON", e.to_string()))?;
    let from_json: HeadConfig =
        serde_json::from_str(&json).map_err(|e| invalid("JSON", e.to_string()))?;
    for (what, back) in [("TOML", from_toml), ("JSON", from_json)] {
        if &back != head {
            return Err(invalid(what, format!("{head:?} came back as {back:?}")));
        }
    }
    Ok(())
}

fn check_case(
    registry: &TinyHeadRegistry,
    config: &ExperimentConfig,
    name: &str,
    unused: &[&str],
    case: Case,
) -> Result<()> {
    let mut model = TinyPixelLlm::build_with(&config.model, case.seed, registry)?;
    let tokenizer = T5Tokenizer::bundled().map_err(|e| RunError::Invalid(e.to_string()))?;
    let vocab = model.vocab.clone();
    let builder = ExampleBuilder {
        tokenizer: &tokenizer,
        vocab: &vocab,
        max_target_tokens: case.max_target_tokens,
    };
    let data = ShapesLn::new(config.data.clone(), case.seed)
        .map_err(|e| RunError::Invalid(format!("data: {e}")))?;
    let examples = training_examples(
        &data,
        &builder,
        &config.tasks,
        case.batch_size,
        case.seed,
        0,
    )?;
    let batch = model.batch(&examples)?;
    let index = model
        .heads
        .iter()
        .position(|h| h.name() == name)
        .ok_or_else(|| RunError::Invalid(format!("no head named \"{name}\" was built")))?;

    // Loss parts, each alone, then the model's total and its gradients.
    let trainable = config.model.trainable();
    let prefix = format!("heads.{name}.");
    let parts = model.with_head_inputs(&batch, |inputs| {
        part_gradients(&*model.heads[index], inputs)
    })??;
    for (part, grads) in &parts {
        let mut check = GradientCheck::new(grads, &trainable, &prefix, unused);
        model.visit_params("", &mut check)?;
        if check.reached.is_empty() {
            return Err(RunError::Invalid(format!(
                "loss part `{part}` reaches none of the head's trainable tensors"
            )));
        }
    }
    let grads = alloc_grads(&mut model, &trainable)?;
    let (total, _) = model.loss_terms(&batch, grads)?;
    let grads = total.backward();
    if !parts.is_empty() {
        let mut check = GradientCheck::new(&grads, &trainable, &prefix, unused);
        model.visit_params("", &mut check)?;
        if !check.missing.is_empty() {
            return Err(RunError::Invalid(format!(
                "no gradient reaches {:?}",
                check.missing
            )));
        }
    }

    // Shapes, teacher-forced and generated (with room for a few tokens, and for none).
    let forced = model.teacher_forced(&batch)?;
    check_shapes(&forced.heads, index, name, &model, batch.target_len, &batch)?;
    for max_new_tokens in [0, 3] {
        let generated = model.generate(&batch, max_new_tokens)?;
        let heads: Vec<_> = generated.iter().map(|g| g.heads.clone()).collect();
        let positions = generated.first().map_or(0, |g| g.ids.len() + 1);
        check_shapes(&heads, index, name, &model, positions, &batch)?;
    }

    // Metrics on the teacher-forced predictions and on none.
    let own: Vec<HeadPrediction> = forced.heads.iter().map(|h| h[index].clone()).collect();
    check_metrics(&*model.heads[index], &examples, &own)?;
    check_metrics(&*model.heads[index], &[], &[])?;

    // Checkpoint round trip into a model built from another seed.
    let mut store = Default::default();
    collect_params(&mut model, &mut store, "")?;
    let mut restored = TinyPixelLlm::build_with(&config.model, case.seed ^ 1, registry)?;
    load_params(&mut restored, &store, "", &LoadOptions::default())?;
    let again = restored.teacher_forced(&batch)?;
    let mine: Vec<_> = forced.heads.iter().map(|h| &h[index]).collect();
    let theirs: Vec<_> = again.heads.iter().map(|h| &h[index]).collect();
    if mine != theirs {
        return Err(RunError::Invalid(
            "its predictions differ after a checkpoint round trip".into(),
        ));
    }
    Ok(())
}

/// Each loss part of `head` by name, with the gradients of that part alone: its tape merged
/// with the others' (a part may hold a copy of a tensor whose tape another part carries) at
/// weight zero. An error when names repeat or a value is not finite.
fn part_gradients(
    head: &dyn OutputHead<PixelTiny, DefaultDevice>,
    inputs: &HeadInputs<PixelTiny, DefaultDevice>,
) -> Result<Vec<(String, Gradients<f32, DefaultDevice>)>> {
    let parts = head.loss(inputs)?;
    let mut names: Vec<String> = Vec::with_capacity(parts.len());
    for part in &parts {
        let value = part.loss.array();
        if names.contains(&part.name) {
            return Err(RunError::Invalid(format!(
                "two loss parts are named `{}`",
                part.name
            )));
        }
        if !value.is_finite() || !part.weight.is_finite() {
            return Err(RunError::Invalid(format!(
                "loss part `{}` is {value} with weight {}",
                part.name, part.weight
            )));
        }
        names.push(part.name.clone());
    }
    names
        .into_iter()
        .enumerate()
        .map(|(k, name)| {
            // The parts again, on fresh tapes (a backward pass consumes them).
            let alone = head
                .loss(inputs)?
                .into_iter()
                .enumerate()
                .map(|(j, p)| p.loss * if j == k { 1.0 } else { 0.0 })
                .reduce(|a, b| a + b)
                .ok_or_else(|| RunError::Invalid("the loss parts changed between calls".into()))?;
            Ok((name, alone.backward()))
        })
        .collect()
}

/// `head.metrics` runs on `examples` and `predictions` and gives finite values.
fn check_metrics(
    head: &dyn OutputHead<PixelTiny, DefaultDevice>,
    examples: &[Example],
    predictions: &[HeadPrediction],
) -> Result<()> {
    let metrics = head.metrics(examples, predictions).map_err(|e| {
        RunError::Invalid(format!("metrics on {} predictions: {e}", predictions.len()))
    })?;
    match metrics.iter().find(|(_, v)| !v.is_finite()) {
        Some((metric, value)) => Err(RunError::Invalid(format!(
            "metric `{metric}` is {value} on {} predictions",
            predictions.len()
        ))),
        None => Ok(()),
    }
}

/// `predictions` `[example][head]` has one prediction per example from every head, and head
/// `index`'s is named `name`, reads what the head reads and has one entry per position.
fn check_shapes(
    predictions: &[Vec<pixel_model::heads::HeadPrediction>],
    index: usize,
    name: &str,
    model: &TinyPixelLlm,
    positions: usize,
    batch: &Batch,
) -> Result<()> {
    if predictions.len() != batch.size {
        return Err(RunError::Invalid(format!(
            "{} predictions for {} examples",
            predictions.len(),
            batch.size
        )));
    }
    for (b, heads) in predictions.iter().enumerate() {
        let p = heads.get(index).ok_or_else(|| {
            RunError::Invalid(format!("example {b} has {} head predictions", heads.len()))
        })?;
        let reads = model.heads[index].reads();
        if p.head != name || p.reads != reads || p.tokens.len() != positions {
            return Err(RunError::Invalid(format!(
                "example {b}: expected head \"{name}\" reading {reads:?} at {positions} positions, got \"{}\" reading {:?} at {}",
                p.head,
                p.reads,
                p.tokens.len()
            )));
        }
    }
    Ok(())
}

/// Sorts the trainable tensors under `prefix` by whether their gradient is missing (or all
/// zero) or reached.
struct GradientCheck<'a> {
    grads: &'a Gradients<f32, DefaultDevice>,
    trainable: &'a Trainable,
    prefix: &'a str,
    unused: &'a [&'a str],
    missing: Vec<String>,
    reached: Vec<String>,
}

impl<'a> GradientCheck<'a> {
    fn new(
        grads: &'a Gradients<f32, DefaultDevice>,
        trainable: &'a Trainable,
        prefix: &'a str,
        unused: &'a [&'a str],
    ) -> Self {
        GradientCheck {
            grads,
            trainable,
            prefix,
            unused,
            missing: Vec::new(),
            reached: Vec::new(),
        }
    }
}

impl ParamVisitor<DefaultDevice> for GradientCheck<'_> {
    fn visit(
        &mut self,
        name: &str,
        t: &mut dyn ParamTensor<DefaultDevice>,
    ) -> pixel_core::Result<()> {
        let Some(rest) = name.strip_prefix(self.prefix) else {
            return Ok(());
        };
        if !self.trainable.is_trainable(name) || self.unused.iter().any(|u| rest.starts_with(u)) {
            return Ok(());
        }
        let t = &*t;
        // `grad` panics, as dfdx's `Gradients::get` does, when the tensor has no slot.
        let grad = catch_unwind(AssertUnwindSafe(|| t.grad(self.grads)));
        if grad.is_ok_and(|g| g.iter().any(|&v| v != 0.0)) {
            self.reached.push(name.to_string());
        } else {
            self.missing.push(name.to_string());
        }
        Ok(())
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixel_model::heads::{DecodedTokens, HeadBuild, HeadLossPart, HeadTable};

    /// Every built-in head passes, each with what it needs before it.
    #[test]
    fn every_built_in_head_conforms() {
        let registry = TinyHeadRegistry::builtin();
        let mask_unused: &[&str] = &[
            "mask_decoder.output_hypernetworks_mlps.1.",
            "mask_decoder.output_hypernetworks_mlps.2.",
            "mask_decoder.output_hypernetworks_mlps.3.",
        ];
        let heads: &[(&str, &[&str])] = &[
            ("[[model.heads]]\nkind = \"point\"\nweight = 0.1\n", &[]),
            (
                "[[model.heads]]\nkind = \"point\"\nreferring_box = { l1 = 5.0, giou = 2.0 }\n",
                &[],
            ),
            ("[[model.heads]]\nkind = \"box\"\n", &[]),
            ("[[model.heads]]\nkind = \"bins\"\n", &[]),
            ("[[model.heads]]\nkind = \"string\"\n", &[]),
            (
                "[[model.heads]]\nkind = \"point\"\n[[model.heads]]\nkind = \"detection\"\n",
                &[],
            ),
            (
                "[[model.heads]]\nkind = \"box\"\n[[model.heads]]\nkind = \"mask\"\nprompt = \"box\"\n",
                mask_unused,
            ),
        ];
        for (toml, unused) in heads {
            let run = Conformance {
                cases: 2,
                seed: 7,
                unused,
            };
            check_head(&registry, toml, run).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// How a [`Broken`] point head breaks the contract.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        /// Drops the last position of every prediction.
        ShortPositions,
        /// Adds a loss part that no parameter of the head reaches.
        DetachedPart,
        /// Gives its loss part twice.
        RepeatedPart,
        /// Has a metric that is NaN.
        NanMetric,
    }

    /// A point head with one [`Fault`].
    #[derive(Debug)]
    struct Broken(Box<dyn OutputHead<PixelTiny, DefaultDevice>>, Fault);

    impl Params<DefaultDevice> for Broken {
        fn visit_params(
            &mut self,
            prefix: &str,
            v: &mut dyn ParamVisitor<DefaultDevice>,
        ) -> pixel_core::Result<()> {
            self.0.visit_params(prefix, v)
        }
    }

    impl OutputHead<PixelTiny, DefaultDevice> for Broken {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn reads(&self) -> pixel_model::heads::Reads {
            self.0.reads()
        }
        fn loss(
            &self,
            inputs: &HeadInputs<PixelTiny, DefaultDevice>,
        ) -> pixel_model::Result<Vec<HeadLossPart<DefaultDevice>>> {
            let mut parts = self.0.loss(inputs)?;
            match self.1 {
                Fault::DetachedPart => {
                    let features = inputs.decoder.retaped::<OwnedTape<f32, DefaultDevice>>();
                    parts.push(HeadLossPart::named("detached", features.sum(), 1.0));
                }
                Fault::RepeatedPart => parts.extend(self.0.loss(inputs)?),
                _ => {}
            }
            Ok(parts)
        }
        fn decode(
            &self,
            inputs: &HeadInputs<PixelTiny, DefaultDevice>,
            tokens: &DecodedTokens,
            earlier: &[Vec<HeadPrediction>],
        ) -> pixel_model::Result<Vec<HeadPrediction>> {
            let mut predictions = self.0.decode(inputs, tokens, earlier)?;
            if let Fault::ShortPositions = self.1 {
                predictions.iter_mut().for_each(|p| {
                    p.tokens.pop();
                });
            }
            Ok(predictions)
        }
        fn metrics(
            &self,
            _examples: &[Example],
            _predictions: &[HeadPrediction],
        ) -> pixel_model::Result<std::collections::BTreeMap<String, f64>> {
            Ok(match self.1 {
                Fault::NanMetric => [("broken".to_string(), f64::NAN)].into(),
                _ => Default::default(),
            })
        }
    }

    type Built = pixel_model::Result<Box<dyn OutputHead<PixelTiny, DefaultDevice>>>;

    fn broken(build: &HeadBuild<'_, DefaultDevice>, table: &HeadTable, fault: Fault) -> Built {
        let point = pixel_model::heads::point::build(build, table)?;
        Ok(Box::new(Broken(point, fault)))
    }

    /// The kit fails a head that breaks the contract, an unknown kind and an invalid entry.
    #[test]
    fn the_kit_fails_what_breaks_the_contract() {
        let mut registry = TinyHeadRegistry::builtin();
        registry.register("short", |b, t| broken(b, t, Fault::ShortPositions));
        registry.register("detached", |b, t| broken(b, t, Fault::DetachedPart));
        registry.register("repeated", |b, t| broken(b, t, Fault::RepeatedPart));
        registry.register("nan_metric", |b, t| broken(b, t, Fault::NanMetric));
        let failure = |kind: &str| {
            check_head(
                &registry,
                &format!("[[model.heads]]\nkind = \"{kind}\"\n"),
                Conformance::default(),
            )
            .unwrap_err()
            .to_string()
        };
        for (kind, expected) in [
            ("short", "positions"),
            ("detached", "loss part `detached` reaches none"),
            ("repeated", "two loss parts are named"),
            ("nan_metric", "metric `broken` is NaN"),
        ] {
            let message = failure(kind);
            assert!(message.contains(expected), "{kind}: {message}");
        }
        assert!(failure("nope").contains("nope"));
        let nan = check_head(
            &registry,
            "[[model.heads]]\nkind = \"point\"\nweight = nan\n",
            Conformance::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(nan.contains("weight"), "{nan}");
    }
}
