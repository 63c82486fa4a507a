//! `pixel demo`: the main job, on the built-in config unless one is given.
use pixel_model::model::TinyHeadRegistry;
use pixel_run::demo::run_demo;
use pixel_run::experiment::ExperimentConfig;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Run folder for checkpoints, metrics.jsonl, metrics.json, loss.png and samples.png.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Experiment config (TOML); defaults to the built-in `configs/demo.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override the number of training steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Continue from the run folder's last checkpoint.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(args: DemoArgs, heads: &TinyHeadRegistry) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = match &args.config {
        Some(path) => ExperimentConfig::load(path)?,
        None => ExperimentConfig::builtin()?,
    };
    if let Some(steps) = args.steps {
        config.train.steps = steps;
    }
    let started = std::time::Instant::now();
    let metrics = run_demo(&config, &args.out, args.resume, heads)?;
    let r = &metrics.eval.referring_localization;
    let t = &metrics.eval.trace_captioning;
    println!(
        "referring localization: Acc@0.5 {:.3} (constant baseline {:.3}), mIoU {:.3} (baseline {:.3}) over {} expressions",
        r.acc50, r.baseline_acc50, r.miou, r.baseline_miou, r.count
    );
    let by = |groups: &std::collections::BTreeMap<usize, f32>| {
        groups
            .iter()
            .map(|(n, acc)| format!("{n}: {acc:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  Acc@0.5 by objects in the image: {}",
        by(&r.acc50_by_objects)
    );
    println!(
        "  box closest to the named object, by objects in the image: {}",
        by(&r.named_object_by_objects)
    );
    println!(
        "  Acc@0.5 by expression length in tokens: {}",
        by(&r.acc50_by_expression_tokens)
    );
    println!(
        "trace captioning: point L1 {:.4} (constant baseline {:.4}), token accuracy {:.3} over {} tokens",
        t.point_l1, t.baseline_point_l1, t.token_accuracy, t.tokens
    );
    for (head, own) in &metrics.eval.heads {
        let values: Vec<String> = own.iter().map(|(m, v)| format!("{m} {v:.4}")).collect();
        println!("head {head}: {}", values.join(", "));
    }
    println!(
        "wrote {}/{{metrics.json, loss.png, samples.png}} in {:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
