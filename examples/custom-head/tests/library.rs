//! The circle head at the library level: built from a config through the example's registry,
//! it trains (its loss falls), decodes teacher-forced and generated (with its circles), names
//! its tensors `heads.circle.*`, and checks its keys with their path. `docs/HEADS.md` walks
//! through it.
use pixel_core::params::list_params;
use pixel_data::shapes_ln::{ShapesLn, Split};
use pixel_lm::tokenizer::T5Tokenizer;
use pixel_model::eval::Predictor;
use pixel_model::model::TinyPixelLlm;
use pixel_model::tasks::{Example, ExampleBuilder};
use pixel_run::experiment::{ExperimentConfig, DEFAULT_DEMO_CONFIG};
use pixel_train::{read_log, train, RunDir, TrainConfig};
use std::path::Path;

/// The demo config with `heads` in place of its `[[model.heads]]`.
fn config(heads: &str) -> pixel_run::Result<ExperimentConfig> {
    let start = DEFAULT_DEMO_CONFIG.find("[[model.heads]]").unwrap();
    let end = DEFAULT_DEMO_CONFIG.find("[model.lm]").unwrap();
    let text = format!(
        "{}{heads}\n{}",
        &DEFAULT_DEMO_CONFIG[..start],
        &DEFAULT_DEMO_CONFIG[end..]
    );
    Ok(pixel_core::config::parse_toml(
        &text,
        Path::new("circle.toml"),
    )?)
}

fn examples(model: &TinyPixelLlm, config: &ExperimentConfig) -> Vec<Example> {
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
    let config = config("[[model.heads]]\nkind = \"circle\"\nweight = 1.0\n").unwrap();
    let mut model = TinyPixelLlm::build_with(&config.model, 0, &custom_head::registry()).unwrap();
    let names: Vec<String> = list_params(&mut model)
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert!(names.contains(&"heads.circle.mlp.layers.1.weight".to_string()));

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
    // The head's loss is logged under its own name.
    let circle = |i: usize| {
        log[i]
            .part("circle")
            .expect("a circle loss part")
            .unweighted
    };
    let (first, last) = (circle(0), circle(log.len() - 1));
    assert!(
        last < first * 0.7,
        "the circle loss fell from {first} to {last} only"
    );

    let batch = model.batch(&examples).unwrap();
    let out = model.teacher_forced(&batch).unwrap();
    assert_eq!(out.heads.len(), examples.len());
    assert!(out.heads.iter().all(|h| h[0].head == "circle"));
    assert!(out.heads[0][0].tokens.iter().all(Option::is_some));
    // Its own output type travels in the prediction: a circle per position.
    let circles = out.heads[0][0]
        .extra::<custom_head::Circles>()
        .expect("the circles");
    assert_eq!(circles.tokens.len(), out.heads[0][0].tokens.len());
    let generated = model.generate(&batch, 8).unwrap();
    assert!(generated.iter().all(|g| g.heads[0].head == "circle"));
}

#[test]
fn the_outside_head_checks_its_keys_with_their_path() {
    let config = config("[[model.heads]]\nkind = \"circle\"\ndepht = 3\n").unwrap();
    let err = TinyPixelLlm::build_with(&config.model, 0, &custom_head::registry())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("model.heads[0].depht: unknown field `depht`"),
        "{err}"
    );
    // Without registering it, the kind is unknown.
    let err = TinyPixelLlm::build(&config.model, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("model.heads[0].kind: unknown head \"circle\""),
        "{err}"
    );
}

/// The circle head passes the conformance kit every built-in head passes.
#[test]
fn the_circle_head_conforms() {
    pixel_run::head_conformance::check_head(
        &custom_head::registry(),
        "[[model.heads]]\nkind = \"circle\"\nweight = 1.0\n",
        pixel_run::head_conformance::Conformance::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
