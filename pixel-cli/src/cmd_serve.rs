//! `pixel serve`: a trained model behind a JSON API (`POST /api/predict`, the requests and
//! answers of `pixel predict`) and one page at `/` to try it in a browser.
//!
//! The model loads once and is shared by every request; each prediction runs on tokio's
//! blocking pool. A bad request gets a 4xx with the reason as `{"error": ...}`, a failure of
//! the model a 500, and the server goes on serving either way.
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use pixel_data::shapes_ln::{ShapesLn, Split};
use pixel_model::model::TinyHeadRegistry;
use pixel_run::predict::{annotate, Request, Task, TrainedModel};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

/// The page at `/`: an image (uploaded or a sample), a task, a prompt, the answer drawn.
const PAGE: &str = include_str!("serve_page.html");

/// Largest request body: an image of a few megapixels as base64.
const MAX_BODY: usize = 32 << 20;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    pixel serve --checkpoint runs/demo                (then open http://127.0.0.1:8080)\n  \
    curl -s localhost:8080/api/predict -H 'content-type: application/json' \\\n    \
    -d '{\"task\": \"refer\", \"text\": \"the red circle\", \"image_base64\": \"'$(base64 -w0 photo.png)'\"}'\n  \
    curl -s localhost:8080/api/predict -F image=@photo.png -F task=locate -F box=10,10,40,30\n\n\
    POST /api/predict takes the JSON requests of `pixel predict` with the image as image_base64, or\n\
    a multipart form (image, task, text, box, point, id); ?annotate=true adds annotated_png (base64).\n\
    GET /api/info names the model and its tasks; GET /api/sample/N is a ShapesLN image to try.")]
pub struct ServeArgs {
    /// A run folder (its latest checkpoint and config.json), a checkpoint folder or a
    /// model.safetensors file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The experiment config (TOML) the checkpoint was trained with; defaults to the run's
    /// config.json.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Port on 127.0.0.1; 0 picks a free one (the first line printed says which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on; 0.0.0.0 serves other machines too.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
}

struct Served {
    model: TrainedModel,
    samples: ShapesLn,
}

type Shared = Arc<Served>;

/// An error answer: the status and the reason.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(message: impl std::fmt::Display) -> Failure {
    Failure(StatusCode::BAD_REQUEST, message.to_string())
}

pub fn run(args: ServeArgs, heads: &TinyHeadRegistry) -> Result<(), Box<dyn std::error::Error>> {
    let model = TrainedModel::load(&args.checkpoint, args.config.as_deref(), heads)?;
    let samples = ShapesLn::new(model.config.data.clone(), model.config.seed)?;
    let state: Shared = Arc::new(Served { model, samples });
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/info", get(info))
        .route("/api/sample/{index}", get(sample))
        .route("/api/predict", post(predict))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
                .await
                .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
            println!("listening on http://{}", listener.local_addr()?);
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    // Without a signal handler the server stops when the process is killed.
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            Ok(())
        })
}

/// `GET /api/info`: the weights served and the tasks they answer.
async fn info(State(state): State<Shared>) -> Json<serde_json::Value> {
    let m = &state.model;
    Json(serde_json::json!({
        "weights": m.weights.display().to_string(),
        "step": m.step,
        "image_size": m.image_side(),
        "tasks": m.tasks(),
        "all_tasks": Task::ALL,
    }))
}

/// `GET /api/sample/N`: validation image N of the ShapesLN generator the model was set up with.
async fn sample(
    State(state): State<Shared>,
    UrlPath(index): UrlPath<String>,
) -> Result<Response, Failure> {
    let index: u64 = index
        .trim_end_matches(".png")
        .parse()
        .map_err(|e| bad_request(format!("sample `{index}`: {e}")))?;
    let image = state.samples.sample(Split::Validation, index).image;
    let bytes = png_bytes(&image).map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], bytes).into_response())
}

#[derive(Debug, Deserialize)]
struct Options {
    #[serde(default)]
    annotate: bool,
}

/// `POST /api/predict`: a JSON request with `image_base64`, or a multipart form.
async fn predict(
    State(state): State<Shared>,
    Query(options): Query<Options>,
    request: axum::extract::Request,
) -> Result<Json<serde_json::Value>, Failure> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (request, source, bytes) = if content_type.starts_with("multipart/form-data") {
        let form = Multipart::from_request(request, &())
            .await
            .map_err(|e| bad_request(format!("multipart form: {e}")))?;
        from_form(form).await?
    } else if content_type.starts_with("application/json") {
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| Failure(e.status(), e.body_text()))?;
        let request: Request = serde_json::from_slice(&body)
            .map_err(|e| bad_request(format!("the JSON request: {e}")))?;
        if request.image.is_some() {
            return Err(bad_request(
                "the server reads no files: send the image as `image_base64` or a multipart upload",
            ));
        }
        let (source, bytes) = request.image_bytes(&PathBuf::new()).map_err(bad_request)?;
        (request, source, bytes)
    } else {
        return Err(Failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type `{content_type}`: send application/json or multipart/form-data"),
        ));
    };
    tokio::task::spawn_blocking(move || answer(&state.model, &request, &source, &bytes, options))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map(Json)
}

/// Checks and answers one request: the answer's JSON, with the annotated PNG when asked.
fn answer(
    model: &TrainedModel,
    request: &Request,
    source: &str,
    bytes: &[u8],
    options: Options,
) -> Result<serde_json::Value, Failure> {
    let query = model.query(request, source, bytes).map_err(bad_request)?;
    let internal =
        |e: &dyn std::fmt::Display| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let answer = model
        .predict(std::slice::from_ref(&query))
        .map_err(|e| internal(&e))?
        .pop()
        .ok_or_else(|| internal(&"the model gave no answer"))?;
    let mut json = serde_json::to_value(&answer).map_err(|e| internal(&e))?;
    if options.annotate {
        let image = annotate(&query, &answer).map_err(|e| internal(&e))?;
        let png = png_bytes(&image).map_err(|e| internal(&e))?;
        json["annotated_png"] = base64::engine::general_purpose::STANDARD.encode(png).into();
    }
    Ok(json)
}

/// A request from a multipart form: the file field `image` and text fields `task`, `text`,
/// `box` (x0,y0,x1,y1), `point` (x,y) and `id`.
async fn from_form(mut form: Multipart) -> Result<(Request, String, Vec<u8>), Failure> {
    let mut request = Request::default();
    let mut image = None;
    let numbers = |name: &str, value: &str| -> Result<Vec<f32>, Failure> {
        value
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|e| bad_request(format!("field `{name}` = `{value}`: {e}")))
    };
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| bad_request(format!("multipart form: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            let source = field.file_name().unwrap_or("upload").to_string();
            let bytes = field
                .bytes()
                .await
                .map_err(|e| bad_request(format!("field `image`: {e}")))?;
            image = Some((source, bytes.to_vec()));
            continue;
        }
        let value = field
            .text()
            .await
            .map_err(|e| bad_request(format!("field `{name}`: {e}")))?;
        match name.as_str() {
            "task" => request.task = value.parse().map_err(bad_request)?,
            "text" => request.text = Some(value),
            "id" => request.id = Some(value),
            "box" | "point" if value.trim().is_empty() => {}
            "box" => {
                let v = numbers(&name, &value)?;
                request.bbox = Some(v.try_into().map_err(|_| {
                    bad_request(format!("field `box` = `{value}`: give x0,y0,x1,y1"))
                })?);
            }
            "point" => {
                let v = numbers(&name, &value)?;
                request.point =
                    Some(v.try_into().map_err(|_| {
                        bad_request(format!("field `point` = `{value}`: give x,y"))
                    })?);
            }
            other => {
                return Err(bad_request(format!(
                    "unknown field `{other}`; the fields are image, task, text, box, point, id"
                )))
            }
        }
    }
    let (source, bytes) = image.ok_or_else(|| bad_request("the form has no `image` file"))?;
    Ok((request, source, bytes))
}

fn png_bytes(image: &image::RgbImage) -> Result<Vec<u8>, String> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(bytes.into_inner())
}
