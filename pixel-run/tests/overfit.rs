//! End to end: the tiny PixelLLM overfits a handful of ShapesLN examples, and a checkpoint
//! round trip gives identical outputs.
use pixel_core::checkpoint::{load_params_file, save_params};
use pixel_data::shapes_ln::{ShapesLn, Split};
use pixel_lm::tokenizer::T5Tokenizer;
use pixel_model::eval::Predictor;
use pixel_model::model::TinyPixelLlm;
use pixel_model::tasks::{Example, ExampleBuilder};
use pixel_run::experiment::ExperimentConfig;
use pixel_train::{read_log, train, RunDir, TrainConfig};

fn fixed_examples(model: &TinyPixelLlm, config: &ExperimentConfig) -> Vec<Example> {
    let tokenizer = T5Tokenizer::bundled().unwrap();
    let builder = ExampleBuilder {
        tokenizer: &tokenizer,
        vocab: &model.vocab,
        max_target_tokens: 40,
    };
    let data = ShapesLn::new(config.data.clone(), 5).unwrap();
    let mut examples = Vec::new();
    for i in 0..3 {
        let sample = data.sample(Split::Train, i);
        examples.push(builder.trace_captioning(&sample).unwrap());
        examples.extend(
            builder
                .referring_localization(&sample)
                .unwrap()
                .into_iter()
                .take(1),
        );
    }
    examples
}

#[test]
fn tiny_pixel_llm_overfits_a_handful_of_examples() {
    let mut config = ExperimentConfig::builtin().unwrap();
    // Without smoothing the text loss can approach 0, so a 10x fall is reachable.
    config.model.label_smoothing = 0.0;
    let mut model = TinyPixelLlm::build(&config.model, 1).unwrap();
    let examples = fixed_examples(&model, &config);
    let train_config = TrainConfig {
        steps: 150,
        batch_size: examples.len(),
        peak_lr: 3e-3,
        warmup_steps: 10,
        final_lr_ratio: 0.1,
        log_every: 1,
        checkpoint_every: 0,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let trainable = config.model.trainable();
    train(&mut model, &trainable, &train_config, &run, false, |_| {
        Ok(examples.clone())
    })
    .unwrap();
    let log = read_log(&run.metrics_log()).unwrap();
    let first = log.first().unwrap().loss;
    let last = log.last().unwrap().loss;
    assert!(last < first / 10.0, "loss fell from {first} to {last} only");
}

/// Equal outputs after a save and load: the same tokens, and locations equal up to the order of
/// float sums (exact on the CPU; CUDA's atomic reductions may differ in the last bit).
#[test]
fn checkpoint_round_trip_gives_the_same_outputs() {
    let config = ExperimentConfig::builtin().unwrap();
    let mut model = TinyPixelLlm::build(&config.model, 2).unwrap();
    let batch = model.batch(&fixed_examples(&model, &config)).unwrap();
    let before = model.teacher_forced(&batch).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_params(&mut model, &path, Default::default()).unwrap();
    let mut other = TinyPixelLlm::build(&config.model, 3).unwrap();
    assert_ne!(
        other.teacher_forced(&batch).unwrap().corners,
        before.corners
    );
    load_params_file(&mut other, &path).unwrap();
    let after = other.teacher_forced(&batch).unwrap();
    assert_eq!(after.argmax, before.argmax);
    assert_eq!(after.corners.len(), before.corners.len());
    let worst = after
        .corners
        .iter()
        .zip(&before.corners)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-6, "locations differ by up to {worst}");
}

#[test]
fn truncated_checkpoint_fails_with_a_clear_message() {
    let config = ExperimentConfig::builtin().unwrap();
    let mut model = TinyPixelLlm::build(&config.model, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_params(&mut model, &path, Default::default()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let message = load_params_file(&mut model, &path).unwrap_err().to_string();
    assert!(message.contains("model.safetensors"), "{message}");
    assert!(
        message.contains("not a valid safetensors file"),
        "{message}"
    );
}

#[test]
fn checkpoint_of_another_shape_lists_every_problem() {
    let config = ExperimentConfig::builtin().unwrap();
    let mut model = TinyPixelLlm::build(&config.model, 2).unwrap();
    let mut other_config = config.model.clone();
    other_config.output_tokens += 1;
    other_config.lm.mode = pixel_model::model::LmMode::Lora;
    let mut other = TinyPixelLlm::build(&other_config, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.safetensors");
    save_params(&mut other, &path, Default::default()).unwrap();
    let message = load_params_file(&mut model, &path).unwrap_err().to_string();
    assert!(
        message.contains("prompt_feature_extractor.output_tokens.weight` has shape"),
        "{message}"
    );
    assert!(
        message.contains("[9, 64], the model expects [8, 64]"),
        "{message}"
    );
    assert!(message.contains("unexpected tensor `language_model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"), "{message}");
}
