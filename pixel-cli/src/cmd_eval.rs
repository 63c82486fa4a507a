//! `pixel eval`: a trained checkpoint on every configured task; writes results.json and
//! results.md.
use pixel_model::model::TinyHeadRegistry;
use pixel_run::eval_run::{results_markdown, run_eval};
use pixel_run::experiment::ExperimentConfig;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    pixel eval --checkpoint runs/demo --out runs/demo/eval\n  \
    pixel eval --config configs/demo-files.toml --checkpoint runs/demo-files/checkpoints/step-0001600 --out runs/demo-files/eval")]
pub struct EvalArgs {
    /// Experiment config (TOML) the checkpoint was trained with; defaults to the built-in
    /// `configs/demo.toml`. Its `[eval]` section sets the image counts, `[dataset]` the data.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A run folder (its latest checkpoint), a checkpoint folder or a model.safetensors file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Folder for results.json and results.md.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: EvalArgs, heads: &TinyHeadRegistry) -> Result<(), Box<dyn std::error::Error>> {
    let config = match &args.config {
        Some(path) => ExperimentConfig::load(path)?,
        None => ExperimentConfig::builtin()?,
    };
    let results = run_eval(&config, &args.checkpoint, &args.out, heads)?;
    print!("{}", results_markdown(&results));
    println!(
        "wrote {}/{{results.json, results.md}} in {:.0} s",
        args.out.display(),
        results.wall_s
    );
    Ok(())
}
