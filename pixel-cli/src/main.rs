//! `pixel`: the PixelLLM command line. It holds no model logic; each subcommand calls a crate.
mod cmd_demo;
mod cmd_metrics;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "Examples:
  pixel demo                                   train + evaluate the tiny model (~10 min on 2 cores)
  pixel demo --out runs/demo --resume          continue an interrupted demo
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
    /// Captioning, referring-localization and dense-captioning metrics, as JSON.
    #[command(subcommand)]
    Metrics(cmd_metrics::MetricsCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => cmd_demo::run(args),
        Command::Metrics(cmd) => cmd_metrics::run(cmd),
    };
    if let Err(err) = result {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}
