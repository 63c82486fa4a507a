//! A tiny ablation end to end: 2 variants (bin-token coordinates; LoRA on a pretrained LM) x 3
//! seeds x a few steps, each on an EVA02 pretrained a few steps, then the same command again,
//! which reuses every finished run.
use pixel_model::heads::HeadRegistry;
use pixel_run::ablate::{pretraining_plan, run_ablation, Ablation};
use std::path::Path;

const TINY: &str = r#"
title = "tiny"
base = "builtin"
seeds = [0, 1, 2]
parallel = 2

[overrides]
train.steps = 3
train.batch_size = 2
train.warmup_steps = 1
train.checkpoint_every = 0
eval.validation_images = 2
eval.baseline_images = 4
eval.sample_images = 1
eval.max_new_tokens = 6
tasks.max_target_tokens = 12
pretrain_eva = { steps = 2, batch_size = 4, peak_lr = 1e-3, warmup_steps = 1, eval_images = 2, cache = "EVA_CACHE" }

[[metrics]]
key = "referring_localization.acc50"
label = "Acc@0.5"
higher_is_better = true

[[metrics]]
key = "trace_captioning.point_l1"
label = "point L1"
higher_is_better = false

[variants.bins]
model.heads = [{ kind = "bins", bins = 8 }]

[variants.lora-pretrained]
model.lm.mode = "lora"
pretrain = { steps = 2, batch_size = 2, peak_lr = 1e-3, warmup_steps = 1, cache = "CACHE" }
"#;

#[test]
fn tiny_ablation_writes_the_table_and_reuses_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("lm-cache");
    let eva_cache = dir.path().join("eva-cache");
    let text = TINY
        .replace("EVA_CACHE", &eva_cache.display().to_string())
        .replace("CACHE", &cache.display().to_string());
    let ablation = Ablation::parse(&text, Path::new("tiny.toml")).unwrap();
    // Each cached stage is pretrained by one entry of the plan: the EVA02 of a seed by the bins
    // run (the first), the LM by the LoRA run, which shares that EVA02.
    let plan = pretraining_plan(&ablation, &HeadRegistry::builtin()).unwrap();
    assert_eq!(plan.len(), 6);
    assert_eq!(plan.iter().filter(|c| c.pretrain_eva.is_some()).count(), 3);
    assert_eq!(plan.iter().filter(|c| c.pretrain.is_some()).count(), 3);
    let out = dir.path().join("out");
    let results = run_ablation(&ablation, &out, None, &HeadRegistry::builtin()).unwrap();
    assert_eq!(results.runs.len(), 6);
    assert_eq!(results.summary.len(), 2);
    assert!(results
        .summary
        .iter()
        .all(|s| s.metrics.iter().all(|(_, stat)| stat.n == 3)));
    assert_eq!(results.winners.len(), 2);
    for file in ["results.json", "results.md", "results.png"] {
        assert!(out.join(file).exists(), "{file}");
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| lora-pretrained |") && md.contains("Acc@0.5"),
        "{md}"
    );
    // One pretrained LM per seed, shared by every variant that pretrains; one EVA02 per seed,
    // shared by both variants (their vocabularies are equal).
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 3);
    assert_eq!(std::fs::read_dir(&eva_cache).unwrap().count(), 3);
    let metrics =
        std::fs::read_to_string(out.join("runs/lora-pretrained/seed-1/metrics.json")).unwrap();
    assert!(metrics.contains("\"pretrain\""), "{metrics}");

    // Every run is done: the second invocation only re-reads and re-tabulates.
    let started = std::time::Instant::now();
    let again = run_ablation(&ablation, &out, None, &HeadRegistry::builtin()).unwrap();
    assert!(started.elapsed().as_secs_f64() < 5.0);
    assert_eq!(again.runs, results.runs);
}
