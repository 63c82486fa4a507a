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
    if let Some(p) = &metrics.pretrain {
        println!(
            "LM pretrained by span corruption: {} steps, loss {} ({:.0} s when trained)",
            p.config.steps,
            loss_change(p.first_loss, p.final_loss),
            p.wall_s
        );
    }
    if let Some(p) = &metrics.pretrain_eva {
        println!(
            "EVA02 pretrained by region-phrase alignment: {} steps, held-out retrieval {:.3} ({:.0} s when trained)",
            p.config.steps, p.retrieval_top1, p.wall_s
        );
    }
    if let Some(p) = &metrics.pretrain_sam {
        println!(
            "SAM pretrained by promptable segmentation: {} steps, held-out mask mIoU {:.3} from boxes, {:.3} from points ({:.0} s when trained)",
            p.config.steps, p.box_miou, p.point_miou, p.wall_s
        );
    }
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

/// `first -> last` of a logged loss, or `?` where the log lacks it.
fn loss_change(first: Option<f32>, last: Option<f32>) -> String {
    let show = |v: Option<f32>| v.map_or("?".to_string(), |v| format!("{v:.3}"));
    format!("{} -> {}", show(first), show(last))
}
