//! COCO masks (pycocotools `maskApi.c`): run-length encoding in column-major order, its
//! compressed string form, polygon rasterization, and referring segmentation scores
//! (cIoU = cumulative intersection / cumulative union, gIoU = mean per-sample IoU, as scenic's
//! PixelLLM `RefCocoEvaluator`).

use std::collections::BTreeMap;
use std::path::Path;

use super::{read_json, MetricsError};

/// Largest mask (in pixels) decoded; larger sizes in user input are reported as errors.
const MAX_PIXELS: usize = 1 << 30;

/// A COCO run-length encoded binary mask of `h x w` pixels. `counts` alternate runs of 0s and 1s
/// in column-major (Fortran) order, starting with 0s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    pub h: usize,
    pub w: usize,
    pub counts: Vec<u64>,
}

impl Rle {
    /// Encodes a column-major mask (`mask[x * h + y]`).
    pub fn encode(h: usize, w: usize, mask: &[bool]) -> Rle {
        let mut counts = Vec::new();
        let mut cur = false;
        let mut run = 0u64;
        for &m in mask.iter().take(h * w) {
            if m != cur {
                counts.push(run);
                run = 0;
                cur = m;
            }
            run += 1;
        }
        counts.push(run);
        Rle { h, w, counts }
    }

    /// Decodes to a column-major mask of `h * w` values.
    pub fn decode(&self) -> Result<Vec<bool>, String> {
        let n = self
            .h
            .checked_mul(self.w)
            .filter(|&n| n <= MAX_PIXELS)
            .ok_or_else(|| format!("mask size {}x{} is too large", self.h, self.w))?;
        let mut out = Vec::with_capacity(n);
        let mut v = false;
        for &c in &self.counts {
            if (out.len() as u64).saturating_add(c) > n as u64 {
                return Err(format!("run lengths sum past h*w = {n}"));
            }
            out.extend(std::iter::repeat_n(v, c as usize));
            v = !v;
        }
        if out.len() != n {
            return Err(format!("run lengths sum to {} but h*w = {n}", out.len()));
        }
        Ok(out)
    }

    /// Number of foreground pixels.
    pub fn area(&self) -> u64 {
        self.counts.iter().skip(1).step_by(2).sum()
    }

    /// Parses pycocotools' compressed counts string (`rleFrString`).
    pub fn from_compressed(h: usize, w: usize, s: &str) -> Result<Rle, String> {
        let bytes = s.as_bytes();
        let mut counts: Vec<i64> = Vec::new();
        let mut p = 0usize;
        while p < bytes.len() {
            let mut x: i64 = 0;
            let mut k = 0u32;
            let mut more = true;
            while more {
                let Some(&b) = bytes.get(p) else {
                    return Err(format!("string ends inside a count at byte {p}"));
                };
                if !(48..48 + 64).contains(&b) {
                    return Err(format!(
                        "byte {p} (`{}`) is not a valid RLE character",
                        b as char
                    ));
                }
                if k > 12 {
                    return Err(format!("count at byte {p} is too long"));
                }
                let c = (b - 48) as i64;
                x |= (c & 0x1f) << (5 * k);
                more = c & 0x20 != 0;
                p += 1;
                k += 1;
                if !more && (c & 0x10) != 0 && 5 * k < 64 {
                    x |= -1i64 << (5 * k);
                }
            }
            let m = counts.len();
            if m > 2 {
                x = x
                    .checked_add(counts[m - 2])
                    .ok_or_else(|| format!("count {m} overflows"))?;
            }
            counts.push(x);
        }
        if let Some((i, c)) = counts.iter().enumerate().find(|(_, c)| **c < 0) {
            return Err(format!("decoded run {i} is negative ({c})"));
        }
        Ok(Rle {
            h,
            w,
            counts: counts.into_iter().map(|c| c as u64).collect(),
        })
    }

    /// pycocotools' compressed counts string (`rleToString`).
    pub fn to_compressed(&self) -> String {
        let mut s = String::new();
        for i in 0..self.counts.len() {
            let mut x = self.counts[i] as i64;
            if i > 2 {
                x -= self.counts[i - 2] as i64;
            }
            let mut more = true;
            while more {
                let mut c = x & 0x1f;
                x >>= 5;
                more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    c |= 0x20;
                }
                s.push((c as u8 + 48) as char);
            }
        }
        s
    }

    /// Rasterizes one polygon `[x0, y0, x1, y1, ...]` exactly as pycocotools' `rleFrPoly`.
    pub fn from_polygon(h: usize, w: usize, xy: &[f64]) -> Rle {
        let k = xy.len() / 2;
        if k == 0 {
            return Rle {
                h,
                w,
                counts: vec![(h * w) as u64],
            };
        }
        let scale = 5.0f64;
        let mut x: Vec<i64> = (0..k).map(|j| (scale * xy[2 * j] + 0.5) as i64).collect();
        let mut y: Vec<i64> = (0..k)
            .map(|j| (scale * xy[2 * j + 1] + 0.5) as i64)
            .collect();
        x.push(x[0]);
        y.push(y[0]);
        let mut u: Vec<i64> = Vec::new();
        let mut v: Vec<i64> = Vec::new();
        for j in 0..k {
            let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
            let dx = (xe - xs).abs();
            let dy = (ys - ye).abs();
            let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
            if flip {
                std::mem::swap(&mut xs, &mut xe);
                std::mem::swap(&mut ys, &mut ye);
            }
            let s = if dx >= dy {
                if dx == 0 {
                    0.0
                } else {
                    (ye - ys) as f64 / dx as f64
                }
            } else {
                (xe - xs) as f64 / dy as f64
            };
            if dx >= dy {
                for d in 0..=dx {
                    let t = if flip { dx - d } else { d };
                    u.push(t + xs);
                    v.push((ys as f64 + s * t as f64 + 0.5) as i64);
                }
            } else {
                for d in 0..=dy {
                    let t = if flip { dy - d } else { d };
                    v.push(t + ys);
                    u.push((xs as f64 + s * t as f64 + 0.5) as i64);
                }
            }
        }
        let mut bx: Vec<i64> = Vec::new();
        let mut by: Vec<i64> = Vec::new();
        for j in 1..u.len() {
            if u[j] != u[j - 1] {
                let mut xd = if u[j] < u[j - 1] { u[j] } else { u[j] - 1 } as f64;
                xd = (xd + 0.5) / scale - 0.5;
                if xd.floor() != xd || xd < 0.0 || xd > w as f64 - 1.0 {
                    continue;
                }
                let mut yd = if v[j] < v[j - 1] { v[j] } else { v[j - 1] } as f64;
                yd = (yd + 0.5) / scale - 0.5;
                if yd < 0.0 {
                    yd = 0.0;
                } else if yd > h as f64 {
                    yd = h as f64;
                }
                yd = yd.ceil();
                bx.push(xd as i64);
                by.push(yd as i64);
            }
        }
        let mut a: Vec<i64> = bx.iter().zip(&by).map(|(x, y)| x * h as i64 + y).collect();
        a.push((h * w) as i64);
        a.sort_unstable();
        let mut p = 0i64;
        for e in a.iter_mut() {
            let t = *e;
            *e -= p;
            p = t;
        }
        let mut b: Vec<i64> = Vec::with_capacity(a.len());
        let mut j = 0usize;
        b.push(a[j]);
        j += 1;
        while j < a.len() {
            if a[j] > 0 {
                b.push(a[j]);
                j += 1;
            } else {
                j += 1;
                if j < a.len() {
                    if let Some(last) = b.last_mut() {
                        *last += a[j];
                    }
                    j += 1;
                }
            }
        }
        Rle {
            h,
            w,
            counts: b.into_iter().map(|c| c.max(0) as u64).collect(),
        }
    }

    /// Union of several polygons (pycocotools `frPyObjects` + `merge`).
    pub fn from_polygons(h: usize, w: usize, polys: &[Vec<f64>]) -> Result<Rle, String> {
        let n = pixels(h, w)?;
        check_polygons(h, w, polys)?;
        let mut mask = vec![false; n];
        for p in polys {
            for (m, v) in mask.iter_mut().zip(Rle::from_polygon(h, w, p).decode()?) {
                *m |= v;
            }
        }
        Ok(Rle::encode(h, w, &mask))
    }
}

/// `h * w`, or an error when a mask of that size is too large to decode.
fn pixels(h: usize, w: usize) -> Result<usize, String> {
    h.checked_mul(w)
        .filter(|&n| n <= MAX_PIXELS)
        .ok_or_else(|| format!("mask size {h}x{w} is too large"))
}

/// Polygons are pairs of finite coordinates near an `h x w` image. Rasterization walks every
/// boundary pixel (at 5x resolution), so coordinates far outside the image would take unbounded
/// time and memory; no real annotation has them.
fn check_polygons(h: usize, w: usize, polys: &[Vec<f64>]) -> Result<(), String> {
    let limit = 16.0 * h.max(w) as f64 + 1024.0;
    for (i, p) in polys.iter().enumerate() {
        if p.len() % 2 != 0 {
            return Err(format!(
                "polygon {i} has an odd number of coordinates ({})",
                p.len()
            ));
        }
        if let Some(v) = p.iter().find(|v| !v.is_finite() || v.abs() > limit) {
            return Err(format!(
                "polygon {i} has coordinate {v}, far outside the {h}x{w} image"
            ));
        }
    }
    Ok(())
}

/// Intersection and union pixel counts of two masks of the same size.
pub fn intersection_union(a: &Rle, b: &Rle) -> Result<(u64, u64), String> {
    if (a.h, a.w) != (b.h, b.w) {
        return Err(format!(
            "mask sizes differ: {}x{} vs {}x{}",
            a.h, a.w, b.h, b.w
        ));
    }
    let (da, db) = (a.decode()?, b.decode()?);
    let mut i = 0u64;
    let mut u = 0u64;
    for (x, y) in da.iter().zip(&db) {
        i += (*x && *y) as u64;
        u += (*x || *y) as u64;
    }
    Ok((i, u))
}

/// A segmentation as it appears in COCO-style JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    /// `{"size": [h, w], "counts": "<compressed>" | [runs...]}`.
    Rle { size: [usize; 2], counts: RleCounts },
    /// `{"size": [h, w], "polygons": [[x, y, ...], ...]}`.
    SizedPolygons {
        size: [usize; 2],
        polygons: Vec<Vec<f64>>,
    },
    /// `[[x, y, ...], ...]`; the size comes from the other mask of the pair.
    Polygons(Vec<Vec<f64>>),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum RleCounts {
    Compressed(String),
    Runs(Vec<u64>),
}

impl Segmentation {
    pub fn size(&self) -> Option<(usize, usize)> {
        match self {
            Segmentation::Rle { size, .. } | Segmentation::SizedPolygons { size, .. } => {
                Some((size[0], size[1]))
            }
            Segmentation::Polygons(_) => None,
        }
    }

    /// Whether this decodes to a mask of an `h x w` image, checked without decoding it (cheap
    /// enough for every annotation of a dataset when it is read): an RLE of that size whose runs
    /// sum to `h * w`, or polygons (of that size, if given) that [`Rle::from_polygons`] takes.
    pub fn check(&self, h: usize, w: usize) -> Result<(), String> {
        pixels(h, w)?;
        if let Some(size) = self.size().filter(|&size| size != (h, w)) {
            return Err(format!(
                "has size {}x{} (h x w), its image {h}x{w}",
                size.0, size.1
            ));
        }
        match self {
            Segmentation::Rle { .. } => {
                let rle = self.to_rle(None)?;
                let sum = rle.counts.iter().try_fold(0u64, |a, &c| a.checked_add(c));
                match sum {
                    Some(n) if n == (h * w) as u64 => Ok(()),
                    _ => Err(format!(
                        "has run lengths that do not sum to h*w = {}",
                        h * w
                    )),
                }
            }
            Segmentation::SizedPolygons { polygons, .. } | Segmentation::Polygons(polygons) => {
                check_polygons(h, w, polygons)
            }
        }
    }

    /// To RLE; `fallback` gives `(h, w)` for bare polygons.
    pub fn to_rle(&self, fallback: Option<(usize, usize)>) -> Result<Rle, String> {
        match self {
            Segmentation::Rle { size, counts } => match counts {
                RleCounts::Compressed(s) => Rle::from_compressed(size[0], size[1], s),
                RleCounts::Runs(r) => Ok(Rle {
                    h: size[0],
                    w: size[1],
                    counts: r.clone(),
                }),
            },
            Segmentation::SizedPolygons { size, polygons } => {
                Rle::from_polygons(size[0], size[1], polygons)
            }
            Segmentation::Polygons(p) => {
                let (h, w) = fallback.ok_or("bare polygons need an image size: give {\"size\": [h, w], \"polygons\": ...} on one side")?;
                Rle::from_polygons(h, w, p)
            }
        }
    }
}

/// Referring segmentation scores, as scenic's `RefCocoEvaluator` (`seg_cIoU`, `seg_gIoU`,
/// `seg_AP`) computes them, including its `1e-5` in the denominators.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RefSegScores {
    /// Cumulative IoU: `mean(I) / (mean(U) + 1e-5)` (= total intersection / total union).
    pub ciou: f64,
    /// Mean per-sample IoU: `mean(I / (U + 1e-5))` (a sample with an empty union counts as 0).
    pub giou: f64,
    /// Fraction of samples with mask IoU > 0.5.
    pub acc50: f64,
}

/// cIoU, gIoU and mask Acc@0.5 over ids.
pub fn refseg_scores(
    gt: &BTreeMap<String, Segmentation>,
    preds: &BTreeMap<String, Segmentation>,
) -> Result<RefSegScores, MetricsError> {
    super::check_prediction_ids(gt, preds)?;
    let (mut si, mut su, mut giou, mut hits) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for (id, g) in gt {
        let p = preds
            .get(id)
            .ok_or_else(|| MetricsError::MissingPrediction { id: id.clone() })?;
        let bad = |why: String| MetricsError::InvalidMask {
            id: id.clone(),
            why,
        };
        let gr = g.to_rle(p.size()).map_err(bad)?;
        let pr = p.to_rle(Some((gr.h, gr.w))).map_err(bad)?;
        let (i, u) = intersection_union(&gr, &pr).map_err(bad)?;
        let iou = i as f64 / (u as f64 + 1e-5);
        si += i as f64;
        su += u as f64;
        giou += iou;
        hits += (iou > 0.5) as usize;
    }
    let n = gt.len() as f64;
    Ok(RefSegScores {
        ciou: (si / n) / (su / n + 1e-5),
        giou: giou / n,
        acc50: hits as f64 / n,
    })
}

/// `pixel metrics refloc --masks --gt G.json --preds P.json`.
pub fn refseg_from_files(gt: &Path, preds: &Path) -> Result<RefSegScores, MetricsError> {
    const LAYOUT: &str =
        "an object {\"<id>\": {\"size\": [h, w], \"counts\": ...} | [[x, y, ...], ...]}";
    let g: BTreeMap<String, Segmentation> = read_json(gt, LAYOUT)?;
    let p: BTreeMap<String, Segmentation> = read_json(preds, LAYOUT)?;
    refseg_scores(&g, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_string_round_trips_known_value() {
        // pycocotools: encode(np.asfortranarray(m)) for a 4x4 mask with a 2x2 block at (1,1).
        let mut m = vec![false; 16];
        for x in 1..3 {
            for y in 1..3 {
                m[x * 4 + y] = true;
            }
        }
        let r = Rle::encode(4, 4, &m);
        assert_eq!(r.counts, vec![5, 2, 2, 2, 5]);
        let s = r.to_compressed();
        assert_eq!(Rle::from_compressed(4, 4, &s), Ok(r));
    }

    #[test]
    fn polygon_square_covers_its_pixels() {
        let r = Rle::from_polygon(10, 10, &[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]);
        assert_eq!(r.decode().map(|d| d.len()), Ok(100));
        assert!(r.area() >= 16 && r.area() <= 25, "{}", r.area());
    }

    #[test]
    fn invalid_rle_character_is_reported() {
        assert!(Rle::from_compressed(2, 2, "\u{7f}").is_err());
    }

    #[test]
    fn ciou_pools_pixels_while_giou_averages_samples() {
        let full = |h, w| Segmentation::Rle {
            size: [h, w],
            counts: RleCounts::Runs(vec![0, (h * w) as u64]),
        };
        let half = Segmentation::Rle {
            size: [2, 2],
            counts: RleCounts::Runs(vec![2, 2]),
        };
        let mut gt = BTreeMap::new();
        let mut pr = BTreeMap::new();
        gt.insert("a".to_string(), full(2, 2));
        pr.insert("a".to_string(), half);
        gt.insert("b".to_string(), full(10, 10));
        pr.insert("b".to_string(), full(10, 10));
        let s = refseg_scores(&gt, &pr).unwrap_or_else(|e| panic!("{e}"));
        assert!((s.ciou - 102.0 / 104.0).abs() < 1e-6);
        assert!((s.giou - 0.75).abs() < 1e-6);
        assert!((s.acc50 - 0.5).abs() < 1e-12);
    }
}
