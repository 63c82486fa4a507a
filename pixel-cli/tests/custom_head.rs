//! A head defined outside `pixel-tasks` plugs in through the registry and a TOML config alone:
//! it trains (its loss falls), decodes, checkpoints under `heads.<name>.*`, and its keys are
//! checked with their path. `docs/HEADS.md` walks through this file.
use dfdx::prelude::*;
use pixel_core::loss::masked_l1;
use pixel_core::nn::Linear;
use pixel_core::params::{join, list_params, ParamVisitor, Params};
use pixel_lm::tokenizer::T5Tokenizer;
use pixel_tasks::demo::{DemoConfig, DEFAULT_DEMO_CONFIG};
use pixel_tasks::eval::Predictor;
use pixel_tasks::heads::{
    options, DecodedTokens, HeadBuild, HeadInputs, HeadPrediction, HeadRegistry, HeadTable,
    OutputHead, Reads,
};
use pixel_tasks::model::presets::LmWidth;
use pixel_tasks::model::{PixelTiny, TinyPixelLlm};
use pixel_tasks::shapes_ln::{ShapesLn, Split};
use pixel_tasks::tasks::{Example, ExampleBuilder};
use pixel_tasks::train::{read_log, train, RunDir, TapedScalar, TrainConfig};
use std::path::Path;

type Dev = pixel_core::DefaultDevice;

/// Regresses the centre of each token's box: one linear layer on the decoder features.
#[derive(Debug)]
struct CentreHead {
    name: String,
    layer: Linear<LmWidth<PixelTiny>, Const<2>, Dev>,
    /// `(p + 1) / 2` instead of a sigmoid.
    affine: bool,
}

/// The head's keys; unknown ones are refused with their path.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CentreOptions {
    #[serde(default)]
    affine: bool,
}

impl CentreHead {
    /// The registry's constructor: parse the keys, build the layers.
    fn build(
        build: &HeadBuild<'_, Dev>,
        table: &HeadTable,
    ) -> pixel_tasks::Result<Box<dyn OutputHead<PixelTiny, Dev>>> {
        let o: CentreOptions = options(table, &build.key)?;
        Ok(Box::new(CentreHead {
            name: build.name.clone(),
            layer: Linear::new(build.dev, true),
            affine: o.affine,
        }))
    }

    /// `[B, T, d_model]` -> `[B, T, 2]` centres in `[0, 1]`.
    fn forward<T: Tape<f32, Dev>>(
        &self,
        x: Tensor<(usize, usize, LmWidth<PixelTiny>), f32, Dev, T>,
    ) -> Tensor<(usize, usize, Const<2>), f32, Dev, T> {
        let p = self.layer.forward(x);
        if self.affine {
            (p + 1.0) * 0.5
        } else {
            p.sigmoid()
        }
    }
}

impl OutputHead<PixelTiny, Dev> for CentreHead {
    fn name(&self) -> &str {
        &self.name
    }

    fn reads(&self) -> Reads {
        Reads::DecoderFeatures
    }

    fn loss(
        &self,
        inputs: &HeadInputs<PixelTiny, Dev>,
    ) -> pixel_tasks::Result<Option<TapedScalar<Dev>>> {
        let batch = inputs.batch;
        // The batch's per-position boxes, as centres, and which positions have one.
        let targets: Vec<f32> = batch
            .location_targets
            .chunks(4)
            .flat_map(|b| [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0])
            .collect();
        let weights: Vec<f32> = batch
            .location_weights
            .chunks(4)
            .flat_map(|w| [w[0], w[0]])
            .collect();
        if weights.iter().all(|&w| w == 0.0) {
            return Ok(None);
        }
        let centres = self.forward(inputs.decoder.retaped::<OwnedTape<f32, Dev>>());
        Ok(Some(masked_l1(centres, &targets, &weights)?))
    }

    fn decode(
        &self,
        inputs: &HeadInputs<PixelTiny, Dev>,
        _tokens: &DecodedTokens,
        _earlier: &[Vec<HeadPrediction>],
    ) -> pixel_tasks::Result<Vec<HeadPrediction>> {
        let (b, t, _) = *inputs.decoder.shape();
        let centres = self.forward(inputs.decoder.clone()).as_vec();
        Ok((0..b)
            .map(|row| {
                let mut p = HeadPrediction::empty(&self.name, Reads::DecoderFeatures, t);
                for (i, slot) in p.tokens.iter_mut().enumerate() {
                    let c = &centres[(row * t + i) * 2..(row * t + i + 1) * 2];
                    *slot = Some([c[0], c[1], c[0], c[1]]);
                }
                p
            })
            .collect())
    }
}

impl Params<Dev> for CentreHead {
    fn visit_params(
        &mut self,
        prefix: &str,
        v: &mut dyn ParamVisitor<Dev>,
    ) -> pixel_core::Result<()> {
        self.layer.visit_params(&join(prefix, "layer"), v)
    }
}

/// The demo config with `heads` in place of its `[[model.heads]]`.
fn config(heads: &str) -> pixel_tasks::Result<DemoConfig> {
    let start = DEFAULT_DEMO_CONFIG.find("[[model.heads]]").unwrap();
    let end = DEFAULT_DEMO_CONFIG.find("[model.lm]").unwrap();
    let text = format!(
        "{}{heads}\n{}",
        &DEFAULT_DEMO_CONFIG[..start],
        &DEFAULT_DEMO_CONFIG[end..]
    );
    Ok(pixel_core::config::parse_toml(
        &text,
        Path::new("centre.toml"),
    )?)
}

fn registry() -> HeadRegistry<PixelTiny, Dev> {
    let mut registry = HeadRegistry::builtin();
    registry.register("centre", CentreHead::build);
    registry
}

fn examples(model: &TinyPixelLlm, config: &DemoConfig) -> Vec<Example> {
    let tokenizer = T5Tokenizer::bundled().unwrap();
    let builder = ExampleBuilder {
        tokenizer: &tokenizer,
        vocab: &model.vocab,
        max_target_tokens: 24,
    };
    let data = ShapesLn::new(config.data.clone(), 3).unwrap();
    (0..4)
        .flat_map(|i| {
            let sample = data.sample(Split::Train, i);
            let mut e = vec![builder.trace_captioning(&sample).unwrap()];
            e.extend(
                builder
                    .referring_localization(&sample)
                    .unwrap()
                    .into_iter()
                    .take(1),
            );
            e
        })
        .collect()
}

#[test]
fn a_head_from_outside_trains_and_decodes_through_config_alone() {
    let config =
        config("[[model.heads]]\nkind = \"centre\"\nweight = 1.0\naffine = false\n").unwrap();
    let mut model = TinyPixelLlm::build_with(&config.model, 0, &registry()).unwrap();
    let names: Vec<String> = list_params(&mut model)
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert!(names.contains(&"heads.centre.layer.weight".to_string()));

    let examples = examples(&model, &config);
    let train_config = TrainConfig {
        steps: 40,
        batch_size: examples.len(),
        peak_lr: 3e-3,
        warmup_steps: 5,
        log_every: 1,
        checkpoint_every: 0,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    train(
        &mut model,
        &config.model.trainable(),
        &train_config,
        &run,
        false,
        |_| Ok(examples.clone()),
    )
    .unwrap();
    let log = read_log(&run.metrics_log()).unwrap();
    let (first, last) = (log[0].location_loss, log[log.len() - 1].location_loss);
    assert!(
        last < first * 0.7,
        "the centre loss fell from {first} to {last} only"
    );

    let batch = model.batch(&examples).unwrap();
    let out = model.teacher_forced(&batch).unwrap();
    assert_eq!(out.heads.len(), examples.len());
    assert!(out.heads.iter().all(|h| h[0].head == "centre"));
    assert!(out.heads[0][0].tokens.iter().all(Option::is_some));
    let generated = model.generate(&batch, 8).unwrap();
    assert!(generated.iter().all(|g| g.heads[0].head == "centre"));
}

#[test]
fn the_outside_head_checks_its_keys_with_their_path() {
    let config = config("[[model.heads]]\nkind = \"centre\"\naffin = true\n").unwrap();
    let err = TinyPixelLlm::build_with(&config.model, 0, &registry())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("model.heads[0].affin: unknown field `affin`"),
        "{err}"
    );
    // Without registering it, the kind is unknown.
    let err = TinyPixelLlm::build(&config.model, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("model.heads[0].kind: unknown head \"centre\""),
        "{err}"
    );
}
