//! The PixelLLM command line as a library: [`run`] parses the arguments and runs a subcommand
//! with the head kinds it is given. The `pixel` binary passes the built-in heads; a project
//! with a head of its own passes a registry with that head added and gets every subcommand
//! (demo, eval, ablate, grads) with it (`examples/custom-head`). It holds no model logic; each
//! subcommand calls a crate.
mod cmd_ablate;
mod cmd_demo;
mod cmd_eval;
mod cmd_export;
mod cmd_grads;
mod cmd_inspect;
mod cmd_lm;
mod cmd_metrics;
mod cmd_predict;
// The server shares one model between request threads; dfdx's CUDA device holds raw stream
// handles that are neither Send nor Sync, so a `cuda` build has no `serve` (a model-owning
// worker thread would lift this).
#[cfg(not(feature = "cuda"))]
mod cmd_serve;
mod cmd_step;
mod cmd_vision;
mod progress;

use clap::{Parser, Subcommand};
use pixel_model::model::TinyHeadRegistry;
use std::process::ExitCode;

const EXAMPLES: &str = "Examples:
  pixel demo                                    train + evaluate the tiny model (8 min on 2 cores)
  pixel demo --out runs/demo --resume           continue an interrupted demo
  pixel ablate --config configs/ablations/lm-adaptation.toml --out runs/ablate-lm
  pixel eval --checkpoint runs/demo --out runs/demo/eval
  pixel predict --checkpoint runs/demo --image photo.png --task refer --text \"the red circle\" --out runs/photo
  pixel serve --checkpoint runs/demo --port 8080   (then open http://127.0.0.1:8080)
  pixel export-shapes --out runs/shapes-ln-files --train 4000 --val 150
  pixel grads --config configs/demo.toml --seed 0 --out runs/grads   (then tools/twin/grads.py)
  pixel lm forward --model DIR --inputs IN.safetensors --out OUT.safetensors
  pixel lm generate --model DIR --inputs IN.safetensors --max-new-tokens 20 --num-beams 4 --out OUT.safetensors
  pixel tokenize --tokenizer assets/t5-tokenizer.json \"a man holding a red umbrella\"
  pixel vision forward --model sam-folder --inputs IN.safetensors --out OUT.safetensors
  pixel sam predict --model sam-folder --inputs IN.safetensors --multimask --out OUT.safetensors
  pixel inspect --preset pixelllm-paper
  pixel step --preset pixelllm-base --steps 2     timed training steps of a paper-size preset
  pixel inspect --preset sam-vit-h
  pixel metrics refloc --gt G.json --preds P.json";

#[derive(Debug, Parser)]
#[command(name = "pixel", version, about = "PixelLLM: pixel-aligned language models in Rust", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a tiny PixelLLM on synthetic ShapesLN data, evaluate it, draw loss and samples.
    Demo(cmd_demo::DemoArgs),
    /// Train and evaluate every variant of an ablation config over seeds; tabulate mean ± std.
    Ablate(cmd_ablate::AblateArgs),
    /// Evaluate a checkpoint on every configured task; write results.json and results.md.
    Eval(cmd_eval::EvalArgs),
    /// Use a trained model on your own images: captions with points, referring boxes and masks,
    /// captions of boxes, dense captions; JSON and annotated PNGs.
    Predict(cmd_predict::PredictArgs),
    /// Serve a trained model: a JSON API at POST /api/predict and a page to try it at /.
    #[cfg(not(feature = "cuda"))]
    Serve(cmd_serve::ServeArgs),
    /// Write ShapesLN as Localized Narratives, RefCOCO (MDETR) and Visual Genome files.
    ExportShapes(cmd_export::ExportArgs),
    /// One training step's initial weights, batch and gradients, for the PyTorch twin.
    Grads(cmd_grads::GradsArgs),
    /// T5 / Flan-T5: tensors in, tensors out, equal to HF transformers.
    #[command(subcommand)]
    Lm(cmd_lm::LmCommand),
    /// Print the T5 token ids of texts as JSON.
    Tokenize(cmd_lm::TokenizeArgs),
    /// Image encoders (SAM, EVA02): tensors in, tensors out.
    #[command(subcommand)]
    Vision(cmd_vision::VisionCommand),
    /// Segment Anything: masks and IoU scores from point or box prompts.
    #[command(subcommand)]
    Sam(cmd_vision::SamCommand),
    /// Print a preset's parameters: per part, trainable and frozen, and its module tree.
    Inspect(cmd_inspect::InspectArgs),
    /// Time training steps of any PixelLLM preset, from its components' checkpoints or from
    /// scratch, with the peak memory.
    Step(cmd_step::StepArgs),
    /// Captioning, referring-localization and dense-captioning metrics, as JSON.
    #[command(subcommand)]
    Metrics(cmd_metrics::MetricsCommand),
}

/// The tiny model's matrix products are too small to split: one thread per training run is
/// faster (measured on 2 cores: 0.30 s per demo step against 0.43 s with two threads, same
/// results), and `pixel ablate` runs its jobs side by side. `RAYON_NUM_THREADS` decides when set.
fn one_thread_per_run() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Errs only when a global pool exists already, which then stays as it is.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build_global();
    }
}

/// Runs the command line of this process's arguments with the head kinds of `heads`; errors
/// are printed and give exit code 1.
pub fn run(heads: TinyHeadRegistry) -> ExitCode {
    let cli = Cli::parse();
    progress::install();
    if matches!(
        cli.command,
        Command::Demo(_) | Command::Ablate(_) | Command::Eval(_) | Command::Grads(_)
    ) {
        one_thread_per_run();
    }
    let result = match cli.command {
        Command::Demo(args) => cmd_demo::run(args, &heads),
        Command::Ablate(args) => cmd_ablate::run(args, &heads),
        Command::Eval(args) => cmd_eval::run(args, &heads),
        Command::Predict(args) => cmd_predict::run(args, &heads),
        #[cfg(not(feature = "cuda"))]
        Command::Serve(args) => cmd_serve::run(args, &heads),
        Command::ExportShapes(args) => cmd_export::run(args),
        Command::Grads(args) => cmd_grads::run(args, &heads),
        Command::Lm(cmd) => cmd_lm::run(cmd),
        Command::Tokenize(args) => cmd_lm::tokenize(args),
        Command::Vision(cmd) => cmd_vision::run_vision(cmd),
        Command::Sam(cmd) => cmd_vision::run_sam(cmd),
        Command::Inspect(args) => cmd_inspect::run(args),
        Command::Step(args) => cmd_step::run(args),
        Command::Metrics(cmd) => cmd_metrics::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
