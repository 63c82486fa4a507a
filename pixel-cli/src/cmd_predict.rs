//! `pixel predict`: a trained model on one's own images, one request or many; JSON answers and
//! annotated PNGs.
use indicatif::{ProgressBar, ProgressStyle};
use pixel_model::model::TinyHeadRegistry;
use pixel_render::save_png;
use pixel_run::predict::{annotate, Answer, Query, Request, Task, TrainedModel};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    pixel predict --checkpoint runs/demo --image photo.png --task trace --out runs/photo\n  \
    pixel predict --checkpoint runs/demo --image photo.png --task refer --text \"the red circle\"\n  \
    pixel predict --checkpoint runs/demo --image photo.png --task locate --box 10,10,40,30\n  \
    pixel predict --checkpoint runs/densecap --images photos/ --task densecap --out runs/photos\n  \
    pixel predict --checkpoint runs/demo --requests requests.jsonl --out runs/answers\n\n\
    A JSONL request is {\"id\": \"a\", \"image\": \"photo.png\", \"task\": \"refer\", \"text\": \"the red circle\"}\n\
    (\"box\": [x0, y0, x1, y1] or \"point\": [x, y] for locate; paths relative to the JSONL file).\n\
    Answers are in the image's pixels. With many requests each answer or error is one JSON line, in\n\
    request order; the exit code is 1 when any request failed.")]
pub struct PredictArgs {
    /// A run folder (its latest checkpoint and config.json), a checkpoint folder or a
    /// model.safetensors file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The experiment config (TOML) the checkpoint was trained with; defaults to the run's
    /// config.json.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// One image.
    #[arg(long, conflicts_with_all = ["images", "requests"], required_unless_present_any = ["images", "requests"])]
    pub image: Option<PathBuf>,
    /// Every PNG and JPEG in a folder, each with the same task and prompt.
    #[arg(long, conflicts_with = "requests")]
    pub images: Option<PathBuf>,
    /// A JSONL file of requests, one per line.
    #[arg(long)]
    pub requests: Option<PathBuf>,
    /// caption, trace, refer, locate or densecap.
    #[arg(long, default_value = "trace")]
    pub task: Task,
    /// The referring expression (refer).
    #[arg(long)]
    pub text: Option<String>,
    /// The box to caption, x0,y0,x1,y1 in the image's pixels (locate).
    #[arg(long = "box", value_parser = parse_floats::<4>, conflicts_with = "point")]
    pub bbox: Option<[f32; 4]>,
    /// The point to caption, x,y in the image's pixels (locate).
    #[arg(long, value_parser = parse_floats::<2>)]
    pub point: Option<[f32; 2]>,
    /// Folder for predictions.json (one image) or predictions.jsonl (many) and one annotated
    /// PNG per request; without it the JSON goes to stdout and no PNG is drawn.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Requests run through the model together; defaults to the config's eval.batch_size.
    #[arg(long)]
    pub batch_size: Option<usize>,
}

/// `N` comma-separated numbers.
fn parse_floats<const N: usize>(s: &str) -> Result<[f32; N], String> {
    let values: Vec<f32> = s
        .split(',')
        .map(|v| v.trim().parse::<f32>().map_err(|e| format!("`{v}`: {e}")))
        .collect::<Result<_, _>>()?;
    values
        .try_into()
        .map_err(|v: Vec<f32>| format!("expected {N} comma-separated numbers, got {}", v.len()))
}

/// One request and where its image is read relative to.
struct Job {
    request: Request,
    base: PathBuf,
    /// Names the request in error lines and its PNG.
    name: String,
}

pub fn run(args: PredictArgs, heads: &TinyHeadRegistry) -> Result<(), Box<dyn std::error::Error>> {
    let model = TrainedModel::load(&args.checkpoint, args.config.as_deref(), heads)?;
    let template = Request {
        task: args.task,
        text: args.text.clone(),
        bbox: args.bbox,
        point: args.point,
        ..Request::default()
    };
    if let Some(image) = &args.image {
        let job = Job {
            request: Request {
                image: Some(image.display().to_string()),
                ..template
            },
            base: PathBuf::new(),
            name: file_stem(image),
        };
        let (query, answer) = answer_one(&model, &job)?;
        let json = serde_json::to_string_pretty(&answer)?;
        match &args.out {
            Some(out) => {
                std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
                write(&out.join("predictions.json"), json.as_bytes())?;
                let png = out.join(format!("{}.png", job.name));
                save_png(&annotate(&query, &answer)?, &png)?;
                eprintln!(
                    "wrote {}/predictions.json and {}",
                    out.display(),
                    png.display()
                );
            }
            None => println!("{json}"),
        }
        return Ok(());
    }
    let jobs = match (&args.images, &args.requests) {
        (Some(dir), _) => folder_jobs(dir, &template)?,
        (None, Some(file)) => jsonl_jobs(file)?,
        (None, None) => return Err("give --image, --images or --requests".into()),
    };
    let batch_size = args
        .batch_size
        .unwrap_or(model.config.eval.batch_size)
        .max(1);
    let failed = answer_many(&model, jobs, batch_size, args.out.as_deref())?;
    if failed > 0 {
        return Err(format!("{failed} request(s) failed; their lines say why").into());
    }
    Ok(())
}

/// Reads, checks and answers one request.
fn answer_one(
    model: &TrainedModel,
    job: &Job,
) -> Result<(Query, Answer), Box<dyn std::error::Error>> {
    let (source, bytes) = job.request.image_bytes(&job.base)?;
    let query = model.query(&job.request, &source, &bytes)?;
    let answer = model
        .predict(std::slice::from_ref(&query))?
        .pop()
        .ok_or("the model gave no answer")?;
    Ok((query, answer))
}

/// Answers `jobs` `batch_size` at a time, one JSON line each in request order (stdout, or
/// `out/predictions.jsonl` with a PNG per answer); returns how many failed.
fn answer_many(
    model: &TrainedModel,
    jobs: Vec<Result<Job, String>>,
    batch_size: usize,
    out: Option<&Path>,
) -> Result<usize, Box<dyn std::error::Error>> {
    let mut sink: Box<dyn Write> = match out {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = dir.join("predictions.jsonl");
            let file =
                std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Box::new(std::io::BufWriter::new(file))
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let bar = ProgressBar::new(jobs.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests, {per_sec}, eta {eta}")
            .map_err(|e| e.to_string())?,
    );
    let mut failed = 0;
    for chunk in jobs.chunks(batch_size) {
        // Checked one by one, so a bad request fails alone; the rest run as one batch.
        let checked: Vec<Result<(&Job, Query), String>> = chunk
            .iter()
            .map(|job| {
                let job = job.as_ref().map_err(Clone::clone)?;
                let (source, bytes) = job
                    .request
                    .image_bytes(&job.base)
                    .map_err(|e| e.to_string())?;
                let query = model
                    .query(&job.request, &source, &bytes)
                    .map_err(|e| format!("{}: {e}", job.name))?;
                Ok((job, query))
            })
            .collect();
        let queries: Vec<Query> = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().map(|(_, q)| q.clone()))
            .collect();
        let mut answers = match model.predict(&queries) {
            Ok(answers) => answers.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => queries.iter().map(|_| Err(e.to_string())).collect(),
        }
        .into_iter();
        for (job, c) in chunk.iter().zip(checked) {
            let line = match c.and_then(|(job, query)| {
                let answer = answers.next().ok_or("the model gave no answer")??;
                let mut json = serde_json::to_value(&answer).map_err(|e| e.to_string())?;
                if let Some(dir) = out {
                    let png = dir.join(format!("{}.png", job.name));
                    annotate(&query, &answer)
                        .map_err(|e| e.to_string())
                        .and_then(|image| save_png(&image, &png).map_err(|e| e.to_string()))?;
                    json["annotated"] = png.display().to_string().into();
                }
                Ok(json)
            }) {
                Ok(json) => json,
                Err(error) => {
                    failed += 1;
                    let id = job.as_ref().ok().and_then(|j| j.request.id.clone());
                    serde_json::json!({ "id": id, "error": error })
                }
            };
            writeln!(sink, "{line}")?;
            bar.inc(1);
        }
    }
    sink.flush()?;
    bar.finish_and_clear();
    eprintln!(
        "{} requests: {} answered, {failed} failed{}",
        jobs.len(),
        jobs.len() - failed,
        out.map(|d| format!("; wrote {}/predictions.jsonl", d.display()))
            .unwrap_or_default()
    );
    Ok(failed)
}

/// Every PNG and JPEG in `dir` (by name), each with `template`'s task and prompt.
fn folder_jobs(dir: &Path, template: &Request) -> Result<Vec<Result<Job, String>>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!("{}: no .png, .jpg or .jpeg files", dir.display()));
    }
    Ok(paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(Job {
                request: Request {
                    id: Some(p.display().to_string()),
                    image: Some(p.display().to_string()),
                    ..template.clone()
                },
                base: PathBuf::new(),
                name: format!("{:04}-{}", i + 1, file_stem(p)),
            })
        })
        .collect())
}

/// The requests of a JSONL file; a line that does not parse is an error naming file and line.
fn jsonl_jobs(file: &Path) -> Result<Vec<Result<Job, String>>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let at = format!("{}:{}", file.display(), i + 1);
            let request: Request =
                serde_json::from_str(line).map_err(|e| format!("{at}: bad request: {e}"))?;
            let name = match &request.id {
                Some(id) => format!("{:04}-{}", i + 1, safe_name(id)),
                None => format!("{:04}", i + 1),
            };
            Ok(Job {
                request,
                base: base.clone(),
                name,
            })
        })
        .collect())
}

fn file_stem(path: &Path) -> String {
    safe_name(
        &path
            .file_stem()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default(),
    )
}

/// `name` with everything but letters, digits, `-` and `_` replaced, to name a file.
fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}
