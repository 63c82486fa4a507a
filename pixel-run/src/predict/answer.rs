//! What the model answers, in the pixels of the image as given: the JSON of `pixel predict`
//! and `POST /api/predict`.
use super::request::Task;
use crate::error::{Result, RunError};
use image::GrayImage;
use pixel_core::geometry::BoxXyxy;
use pixel_lm::tokenizer::T5Tokenizer;
use pixel_metrics::masks::{Rle, RleCounts, Segmentation};
use serde::{Deserialize, Serialize};

/// One answer; the fields a task does not produce are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub task: Task,
    /// The image's width and height in pixels: the frame of every coordinate below.
    pub width: u32,
    pub height: u32,
    /// The generated caption (`caption`, `trace`, `locate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// Each word of the caption with its points (`trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<WordAt>>,
    /// `[x0, y0, x1, y1]`: the referred object (`refer`) or the captioned prompt (`locate`).
    #[serde(default, rename = "box", skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f32; 4]>,
    /// The referred object's mask as COCO RLE at the image's size, when the model has a mask
    /// head (`refer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<Segmentation>,
    /// Scored, captioned boxes, best first (`densecap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<Region>>,
    /// Words of the expression the model's vocabulary lacks: it reads them as unknown (`refer`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_words: Vec<String>,
}

impl Answer {
    pub(super) fn new(id: Option<String>, task: Task, (width, height): (u32, u32)) -> Answer {
        Answer {
            id,
            task,
            width,
            height,
            caption: None,
            words: None,
            bbox: None,
            mask: None,
            regions: None,
            unknown_words: Vec::new(),
        }
    }
}

/// A caption word and where the model points for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordAt {
    pub word: String,
    /// `[x, y]` pixels: two per token of the word (the point head's pair, or a box's corners).
    pub points: Vec<[f32; 2]>,
}

impl WordAt {
    /// The centre of the word's points, normalized by `(width, height)`; `None` without points.
    pub fn centre(&self, (width, height): (u32, u32)) -> Option<[f32; 2]> {
        let n = self.points.len() as f32;
        (n > 0.0).then(|| {
            let (sx, sy) = self
                .points
                .iter()
                .fold((0.0, 0.0), |(sx, sy), p| (sx + p[0], sy + p[1]));
            [sx / n / width as f32, sy / n / height as f32]
        })
    }
}

/// A dense-captioning region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub score: f32,
    pub caption: String,
}

/// A normalized box in the pixels of a `width x height` image.
pub fn to_pixels(b: BoxXyxy, (width, height): (u32, u32)) -> [f32; 4] {
    let (w, h) = (width as f32, height as f32);
    [b.x0 * w, b.y0 * h, b.x1 * w, b.y1 * h]
}

/// The caption of generated T5 ids and its words, each with the points of its tokens:
/// `locations[k]` is token `k`'s `(x0, y0, x1, y1)`, normalized, when the head gave one.
///
/// A token belongs to the word the decoded text has reached once it is added; a piece with no
/// text of its own (SentencePiece's lone `▁` before a word) belongs to the word that follows.
pub fn words_at(
    tokenizer: &T5Tokenizer,
    t5_ids: &[usize],
    locations: &[Option<[f32; 4]>],
    size: (u32, u32),
) -> Result<(String, Vec<WordAt>)> {
    let decode = |ids: &[usize]| {
        tokenizer
            .decode(ids)
            .map_err(|e| RunError::Invalid(e.to_string()))
    };
    let caption = decode(t5_ids)?;
    let mut words: Vec<WordAt> = caption
        .split_whitespace()
        .map(|w| WordAt {
            word: w.to_string(),
            points: Vec::new(),
        })
        .collect();
    let (w, h) = (size.0 as f32, size.1 as f32);
    for (k, location) in locations.iter().enumerate().take(t5_ids.len()) {
        let reached = decode(&t5_ids[..=k])?.split_whitespace().count();
        let own_text = !decode(&t5_ids[k..=k])?.trim().is_empty();
        let index = if own_text {
            reached.saturating_sub(1)
        } else {
            reached
        };
        if let (Some(word), Some([x0, y0, x1, y1])) = (words.get_mut(index), location) {
            word.points.push([x0 * w, y0 * h]);
            word.points.push([x1 * w, y1 * h]);
        }
    }
    Ok((caption, words))
}

/// `mask` (the model's square input) at the image's size, as compressed COCO RLE.
pub fn mask_rle(mask: &GrayImage, (width, height): (u32, u32)) -> Segmentation {
    let resized =
        image::imageops::resize(mask, width, height, image::imageops::FilterType::Nearest);
    let (w, h) = (width as usize, height as usize);
    // COCO RLE runs over the mask in column-major order.
    let column_major: Vec<bool> = (0..w * h)
        .map(|i| resized.get_pixel((i / h) as u32, (i % h) as u32)[0] > 127)
        .collect();
    Segmentation::Rle {
        size: [h, w],
        counts: RleCounts::Compressed(Rle::encode(h, w, &column_major).to_compressed()),
    }
}

/// The mask an answer's RLE holds, at the image's size (255 inside).
pub fn mask_from_rle(mask: &Segmentation, (width, height): (u32, u32)) -> Result<GrayImage> {
    let (w, h) = (width as usize, height as usize);
    let inside = mask
        .to_rle(Some((h, w)))
        .and_then(|rle| rle.decode())
        .map_err(|e| RunError::Invalid(format!("mask: {e}")))?;
    if inside.len() != w * h {
        return Err(RunError::Invalid(format!(
            "mask: {} pixels for a {width}x{height} image",
            inside.len()
        )));
    }
    Ok(GrayImage::from_fn(width, height, |x, y| {
        image::Luma([if inside[x as usize * h + y as usize] {
            255
        } else {
            0
        }])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_points_at_its_word_in_the_images_pixels() {
        let tokenizer = T5Tokenizer::bundled().unwrap_or_else(|e| panic!("{e}"));
        // "a" is two pieces, `▁` and `a`; "umbrella" is `▁um` + `brella`.
        let mut ids = tokenizer
            .encode("a red umbrella")
            .unwrap_or_else(|e| panic!("{e}"));
        ids.pop();
        let locations: Vec<Option<[f32; 4]>> = (0..ids.len())
            .map(|k| Some([k as f32 / 10.0, 0.5, k as f32 / 10.0, 0.5]))
            .collect();
        let (caption, words) =
            words_at(&tokenizer, &ids, &locations, (200, 100)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(caption, "a red umbrella");
        let names: Vec<&str> = words.iter().map(|w| w.word.as_str()).collect();
        assert_eq!(names, ["a", "red", "umbrella"]);
        let pieces: usize = words.iter().map(|w| w.points.len() / 2).sum();
        assert_eq!(pieces, ids.len(), "every piece lands on a word");
        // The first piece (`▁`) belongs to "a": x = 0 px; y is half of 100 px.
        assert_eq!(words[0].points[0], [0.0, 50.0]);
        assert_eq!(words[1].points[0], [2.0 / 10.0 * 200.0, 50.0]);
    }

    #[test]
    fn a_mask_comes_back_at_the_images_size() {
        // The first column's top half: the resized mask's top row, left quarter.
        let mut mask = GrayImage::new(4, 4);
        mask.put_pixel(0, 0, image::Luma([255]));
        mask.put_pixel(0, 1, image::Luma([255]));
        let rle = mask_rle(&mask, (8, 2));
        assert_eq!(rle.size(), Some((2, 8)));
        let resized = mask_from_rle(&rle, (8, 2)).unwrap_or_else(|e| panic!("{e}"));
        let set: Vec<(u32, u32)> = resized
            .enumerate_pixels()
            .filter(|(_, _, p)| p[0] > 0)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert_eq!(set, [(0, 0), (1, 0)]);
    }
}
