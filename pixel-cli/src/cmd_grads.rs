//! `pixel grads`: one training step's initial weights, batch and gradients as safetensors, for
//! the PyTorch twin (`tools/twin/grads.py`) to recompute and compare.
use pixel_model::model::TinyHeadRegistry;
use pixel_run::experiment::ExperimentConfig;
use pixel_run::grads::write_grads;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct GradsArgs {
    /// Experiment config (TOML); defaults to the built-in `configs/demo.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seeds the model's initialisation (the config's `model_seed`, else its `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the batch size (a small batch keeps a committed fixture small).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// The training step whose batch is drawn.
    #[arg(long, default_value_t = 0)]
    pub step: u64,
    /// Also write the batches of training steps 0..N and the validation batches (for
    /// `tools/twin/train.py`).
    #[arg(long, default_value_t = 0)]
    pub train_steps: u64,
    /// Folder for config.toml, init.safetensors, batch.safetensors and grads.safetensors.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: GradsArgs, heads: &TinyHeadRegistry) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = match &args.config {
        Some(path) => ExperimentConfig::load(path)?,
        None => ExperimentConfig::builtin()?,
    };
    if let Some(seed) = args.seed {
        config.model_seed = Some(seed);
    }
    if let Some(size) = args.batch_size {
        config.train.batch_size = size;
    }
    let report = write_grads(&config, args.step, args.train_steps, &args.out, heads)?;
    let losses: Vec<String> = report
        .losses
        .iter()
        .map(|(name, value)| format!("{name} {value:.6}"))
        .collect();
    println!(
        "wrote {}: {} trainable tensors' gradients on a batch of {}; loss {}",
        args.out.display(),
        report.trainable_tensors,
        report.batch_size,
        losses.join(", ")
    );
    Ok(())
}
