//! The picture of an answer: the image with each word's dot in its colour and the caption below
//! in the same colours, the referred box, the mask, or the captioned regions, drawn by the
//! sample panels of `render`.
use super::answer::{mask_from_rle, Answer};
use super::request::{Query, Task};
use crate::error::{Result, RunError};
use image::RgbImage;
use pixel_render::{mask_overlay, palette, samples_image, SamplePanel, GREY};

/// The annotated image of `answer` to `query`.
pub fn annotate(query: &Query, answer: &Answer) -> Result<RgbImage> {
    let (w, h) = query.size();
    let normalized = |b: [f32; 4]| {
        [
            b[0] / w as f32,
            b[1] / h as f32,
            b[2] / w as f32,
            b[3] / h as f32,
        ]
    };
    let render = |e: pixel_render::RenderError| RunError::Invalid(format!("annotation: {e}"));
    let mut image = query.image.clone();
    if let Some(mask) = &answer.mask {
        // Dark shows on every colour, as in `pixel eval`'s masks.png.
        let mask = mask_from_rle(mask, (w, h))?;
        image = mask_overlay(&image, &mask, [0, 0, 0], 0.55).map_err(render)?;
    }
    let caption_words = |caption: &Option<String>| -> Vec<(String, Option<[f32; 2]>)> {
        caption
            .iter()
            .flat_map(|c| c.split_whitespace().map(|w| (w.to_string(), None)))
            .collect()
    };
    let mut boxes = Vec::new();
    let (words, title) = match answer.task {
        Task::Trace => (
            answer
                .words
                .iter()
                .flatten()
                .map(|word| (word.word.clone(), word.centre((w, h))))
                .collect(),
            "trace captioning".to_string(),
        ),
        Task::Caption => (caption_words(&answer.caption), "caption".to_string()),
        Task::Locate => {
            boxes.extend(
                answer
                    .bbox
                    .map(|b| (normalized(b), "prompt".to_string(), GREY)),
            );
            (
                caption_words(&answer.caption),
                "location caption".to_string(),
            )
        }
        Task::Refer => {
            let text = query.text.clone().unwrap_or_default();
            boxes.extend(
                answer
                    .bbox
                    .map(|b| (normalized(b), text.clone(), palette(0))),
            );
            (Vec::new(), format!("refer: {text}"))
        }
        Task::Densecap => {
            for (i, r) in answer.regions.iter().flatten().enumerate() {
                let label = format!("{:.2} {}", r.score, r.caption);
                boxes.push((normalized(r.bbox), label, palette(i)));
            }
            (Vec::new(), "dense captioning".to_string())
        }
    };
    samples_image(&[SamplePanel {
        image,
        words,
        boxes,
        title,
    }])
    .map_err(render)
}
