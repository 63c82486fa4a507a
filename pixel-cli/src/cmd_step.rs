//! `pixel step`: a few timed training steps of any PixelLLM preset, from its components'
//! checkpoints or from scratch, with the process's peak memory (`pixel_run::model_step`).
use pixel_model::model::ModelConfig;
use pixel_run::model_step::{run_steps, StepOptions, StepReport};
use std::error::Error;
use std::path::PathBuf;

/// Time training steps of a PixelLLM preset (forward, backward, AdamW update) and its memory.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  pixel step --preset pixelllm-base --steps 2\n  \
    pixel step --config my-paper.toml --steps 1 --json\n\n\
    The [model] section of --config (a configs/models/ file with [model.checkpoints] naming\n\
    the components' files) is built as the paper trains it: SAM, its prompt encoder and T5\n\
    frozen, the rest trained. Without checkpoints every weight starts from scratch. The\n\
    examples are ShapesLN trace captions at the preset's image size."
)]
pub struct StepArgs {
    /// A TOML file with a [model] section; or use --preset.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A preset with the [model] section it ships with (configs/models/).
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long, default_value_t = 2)]
    pub steps: u64,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// AdamW's learning rate (the paper's).
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f32,
    /// Caption length in tokens, EOS included.
    #[arg(long, default_value_t = 16)]
    pub caption_tokens: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StepArgs) -> Result<(), Box<dyn Error>> {
    let config = match (&args.config, &args.preset) {
        (Some(path), _) => {
            let text = pixel_core::text::read_text(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            ModelConfig::from_toml(&text, path)?
        }
        (None, Some(preset)) => ModelConfig::shipped(preset).ok_or_else(|| {
            format!("no shipped [model] section for `{preset}` (configs/models/)")
        })??,
        (None, None) => return Err("give --config FILE or --preset NAME".into()),
    };
    let options = StepOptions {
        steps: args.steps,
        batch_size: args.batch_size,
        seed: args.seed,
        lr: args.lr,
        caption_tokens: args.caption_tokens,
    };
    let report = run_steps(&config, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn gb(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.2} GB", b as f64 / 1e9))
}

fn render(report: &StepReport) -> String {
    let mut out = format!(
        "{} at {} px: {} parameters, {} trainable; training needs at least {} before \
         activations\nbuilt in {:.1} s, peak RSS {}\n",
        report.preset,
        report.image_size,
        report.parameters,
        report.trainable_parameters,
        gb(Some(report.memory_floor_bytes)),
        report.build_s,
        gb(report.build_peak_rss_bytes)
    );
    if let Some((tensors, bytes)) = report.frozen_on_host {
        out.push_str(&format!(
            "{tensors} frozen weight matrices kept on the host: {}\n",
            gb(Some(bytes))
        ));
    }
    if let Some(load) = &report.load_report {
        out.push_str(load);
        if !load.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "{:>5} {:>10} {:>10} {:>10} {:>10} {:>12}\n",
        "step", "loss", "forward", "backward", "update", "peak RSS"
    ));
    for s in &report.steps {
        out.push_str(&format!(
            "{:>5} {:>10.4} {:>9.2}s {:>9.2}s {:>9.2}s {:>12}\n",
            s.step,
            s.loss,
            s.forward_s,
            s.backward_s,
            s.update_s,
            gb(s.peak_rss_bytes)
        ));
    }
    out
}
