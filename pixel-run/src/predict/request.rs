//! What a user asks: a [`Request`] as JSON (a JSONL line, an API body or the CLI's flags), and
//! the checked [`Query`] it becomes once its image is decoded and resized for the model.
//!
//! Everything a request can get wrong is found here, before the model runs, so one bad request
//! gives one error and the others of its batch still run.
use crate::error::{Result, RunError};
use base64::Engine;
use image::RgbImage;
use pixel_core::geometry::BoxXyxy;
use pixel_data::data_source::model_image;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The five things a trained model can be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The caption alone (any model).
    Caption,
    /// Trace captioning: the caption and each word's point(s).
    #[default]
    Trace,
    /// Referring localization: the box (and mask) of an expression.
    Refer,
    /// Location-conditioned captioning: a caption of a box or point.
    Locate,
    /// Dense captioning: the detection head's boxes, each captioned.
    Densecap,
}

impl Task {
    pub const ALL: [Task; 5] = [
        Task::Caption,
        Task::Trace,
        Task::Refer,
        Task::Locate,
        Task::Densecap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::Caption => "caption",
            Task::Trace => "trace",
            Task::Refer => "refer",
            Task::Locate => "locate",
            Task::Densecap => "densecap",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown task `{s}`; the tasks are {}",
                    Task::ALL.map(Task::name).join(", ")
                )
            })
    }
}

/// One prediction request. Coordinates are in the pixels of the image as given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Echoed in the answer, to match answers to requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// An image file; in a JSONL file, relative to the file's folder. The server takes no paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The image file's bytes (PNG or JPEG), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_base64: Option<String>,
    #[serde(default)]
    pub task: Task,
    /// The referring expression (`refer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `[x0, y0, x1, y1]` to caption (`locate`).
    #[serde(default, rename = "box", skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f32; 4]>,
    /// `[x, y]` to caption (`locate`), as a box with both corners on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<[f32; 2]>,
}

impl Request {
    /// The bytes of the request's image: the file `image` (relative to `base`) or the decoded
    /// `image_base64`; exactly one must be given.
    pub fn image_bytes(&self, base: &Path) -> Result<(String, Vec<u8>)> {
        match (&self.image, &self.image_base64) {
            (Some(path), None) => {
                let path = base.join(path);
                let bytes = std::fs::read(&path).map_err(|e| RunError::io(&path, e))?;
                Ok((path.display().to_string(), bytes))
            }
            (None, Some(encoded)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|e| bad(format!("image_base64 is not base64: {e}")))?;
                Ok(("image_base64".into(), bytes))
            }
            (Some(_), Some(_)) => Err(bad("give the image once: `image` or `image_base64`")),
            (None, None) => Err(bad(
                "no image: give `image` (a file) or `image_base64` (its bytes)",
            )),
        }
    }
}

/// A request checked against its image, with the image as the model sees it.
#[derive(Debug, Clone)]
pub struct Query {
    pub id: Option<String>,
    pub task: Task,
    /// The decoded image, as given (drawn on by [`super::annotate`]).
    pub image: RgbImage,
    /// `image` resized to the model's square input.
    pub model_image: RgbImage,
    /// The referring expression, trimmed.
    pub text: Option<String>,
    /// The location prompt, normalized to the image (`locate`).
    pub prompt: Option<BoxXyxy>,
}

impl Query {
    /// Decodes `bytes` (`source` names them in errors) and checks the request against the image:
    /// `refer` needs a non-empty text, `locate` one box or point inside the image.
    pub fn new(request: &Request, source: &str, bytes: &[u8], model_side: u32) -> Result<Query> {
        let decoded = image::load_from_memory(bytes)
            .map_err(|e| bad(format!("cannot decode the image {source}: {e}")))?;
        let image = decoded.to_rgb8();
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(bad(format!("the image {source} is {w}x{h}")));
        }
        let text = match (request.task, request.text.as_deref().map(str::trim)) {
            (Task::Refer, None | Some("")) => {
                return Err(bad("task `refer` needs a non-empty `text`"))
            }
            (Task::Refer, Some(text)) => Some(text.to_string()),
            (_, _) => None,
        };
        let prompt = match (request.task, request.bbox, request.point) {
            (Task::Locate, Some(b), None) => Some(pixel_box(b, w, h)?),
            (Task::Locate, None, Some([x, y])) => Some(pixel_box([x, y, x, y], w, h)?),
            (Task::Locate, _, _) => return Err(bad("task `locate` needs one of `box` or `point`")),
            (_, _, _) => None,
        };
        Ok(Query {
            id: request.id.clone(),
            task: request.task,
            model_image: model_image(&decoded, model_side),
            image,
            text,
            prompt,
        })
    }

    /// Width and height of the image as given.
    pub fn size(&self) -> (u32, u32) {
        self.image.dimensions()
    }
}

/// A box in the pixels of a `w x h` image, checked to lie inside it, normalized.
fn pixel_box(b: [f32; 4], w: u32, h: u32) -> Result<BoxXyxy> {
    let [x0, y0, x1, y1] = b;
    let (fw, fh) = (w as f32, h as f32);
    if !b.iter().all(|v| v.is_finite()) || x1 < x0 || y1 < y0 {
        return Err(bad(format!(
            "box {b:?} is not x0,y0,x1,y1 with x0 <= x1 and y0 <= y1"
        )));
    }
    if x0 < 0.0 || y0 < 0.0 || x1 > fw || y1 > fh {
        return Err(bad(format!(
            "box {b:?} lies outside the {w}x{h} image (0..{w}, 0..{h})"
        )));
    }
    Ok(BoxXyxy::new(x0 / fw, y0 / fh, x1 / fw, y1 / fh)?)
}

fn bad(message: impl Into<String>) -> RunError {
    RunError::Invalid(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut bytes = std::io::Cursor::new(Vec::new());
        RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]))
            .write_to(&mut bytes, image::ImageFormat::Png)
            .unwrap_or_else(|e| panic!("{e}"));
        bytes.into_inner()
    }

    fn error(request: &Request, bytes: &[u8]) -> String {
        Query::new(request, "test.png", bytes, 64)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_box_is_normalized_by_the_image_and_one_outside_it_is_refused() {
        let request = Request {
            task: Task::Locate,
            bbox: Some([30.0, 10.0, 90.0, 40.0]),
            ..Request::default()
        };
        let query =
            Query::new(&request, "test.png", &png(120, 40), 64).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(query.model_image.dimensions(), (64, 64));
        let p = query.prompt.unwrap_or_else(|| panic!("no prompt"));
        assert_eq!(p.to_array(), [0.25, 0.25, 0.75, 1.0]);
        let outside = Request {
            bbox: Some([30.0, 10.0, 90.0, 41.0]),
            ..request.clone()
        };
        let err = error(&outside, &png(120, 40));
        assert!(err.contains("outside the 120x40 image"), "{err}");
        let inverted = Request {
            bbox: Some([90.0, 10.0, 30.0, 20.0]),
            ..request
        };
        assert!(error(&inverted, &png(120, 40)).contains("x0 <= x1"));
    }

    #[test]
    fn each_task_refuses_what_it_cannot_use() {
        let empty = Request {
            task: Task::Refer,
            text: Some("  ".into()),
            ..Request::default()
        };
        assert!(error(&empty, &png(8, 8)).contains("non-empty `text`"));
        let both = Request {
            task: Task::Locate,
            bbox: Some([0.0, 0.0, 1.0, 1.0]),
            point: Some([1.0, 1.0]),
            ..Request::default()
        };
        assert!(error(&both, &png(8, 8)).contains("one of `box` or `point`"));
        let undecodable = error(&Request::default(), b"not an image");
        assert!(
            undecodable.contains("cannot decode the image test.png"),
            "{undecodable}"
        );
    }

    #[test]
    fn the_image_comes_from_exactly_one_place() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let missing = Request {
            image: Some("nope.png".into()),
            ..Request::default()
        };
        let err = missing.image_bytes(dir.path()).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("nope.png")));
        let encoded = Request {
            image_base64: Some(base64::engine::general_purpose::STANDARD.encode(png(3, 2))),
            ..Request::default()
        };
        let (source, bytes) = encoded
            .image_bytes(dir.path())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((source.as_str(), bytes), ("image_base64", png(3, 2)));
        let neither = Request::default().image_bytes(dir.path()).err();
        assert!(neither.is_some_and(|e| e.to_string().contains("no image")));
    }

    #[test]
    fn tasks_parse_by_name_and_an_unknown_one_lists_them() {
        assert_eq!("densecap".parse::<Task>(), Ok(Task::Densecap));
        let err = "segment".parse::<Task>().err().unwrap_or_default();
        assert!(
            err.contains("caption, trace, refer, locate, densecap"),
            "{err}"
        );
    }
}
