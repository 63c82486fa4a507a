//! `pixel ablate`: every variant of an ablation config over its seeds, tabulated.
use pixel_model::model::TinyHeadRegistry;
use pixel_run::ablate::{run_ablation, Ablation};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct AblateArgs {
    /// Ablation config (TOML), e.g. configs/ablations/lm-adaptation.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// Output folder: runs/<variant>/seed-<seed>/, results.json, results.md, results.png.
    /// Finished runs already there are reused, interrupted ones resume.
    #[arg(long)]
    pub out: PathBuf,
    /// Runs trained at once (default: the config's `parallel`); each run uses one core.
    #[arg(long)]
    pub jobs: Option<usize>,
}

pub fn run(args: AblateArgs, heads: &TinyHeadRegistry) -> Result<(), Box<dyn std::error::Error>> {
    let ablation = Ablation::load(&args.config)?;
    let results = run_ablation(&ablation, &args.out, args.jobs, heads)?;
    print!("{}", pixel_run::ablate::markdown(&results));
    println!(
        "wrote {}/{{results.json, results.md, results.png}}",
        args.out.display()
    );
    Ok(())
}
