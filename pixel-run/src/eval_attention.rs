//! Where the decoder looks when it places a referring expression's box.
//!
//! For expressions in images with two or more objects, the decoder's cross-attention at the
//! position that regresses the box is split into the share on the named object's grid cells, on
//! the other objects' cells, on the background cells and on the text prompt, per decoder block and
//! head. Next to it stands what uniform attention over the visual tokens would give. A decoder
//! that binds words to objects puts more on the named object than its area; one that only finds
//! objects gives every object about its area's share (README, "What the demo learns").
use crate::error::Result;
use dfdx::prelude::*;
use pixel_core::geometry::BoxXyxy;
use pixel_core::nn::AttentionMap;
use pixel_model::eval::Predictor;
use pixel_model::model::{PixelDims, PixelLlm};
use pixel_model::tasks::{Example, TaskKind};
use serde::{Deserialize, Serialize};

/// Shares of attention, or of the image grid, by region; they sum to 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionShares {
    pub named: f32,
    pub others: f32,
    pub background: f32,
    pub text: f32,
}

impl RegionShares {
    fn add(&mut self, region: Region, mass: f32) {
        match region {
            Region::Named => self.named += mass,
            Region::Others => self.others += mass,
            Region::Background => self.background += mass,
            Region::Text => self.text += mass,
        }
    }

    fn scaled(self, factor: f32) -> RegionShares {
        RegionShares {
            named: self.named * factor,
            others: self.others * factor,
            background: self.background * factor,
            text: self.text * factor,
        }
    }
}

impl std::ops::AddAssign for RegionShares {
    fn add_assign(&mut self, other: RegionShares) {
        self.named += other.named;
        self.others += other.others;
        self.background += other.background;
        self.text += other.text;
    }
}

/// The decoder's cross-attention at referring expressions' box positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingReport {
    /// Expressions read: those of images with two or more objects.
    pub expressions: usize,
    /// What uniform attention over the visual tokens would give (nothing on the text).
    pub uniform: RegionShares,
    /// Mean shares, `[decoder block][head]`.
    pub attention: Vec<Vec<RegionShares>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Named,
    Others,
    Background,
    Text,
}

/// The region of each cell of a `grid` x `grid` token grid, row-major: where its centre lies.
fn cell_regions(grid: usize, named: BoxXyxy, objects: &[BoxXyxy]) -> Vec<Region> {
    let inside = |b: &BoxXyxy, x: f32, y: f32| x >= b.x0 && x <= b.x1 && y >= b.y0 && y <= b.y1;
    (0..grid * grid)
        .map(|cell| {
            let x = ((cell % grid) as f32 + 0.5) / grid as f32;
            let y = ((cell / grid) as f32 + 0.5) / grid as f32;
            if inside(&named, x, y) {
                Region::Named
            } else if objects.iter().any(|o| *o != named && inside(o, x, y)) {
                Region::Others
            } else {
                Region::Background
            }
        })
        .collect()
}

/// One attention row split by region: keys below `cells.len()` are visual tokens, the rest text.
fn split_row(row: &[f32], cells: &[Region]) -> RegionShares {
    let mut shares = RegionShares::default();
    for (j, &p) in row.iter().enumerate() {
        shares.add(cells.get(j).copied().unwrap_or(Region::Text), p);
    }
    shares
}

/// The report over `examples`' referring expressions in images with two or more objects, in
/// batches of `batch_size`. `None` when the visual tokens are not the image grid (sparse
/// fusion) or no expression qualifies; expressions whose head regresses no token are skipped.
pub fn referring_attention<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe>(
    model: &PixelLlm<P, D>,
    examples: &[Example],
    batch_size: usize,
) -> Result<Option<BindingReport>> {
    if model.prompt_feature_extractor.dense_output.is_none() {
        return Ok(None);
    }
    let sam = P::sam();
    let grid = sam.image_size / sam.patch_size;
    let chosen: Vec<Example> = examples
        .iter()
        .filter(|e| e.task == TaskKind::ReferringLocalization && e.object_boxes.len() >= 2)
        .cloned()
        .collect();
    let mut sums: Vec<Vec<RegionShares>> = Vec::new();
    let mut uniform = RegionShares::default();
    let mut expressions = 0;
    for part in chosen.chunks(batch_size.max(1)) {
        let batch = model.batch(part)?;
        let maps = model.decoder_cross_attention(&batch)?;
        let t = batch.target_len;
        for (b, example) in part.iter().enumerate() {
            let position = (0..t).find(|&q| batch.location_weights[(b * t + q) * 4] > 0.0);
            let (Some(position), Some(named)) = (position, example.target_box) else {
                continue;
            };
            let cells = cell_regions(grid, named, &example.object_boxes);
            uniform += split_row(&vec![1.0 / cells.len() as f32; cells.len()], &cells);
            add_heads(&mut sums, &maps, b, position, &cells);
            expressions += 1;
        }
    }
    if expressions == 0 {
        return Ok(None);
    }
    let mean = 1.0 / expressions as f32;
    Ok(Some(BindingReport {
        expressions,
        uniform: uniform.scaled(mean),
        attention: sums
            .into_iter()
            .map(|heads| heads.into_iter().map(|s| s.scaled(mean)).collect())
            .collect(),
    }))
}

/// Adds example `b`'s shares at `position` to `sums[block][head]`.
fn add_heads(
    sums: &mut Vec<Vec<RegionShares>>,
    maps: &[AttentionMap],
    b: usize,
    position: usize,
    cells: &[Region],
) {
    sums.resize(maps.len(), Vec::new());
    for (block, map) in maps.iter().enumerate() {
        let heads = map.shape.1;
        sums[block].resize(heads, RegionShares::default());
        for (h, sum) in sums[block].iter_mut().enumerate() {
            *sum += split_row(map.row(b, h, position), cells);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::ExperimentConfig;
    use pixel_data::shapes_ln::{ShapesLn, Split};
    use pixel_lm::tokenizer::T5Tokenizer;
    use pixel_model::model::TinyPixelLlm;
    use pixel_model::task_mix::evaluation_examples;
    use pixel_model::tasks::ExampleBuilder;

    fn bx(x0: f32, y0: f32, x1: f32, y1: f32) -> BoxXyxy {
        BoxXyxy::new(x0, y0, x1, y1).unwrap()
    }

    #[test]
    fn cells_take_the_region_of_their_centre() {
        // A 2 x 2 grid: cell centres at 0.25 and 0.75.
        let named = bx(0.0, 0.0, 0.5, 0.5);
        let other = bx(0.6, 0.6, 1.0, 1.0);
        let cells = cell_regions(2, named, &[named, other]);
        use Region::*;
        assert_eq!(cells, [Named, Background, Background, Others]);
        let shares = split_row(&[0.5, 0.1, 0.1, 0.2, 0.06, 0.04], &cells);
        let expected = [0.5, 0.2, 0.2, 0.1];
        let got = [shares.named, shares.others, shares.background, shares.text];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn a_tiny_model_reports_shares_that_sum_to_one_per_head() {
        let config = ExperimentConfig::builtin().unwrap();
        let model = TinyPixelLlm::build(&config.model, 0).unwrap();
        let tokenizer = T5Tokenizer::bundled().unwrap();
        let builder = ExampleBuilder {
            tokenizer: &tokenizer,
            vocab: &model.vocab,
            max_target_tokens: config.tasks.max_target_tokens,
        };
        let data = ShapesLn::new(config.data.clone(), 3).unwrap();
        let examples = evaluation_examples(&data, &builder, Split::Validation, 6).unwrap();
        let report = referring_attention(&model, &examples, 4).unwrap().unwrap();
        let several = examples
            .iter()
            .filter(|e| e.task == TaskKind::ReferringLocalization && e.object_boxes.len() >= 2)
            .count();
        assert_eq!(report.expressions, several);
        let total = |s: &RegionShares| s.named + s.others + s.background + s.text;
        assert!((total(&report.uniform) - 1.0).abs() < 1e-4);
        assert_eq!(report.uniform.text, 0.0);
        assert!(report.uniform.named > 0.0 && report.uniform.others > 0.0);
        assert_eq!(
            report.attention.len(),
            model.language_model.decoder.block.len()
        );
        for heads in &report.attention {
            assert_eq!(heads.len(), model.language_model.decoder.heads());
            for s in heads {
                assert!((total(s) - 1.0).abs() < 1e-4, "{s:?}");
            }
        }
    }
}
