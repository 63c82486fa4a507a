//! `pixel ablate`: train and evaluate every variant of an experiment over several seeds and
//! tabulate the metrics as the paper's ablation tables do (mean ± std over seeds).
//!
//! An ablation file names a base experiment (a demo config), `overrides` applied to it for every
//! variant (fewer steps, so the ablation fits a time budget), and `variants`, each a TOML patch
//! deep-merged into the base: `[variants.lora] model.lm.mode = "lora"`. Tables merge key by key;
//! any other value (arrays such as `[[model.heads]]` included) replaces the base's. The merged
//! document is parsed as a [`ExperimentConfig`], so an unknown key fails naming the variant and its key
//! path (`variants.lora.model.foo`).
//!
//! Runs go to `OUT/runs/<variant>/seed-<seed>/` (a demo run folder); a run with `metrics.json`
//! is done and skipped when the ablation is run again, an interrupted one resumes from its last
//! checkpoint. Each run keeps the base's data seed (`seed`) and sets `model_seed` and
//! `train.seed` to its seed, so every variant and seed is evaluated on the same validation split.
use crate::demo::{pretrain_image_encoders, pretrain_language_model, run_demo, PretrainingDirs};
use crate::error::{Result, RunError};
use crate::experiment::{ExperimentConfig, DEFAULT_DEMO_CONFIG};
use pixel_base::progress::Job;
use pixel_core::checkpoint::write_atomic;
use pixel_core::CoreError;
use pixel_model::model::{TinyHeadRegistry, TinyPixelLlm};
use pixel_render::{bar_chart_png, BarGroup};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// An ablation file as written (`configs/ablations/*.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AblationFile {
    /// Shown above the table.
    title: String,
    /// A demo config, relative to the ablation file, or `builtin` (`configs/demo.toml`).
    base: String,
    /// Patched into the base for every variant, before the variant's own patch.
    #[serde(default)]
    overrides: toml::Table,
    /// At least three.
    seeds: Vec<u64>,
    /// Runs trained at once (each run is single-threaded).
    #[serde(default = "default_parallel")]
    parallel: usize,
    metrics: Vec<MetricSpec>,
    /// Variant name -> patch, in file order.
    variants: toml::Table,
}

fn default_parallel() -> usize {
    2
}

/// A column of the table: a number in a run's `metrics.json`, by dotted path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// E.g. `referring_localization.acc50`.
    pub key: String,
    /// The column header, e.g. `Acc@0.5`.
    pub label: String,
    /// Whether a larger value is better (decides the winner).
    pub higher_is_better: bool,
}

/// One variant with its fully merged, parsed config (seeds not yet applied).
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    pub config: ExperimentConfig,
}

/// A parsed ablation: every variant's config is valid.
#[derive(Debug, Clone)]
pub struct Ablation {
    pub path: PathBuf,
    pub title: String,
    pub seeds: Vec<u64>,
    pub parallel: usize,
    pub metrics: Vec<MetricSpec>,
    pub variants: Vec<Variant>,
}

/// Merges `patch` into `base`: tables key by key, recursively; any other value replaces.
pub fn deep_merge(base: &mut toml::Table, patch: &toml::Table) {
    for (key, value) in patch {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(patch_inner)) => {
                deep_merge(inner, patch_inner)
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Whether the dotted `path` (`model.lm.mode`) is set in `table`.
fn sets(table: &toml::Table, path: &str) -> bool {
    let mut current = table;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        match current.get(part) {
            Some(toml::Value::Table(inner)) if parts.peek().is_some() => current = inner,
            Some(_) => return parts.peek().is_none(),
            None => return false,
        }
    }
    false
}

impl Ablation {
    pub fn load(path: &Path) -> Result<Ablation> {
        let text = pixel_core::text::read_text(path).map_err(|e| RunError::io(path, e))?;
        Ablation::parse(&text, path)
    }

    /// Parses an ablation file; `path` names it in errors and anchors a relative `base`.
    pub fn parse(text: &str, path: &Path) -> Result<Ablation> {
        let file: AblationFile = pixel_core::config::parse_toml(text, path)?;
        let invalid = |key: &str, message: String| {
            RunError::Core(CoreError::Config {
                path: path.to_path_buf(),
                key: key.to_string(),
                message,
            })
        };
        if file.seeds.len() < 3 {
            return Err(invalid(
                "seeds",
                format!(
                    "a mean and spread need at least 3 seeds, got {}",
                    file.seeds.len()
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(repeated) = file.seeds.iter().find(|&&s| !seen.insert(s)) {
            return Err(invalid(
                "seeds",
                format!("seed {repeated} is listed twice: repeated seeds repeat a run and shrink the spread to 0"),
            ));
        }
        if file.variants.is_empty() {
            return Err(invalid("variants", "no variants".into()));
        }
        if file.metrics.is_empty() {
            return Err(invalid("metrics", "no metrics to tabulate".into()));
        }
        if file.parallel == 0 {
            return Err(invalid("parallel", "must be at least 1".into()));
        }
        let (base_text, base_origin) = if file.base == "builtin" {
            (
                DEFAULT_DEMO_CONFIG.to_string(),
                PathBuf::from("configs/demo.toml"),
            )
        } else {
            let base_path = path
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(&file.base);
            let text =
                pixel_core::text::read_text(&base_path).map_err(|e| RunError::io(&base_path, e))?;
            (text, base_path)
        };
        let base: toml::Table = toml::from_str(&base_text).map_err(|e| {
            RunError::Core(CoreError::Config {
                path: base_origin.clone(),
                key: "<root>".into(),
                message: e.to_string(),
            })
        })?;
        let mut variants = Vec::new();
        for (name, patch) in &file.variants {
            let toml::Value::Table(patch) = patch else {
                return Err(invalid(
                    &format!("variants.{name}"),
                    "must be a table of keys to patch into the base".into(),
                ));
            };
            let mut merged = base.clone();
            deep_merge(&mut merged, &file.overrides);
            deep_merge(&mut merged, patch);
            let merged_text = toml::to_string(&merged)
                .map_err(|e| invalid(&format!("variants.{name}"), e.to_string()))?;
            let config =
                match pixel_core::config::parse_toml::<ExperimentConfig>(&merged_text, path) {
                    Ok(config) => config,
                    Err(CoreError::Config { key, message, .. }) => {
                        // The line number would be the merged document's, which no one wrote.
                        let message = match message.rsplit_once(" (line ") {
                            Some((text, _)) => text.to_string(),
                            None => message,
                        };
                        return Err(invalid(
                            &origin_of(&key, &message, name, patch, &file.overrides, &base_origin),
                            message,
                        ));
                    }
                    Err(other) => return Err(other.into()),
                };
            config
                .validate()
                .map_err(|e| invalid(&format!("variants.{name}"), e.to_string()))?;
            variants.push(Variant {
                name: name.clone(),
                config,
            });
        }
        Ok(Ablation {
            path: path.to_path_buf(),
            title: file.title,
            seeds: file.seeds,
            parallel: file.parallel,
            metrics: file.metrics,
            variants,
        })
    }

    /// The config of one run: the variant's, with the run's seed for the model and the batches.
    pub fn run_config(&self, variant: &Variant, seed: u64) -> ExperimentConfig {
        let mut config = variant.config.clone();
        config.model_seed = Some(seed);
        config.train.seed = seed;
        config
    }
}

/// Names where a bad key of a merged config came from: the variant's patch
/// (`variants.NAME.model.foo`), the overrides (`overrides.train.foo`) or the base file. An
/// unknown field is reported by serde at its parent with the field in the message.
fn origin_of(
    key: &str,
    message: &str,
    variant: &str,
    patch: &toml::Table,
    overrides: &toml::Table,
    base: &Path,
) -> String {
    let field = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    let full = match field {
        Some(field) if key == "<root>" => field.to_string(),
        Some(field) if key != field && !key.ends_with(&format!(".{field}")) => {
            format!("{key}.{field}")
        }
        _ => key.to_string(),
    };
    if sets(patch, &full) {
        format!("variants.{variant}.{full}")
    } else if sets(overrides, &full) {
        format!("overrides.{full}")
    } else {
        format!("{full} (from the base `{}`)", base.display())
    }
}

/// One finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub variant: String,
    pub seed: u64,
    /// Metric key -> value.
    pub metrics: Vec<(String, f64)>,
    pub wall_s: f64,
}

/// Mean and sample std (n - 1) of one metric of one variant over its seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        let n = values.len();
        if n == 0 {
            return Stat {
                mean: f64::NAN,
                std: f64::NAN,
                n,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Stat { mean, std, n }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantSummary {
    pub variant: String,
    /// In the order of the ablation's metrics.
    pub metrics: Vec<(String, Stat)>,
}

/// The best variant of one metric and its lead over the runner-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Winner {
    pub metric: String,
    pub variant: String,
    pub runner_up: Option<String>,
    /// |best mean - runner-up mean|.
    pub margin: f64,
    /// sqrt((std_best^2 + std_runner_up^2) / 2): the seeds' spread the margin is measured in.
    pub pooled_std: f64,
    /// margin / pooled std (infinite when the spread is zero).
    pub margin_over_spread: f64,
}

/// `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AblationResults {
    pub title: String,
    pub config: String,
    pub seeds: Vec<u64>,
    pub metrics: Vec<MetricSpec>,
    pub runs: Vec<RunResult>,
    pub summary: Vec<VariantSummary>,
    pub winners: Vec<Winner>,
    pub wall_s: f64,
}

/// Per-variant mean and std of each metric over seeds, and each metric's winner.
pub fn summarize(
    variants: &[String],
    metrics: &[MetricSpec],
    runs: &[RunResult],
) -> (Vec<VariantSummary>, Vec<Winner>) {
    let summary: Vec<VariantSummary> = variants
        .iter()
        .map(|variant| VariantSummary {
            variant: variant.clone(),
            metrics: metrics
                .iter()
                .map(|m| {
                    let values: Vec<f64> = runs
                        .iter()
                        .filter(|r| &r.variant == variant)
                        .filter_map(|r| r.metrics.iter().find(|(k, _)| k == &m.key))
                        .map(|(_, v)| *v)
                        .collect();
                    (m.key.clone(), Stat::of(&values))
                })
                .collect(),
        })
        .collect();
    let winners = metrics
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let mut ranked: Vec<(&str, Stat)> = summary
                .iter()
                .map(|s| (s.variant.as_str(), s.metrics[i].1))
                .filter(|(_, stat)| stat.mean.is_finite())
                .collect();
            ranked.sort_by(|a, b| {
                let order = a.1.mean.total_cmp(&b.1.mean);
                if m.higher_is_better {
                    order.reverse()
                } else {
                    order
                }
            });
            let (best, best_stat) = *ranked.first()?;
            let runner = ranked.get(1).copied();
            let margin = runner.map_or(0.0, |(_, s)| (best_stat.mean - s.mean).abs());
            let pooled_std = runner.map_or(best_stat.std, |(_, s)| {
                ((best_stat.std.powi(2) + s.std.powi(2)) / 2.0).sqrt()
            });
            Some(Winner {
                metric: m.key.clone(),
                variant: best.to_string(),
                runner_up: runner.map(|(name, _)| name.to_string()),
                margin,
                pooled_std,
                margin_over_spread: if pooled_std > 0.0 {
                    margin / pooled_std
                } else {
                    f64::INFINITY
                },
            })
        })
        .collect();
    (summary, winners)
}

/// Reads the tabulated metrics out of a run's `metrics.json` by dotted path.
fn read_metrics(path: &Path, metrics: &[MetricSpec]) -> Result<Vec<(String, f64)>> {
    let text = pixel_core::text::read_text(path).map_err(|e| RunError::io(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| RunError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let value = m
                .key
                .split('.')
                .try_fold(&json, |v, part| v.get(part))
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| RunError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "metrics[{i}].key `{}` is not a number in it (e.g. `referring_localization.acc50`, `trace_captioning.point_l1`)",
                        m.key
                    ),
                })?;
            Ok((m.key.clone(), value))
        })
        .collect()
}

/// The folder of one run.
pub fn run_dir(out: &Path, variant: &str, seed: u64) -> PathBuf {
    out.join("runs").join(variant).join(format!("seed-{seed}"))
}

/// Trains and evaluates every variant x seed not yet done under `out`, then writes
/// `results.json`, `results.md` and `results.png`. `parallel` overrides the file's.
pub fn run_ablation(
    ablation: &Ablation,
    out: &Path,
    parallel: Option<usize>,
    heads: &TinyHeadRegistry,
) -> Result<AblationResults> {
    let started = Instant::now();
    std::fs::create_dir_all(out).map_err(|e| RunError::io(out, e))?;
    let workers = parallel.unwrap_or(ablation.parallel).max(1);
    // Seed-major: every finished seed is a complete comparison of the variants.
    let jobs: Vec<(usize, u64)> = ablation
        .seeds
        .iter()
        .flat_map(|&s| (0..ablation.variants.len()).map(move |v| (v, s)))
        .collect();

    // Pretrain first, each cached stage once, so that two runs never pretrain the same stage
    // at once; the runs then load it from the cache.
    let pretrains = pretraining_plan(ablation, heads)?;
    let total = (pretrains.len() + jobs.len()) as u64;
    let progress = Job::start("ablate", out.display(), 0, total);
    let finished = AtomicU64::new(0);
    let one_done = || progress.set(finished.fetch_add(1, Ordering::Relaxed) + 1);
    parallel_for(workers, pretrains, |config| {
        progress.note(&format!("pretraining, seed {}", config.model_seed()));
        pretrain_only(&config, heads)?;
        one_done();
        Ok(())
    })?;

    let results = Mutex::new(Vec::new());
    parallel_for(workers, jobs, |(v, seed)| {
        let variant = &ablation.variants[v];
        let dir = run_dir(out, &variant.name, seed);
        let result = run_one(ablation, variant, seed, &dir, heads)?;
        let line = format!(
            "{} seed {seed}: {} ({:.0} s)",
            variant.name,
            result
                .metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", "),
            result.wall_s
        );
        progress.line(&line);
        one_done();
        results
            .lock()
            .map_err(|_| RunError::Invalid("a run thread panicked".into()))?
            .push(result);
        Ok(())
    })?;
    progress.finish();
    let mut runs = results
        .into_inner()
        .map_err(|_| RunError::Invalid("a run thread panicked".into()))?;
    let order = |r: &RunResult| {
        (
            ablation.variants.iter().position(|v| v.name == r.variant),
            r.seed,
        )
    };
    runs.sort_by_key(order);
    let names: Vec<String> = ablation.variants.iter().map(|v| v.name.clone()).collect();
    let (summary, winners) = summarize(&names, &ablation.metrics, &runs);
    let results = AblationResults {
        title: ablation.title.clone(),
        config: ablation.path.display().to_string(),
        seeds: ablation.seeds.clone(),
        metrics: ablation.metrics.clone(),
        runs,
        summary,
        winners,
        wall_s: started.elapsed().as_secs_f64(),
    };
    write_results(&results, out)?;
    Ok(results)
}

/// The pretraining an ablation needs before its runs: for each variant x seed (seed-major), its
/// config with only the stages (`[pretrain]`, `[pretrain_eva]`, `[pretrain_sam]`) whose cache
/// folder no earlier entry pretrains, so every folder is pretrained by exactly one entry.
/// Variants that differ only in what a stage does not see (a head that keeps the vocabulary,
/// the LM mode) share it; entries with nothing left are dropped.
pub fn pretraining_plan(
    ablation: &Ablation,
    heads: &TinyHeadRegistry,
) -> Result<Vec<ExperimentConfig>> {
    let mut claimed: Vec<PathBuf> = Vec::new();
    let mut plan = Vec::new();
    for &seed in &ablation.seeds {
        for variant in &ablation.variants {
            let mut config = ablation.run_config(variant, seed);
            let model = TinyPixelLlm::build_with(&config.model, config.model_seed(), heads)?;
            let dirs = PretrainingDirs::of(&config, &model.vocab);
            let mut claim = |dir: Option<PathBuf>| match dir {
                Some(dir) if !claimed.contains(&dir) => {
                    claimed.push(dir);
                    true
                }
                _ => false,
            };
            if !claim(dirs.lm) {
                config.pretrain = None;
            }
            if !claim(dirs.eva) {
                config.pretrain_eva = None;
            }
            if !claim(dirs.sam) {
                config.pretrain_sam = None;
            }
            if config.pretrain.is_some()
                || config.pretrain_eva.is_some()
                || config.pretrain_sam.is_some()
            {
                plan.push(config);
            }
        }
    }
    Ok(plan)
}

/// Runs `work` on every item with `workers` threads; the first error stops the others from
/// taking new items and is returned.
fn parallel_for<T: Send>(
    workers: usize,
    items: Vec<T>,
    work: impl Fn(T) -> Result<()> + Sync,
) -> Result<()> {
    let queue = Mutex::new(items.into_iter().collect::<VecDeque<T>>());
    let failure: Mutex<Option<RunError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let next = match queue.lock() {
                    Ok(mut q) => q.pop_front(),
                    Err(_) => None,
                };
                let Some(item) = next else { break };
                if let Err(e) = work(item) {
                    if let Ok(mut q) = queue.lock() {
                        q.clear();
                    }
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(e);
                    }
                    break;
                }
            });
        }
    });
    match failure.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        Err(_) => Err(RunError::Invalid("a run thread panicked".into())),
    }
}

/// Pretrains (or finds cached) the LM and image encoders a run config asks for.
fn pretrain_only(config: &ExperimentConfig, heads: &TinyHeadRegistry) -> Result<()> {
    let tokenizer = pixel_lm::tokenizer::T5Tokenizer::bundled()
        .map_err(|e| RunError::Invalid(e.to_string()))?;
    let data = pixel_data::data_source::DataSource::new(
        &config.data,
        config.seed,
        config.dataset.as_ref(),
    )?;
    let mut model = TinyPixelLlm::build_with(&config.model, config.model_seed(), heads)?;
    pretrain_language_model(config, &mut model, &data, &tokenizer)?;
    pretrain_image_encoders(config, &mut model, &data, &tokenizer)?;
    Ok(())
}

/// One variant x seed: skipped when its `metrics.json` exists for the same config, resumed
/// when it has a checkpoint, run otherwise.
fn run_one(
    ablation: &Ablation,
    variant: &Variant,
    seed: u64,
    dir: &Path,
    heads: &TinyHeadRegistry,
) -> Result<RunResult> {
    let config = ablation.run_config(variant, seed);
    let config_path = dir.join("config.json");
    let config_json =
        serde_json::to_string_pretty(&config).map_err(|e| RunError::Invalid(e.to_string()))?;
    let metrics_path = dir.join("metrics.json");
    if config_path.exists() {
        let stored =
            pixel_core::text::read_text(&config_path).map_err(|e| RunError::io(&config_path, e))?;
        if stored != config_json {
            return Err(RunError::Invalid(format!(
                "{} was run with another config than variant `{}` now has; use another --out or delete the folder",
                dir.display(),
                variant.name
            )));
        }
    }
    let started = Instant::now();
    if !metrics_path.exists() {
        std::fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
        write_atomic(&config_path, config_json.as_bytes())?;
        run_demo(&config, dir, true, heads)?;
    }
    let metrics = read_metrics(&metrics_path, &ablation.metrics)?;
    let wall_s = serde_json::from_str::<serde_json::Value>(
        &pixel_core::text::read_text(&metrics_path).map_err(|e| RunError::io(&metrics_path, e))?,
    )
    .ok()
    .and_then(|j| {
        Some(
            j.get("train")?.get("train_wall_s")?.as_f64()?
                + j["train"].get("eval_wall_s")?.as_f64()?,
        )
    })
    .unwrap_or_else(|| started.elapsed().as_secs_f64());
    Ok(RunResult {
        variant: variant.name.clone(),
        seed,
        metrics,
        wall_s,
    })
}

/// `results.json`, `results.md` (the table) and `results.png` (bars with ±std).
fn write_results(results: &AblationResults, out: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(results).map_err(|e| RunError::Invalid(e.to_string()))?;
    write_atomic(&out.join("results.json"), &json)?;
    write_atomic(&out.join("results.md"), markdown(results).as_bytes())?;
    let groups: Vec<BarGroup> = results
        .metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let bars = results
                .summary
                .iter()
                .map(|s| (s.variant.clone(), s.metrics[i].1.mean, s.metrics[i].1.std))
                .filter(|(_, mean, std)| mean.is_finite() && std.is_finite())
                .collect();
            (m.label.clone(), bars)
        })
        .collect();
    let png = out.join("results.png");
    bar_chart_png(
        &png,
        &groups,
        &format!(
            "{} (mean +/- std over {} seeds)",
            results.title,
            results.seeds.len()
        ),
    )
    .map_err(|e| RunError::Invalid(format!("cannot write {}: {e}", png.display())))
}

/// The paper-style table: one row per variant, one column per metric (mean ± std over seeds),
/// then each metric's winner and its lead in units of the seeds' spread.
pub fn markdown(results: &AblationResults) -> String {
    let mut md = format!(
        "# {}\n\n`{}`: mean ± std over seeds {:?}; {} runs in {:.0} s.\n\n| variant |",
        results.title,
        results.config,
        results.seeds,
        results.runs.len(),
        results.wall_s
    );
    for m in &results.metrics {
        let arrow = if m.higher_is_better { "↑" } else { "↓" };
        md.push_str(&format!(" {} {arrow} |", m.label));
    }
    md.push_str("\n| --- |");
    md.push_str(&" ---: |".repeat(results.metrics.len()));
    md.push('\n');
    for s in &results.summary {
        md.push_str(&format!("| {} |", s.variant));
        for (key, stat) in &s.metrics {
            let best = results
                .winners
                .iter()
                .any(|w| &w.metric == key && w.variant == s.variant);
            let cell = format!("{:.4} ± {:.4}", stat.mean, stat.std);
            md.push_str(&if best {
                format!(" **{cell}** |")
            } else {
                format!(" {cell} |")
            });
        }
        md.push('\n');
    }
    md.push_str("\n## Winners\n\n");
    for w in &results.winners {
        let label = results
            .metrics
            .iter()
            .find(|m| m.key == w.metric)
            .map_or(w.metric.as_str(), |m| m.label.as_str());
        match &w.runner_up {
            Some(runner) => md.push_str(&format!(
                "- {label} (`{}`): **{}** leads {runner} by {:.4}, {:.1}x the pooled std over seeds ({:.4}){}.\n",
                w.metric,
                w.variant,
                w.margin,
                w.margin_over_spread,
                w.pooled_std,
                if w.margin_over_spread >= 2.0 { "" } else { ": within the spread, not a clear win" }
            )),
            None => md.push_str(&format!("- {label}: {} (the only variant).\n", w.variant)),
        }
    }
    md.push_str("\n## Runs\n\n| variant | seed |");
    for m in &results.metrics {
        md.push_str(&format!(" {} |", m.label));
    }
    md.push_str(" wall s |\n| --- | ---: |");
    md.push_str(&" ---: |".repeat(results.metrics.len() + 1));
    md.push('\n');
    for r in &results.runs {
        md.push_str(&format!("| {} | {} |", r.variant, r.seed));
        for (_, v) in &r.metrics {
            md.push_str(&format!(" {v:.4} |"));
        }
        md.push_str(&format!(" {:.0} |\n", r.wall_s));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn patches_merge_tables_key_by_key_and_replace_other_values() {
        let mut base = table(
            "seed = 0\n[model]\npreset = \"t\"\nheads = [1, 2]\n[model.lm]\nmode = \"full\"\nlora_rank = 8\n",
        );
        let patch =
            table("seed = 3\n[model]\nheads = [7]\nlm.mode = \"lora\"\n[pretrain]\nsteps = 5\n");
        deep_merge(&mut base, &patch);
        let expected = table(
            "seed = 3\n[model]\npreset = \"t\"\nheads = [7]\n[model.lm]\nmode = \"lora\"\nlora_rank = 8\n[pretrain]\nsteps = 5\n",
        );
        assert_eq!(base, expected);
    }

    const HEADER: &str = "title = \"t\"\nbase = \"builtin\"\nseeds = [0, 1, 2]\n\
        [[metrics]]\nkey = \"referring_localization.acc50\"\nlabel = \"Acc\"\nhigher_is_better = true\n";

    #[test]
    fn variants_keep_file_order_and_apply_overrides_then_patch() {
        let text = format!(
            "{HEADER}[overrides]\ntrain.steps = 7\n[variants.zeta]\nmodel.lm.mode = \"frozen\"\n\
             [variants.alpha]\ntrain.steps = 9\n"
        );
        let ablation = Ablation::parse(&text, Path::new("a.toml")).unwrap();
        let names: Vec<&str> = ablation.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        assert_eq!(ablation.variants[0].config.train.steps, 7);
        assert_eq!(
            ablation.variants[0].config.model.lm.mode,
            pixel_model::model::LmMode::Frozen
        );
        assert_eq!(ablation.variants[1].config.train.steps, 9);
        let run = ablation.run_config(&ablation.variants[1], 2);
        assert_eq!((run.seed, run.model_seed(), run.train.seed), (0, 2, 2));
    }

    #[test]
    fn an_unknown_key_names_the_variant_and_its_path() {
        let text = format!("{HEADER}[variants.ok]\n[variants.bad]\nmodel.foo = 1\n");
        let err = Ablation::parse(&text, Path::new("abl.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("abl.toml") && err.contains("variants.bad.model.foo"),
            "{err}"
        );
        let text = format!("{HEADER}[overrides]\ntrain.stepz = 1\n[variants.ok]\n");
        let err = Ablation::parse(&text, Path::new("abl.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("overrides.train.stepz"), "{err}");
        let text = format!("{HEADER}[variants.bad]\nmodel.lm.mode = \"half\"\n");
        let err = Ablation::parse(&text, Path::new("abl.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("variants.bad.model.lm.mode"), "{err}");
        let two_seeds = HEADER.replace("[0, 1, 2]", "[0, 1]") + "[variants.ok]\n";
        let err = Ablation::parse(&two_seeds, Path::new("abl.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("seeds"), "{err}");
        let repeated = HEADER.replace("[0, 1, 2]", "[0, 0, 0]") + "[variants.ok]\n";
        let err = Ablation::parse(&repeated, Path::new("abl.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("at key `seeds`: seed 0 is listed twice"),
            "{err}"
        );
        let text = format!("{HEADER}[variants.bad]\ntrain.optimizer.clip_grad_norm = -1.0\n");
        let err = Ablation::parse(&text, Path::new("abl.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("variants.bad.train.optimizer.clip_grad_norm") && err.contains("> 0"),
            "{err}"
        );
    }

    #[test]
    fn summary_is_mean_and_sample_std_over_seeds_and_names_the_winner() {
        let metrics = vec![
            MetricSpec {
                key: "acc".into(),
                label: "Acc".into(),
                higher_is_better: true,
            },
            MetricSpec {
                key: "l1".into(),
                label: "L1".into(),
                higher_is_better: false,
            },
        ];
        let run = |variant: &str, seed, acc, l1| RunResult {
            variant: variant.into(),
            seed,
            metrics: vec![("acc".into(), acc), ("l1".into(), l1)],
            wall_s: 1.0,
        };
        let runs = vec![
            run("a", 0, 0.2, 0.30),
            run("a", 1, 0.4, 0.10),
            run("a", 2, 0.6, 0.20),
            run("b", 0, 0.5, 0.4),
            run("b", 1, 0.5, 0.4),
            run("b", 2, 0.5, 0.4),
        ];
        let (summary, winners) = summarize(&["a".into(), "b".into()], &metrics, &runs);
        let a = summary[0].metrics[0].1;
        assert!((a.mean - 0.4).abs() < 1e-12 && (a.std - 0.2).abs() < 1e-12 && a.n == 3);
        assert_eq!(summary[1].metrics[0].1.std, 0.0);
        assert_eq!(winners[0].variant, "b");
        assert!((winners[0].margin - 0.1).abs() < 1e-12);
        assert!((winners[0].pooled_std - (0.02f64).sqrt()).abs() < 1e-12);
        assert_eq!(winners[1].variant, "a");
        assert!((winners[1].margin - 0.2).abs() < 1e-12);
        let results = AblationResults {
            title: "t".into(),
            config: "c.toml".into(),
            seeds: vec![0, 1, 2],
            metrics,
            runs,
            summary,
            winners,
            wall_s: 1.0,
        };
        let md = markdown(&results);
        assert!(
            md.contains("| a | 0.4000 ± 0.2000 | **0.2000 ± 0.1000** |"),
            "{md}"
        );
        assert!(md.contains("**b** leads a by 0.1000"), "{md}");
    }

    #[test]
    fn every_shipped_ablation_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/ablations");
        let mut parsed = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let ablation = Ablation::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(ablation.seeds.len() >= 3, "{}", path.display());
                assert!(ablation.variants.len() >= 2, "{}", path.display());
                parsed += 1;
            }
        }
        assert!(parsed >= 2, "{parsed} ablation configs");
    }
}
