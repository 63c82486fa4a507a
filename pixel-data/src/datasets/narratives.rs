//! Localized Narratives (Pont-Tuset et al.): JSON Lines, one narrative per line
//! (<https://google.github.io/localized-narratives/index.html?file-formats=1>), with PixelLLM's
//! per-word locations.
//!
//! Location of a word, as scenic `projects/pixel_llm/tools/build_ln_tfrecord.py` (`trace2coord`)
//! builds it: all trace segments of the narrative are concatenated and sorted by time; for each
//! utterance, the trace is linearly interpolated (and extrapolated past its ends, as scipy's
//! `interp1d(fill_value="extrapolate")`) at 16 evenly spaced times from the utterance's start to
//! its end time; the utterance box is the min/max of those points, `(x0, y0, x1, y1)`, clipped to
//! [0, 1] (trace points may lie slightly outside the image); every word of the utterance gets that
//! box. Narratives with fewer than two trace points are dropped (and counted), as there.
//!
//! What [`read_narratives`] leaves out of a well-formed file, in every [`SkipMode`], each listed
//! in [`ReadSummary::dropped`] with its line and [`Reason`]:
//!
//! - [`Reason::EmptyCaption`]: the caption is empty or only white space (nothing to learn).
//! - [`Reason::TooFewTracePoints`]: fewer than two trace points, as scenic drops them.
//! - [`Reason::TraceOutsideImage`]: an utterance's interpolated trace points leave the image by
//!   more than [`TRACE_MARGIN`] (a trace in pixels, or garbage, rather than a mouse that strayed).
//! - [`Reason::DuplicateId`]: the same annotator's narrative of the same image again (several
//!   narratives of one image by different annotators are the format: COCO val has five).
//!
//! Utterance points outside the image by at most [`TRACE_MARGIN`] are normal (the mouse strays
//! past the image's border; the published files have x = -0.02, y = 1.03): they are clipped to
//! the image as scenic clips them, and the narrative is kept and listed in
//! [`ReadSummary::clipped`] ([`Reason::TraceClipped`]). Only the points an utterance is located
//! from count; raw trace points outside every utterance's time do not locate anything.
//! Malformed lines (not JSON, missing fields, non-finite numbers, an utterance ending before it
//! starts) are errors under [`SkipMode::Strict`].

use std::io::BufRead;
use std::path::Path;

use super::{write_string, DatasetError, ReadSummary, Reason, SeenIds, SkipMode};

/// Number of trace samples per utterance (scenic's `num_samples_per_trace`).
pub const SAMPLES_PER_UTTERANCE: usize = 16;

/// How far (a fraction of the image's side) an utterance's trace points may lie outside the
/// image and be clipped; further out, the narrative is skipped.
pub const TRACE_MARGIN: f64 = 0.1;

/// One line of a Localized Narratives file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LocalizedNarrative {
    pub dataset_id: String,
    pub image_id: String,
    pub annotator_id: i64,
    pub caption: String,
    pub timed_caption: Vec<TimedUtterance>,
    pub traces: Vec<Vec<TracePoint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_recording: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimedUtterance {
    pub utterance: String,
    pub start_time: f64,
    pub end_time: f64,
}

/// A mouse trace point, `x`/`y` normalized to the image (possibly slightly outside [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TracePoint {
    pub x: f64,
    pub y: f64,
    pub t: f64,
}

/// The location of one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct UtteranceLocation {
    pub utterance: String,
    /// `(x0, y0, x1, y1)` in [0, 1].
    pub bbox: [f32; 4],
    /// Time-average of the interpolated trace (scenic's `integral_x/y`), clipped to [0, 1].
    pub center: [f32; 2],
    /// The 16 interpolated points, clipped to [0, 1].
    pub points: Vec<[f32; 2]>,
}

/// A narrative with per-word boxes.
#[derive(Debug, Clone, PartialEq)]
pub struct NarrativeSample {
    pub dataset_id: String,
    pub image_id: String,
    pub annotator_id: i64,
    pub caption: String,
    /// Each word of each utterance with its utterance's box `(x0, y0, x1, y1)`.
    pub words: Vec<(String, [f32; 4])>,
    pub utterances: Vec<UtteranceLocation>,
}

impl NarrativeSample {
    /// Image file name: COCO images are `<12-digit id>.jpg`, others `<id>.jpg`.
    pub fn image_file_name(&self) -> String {
        match self.image_id.parse::<u64>() {
            Ok(n) if self.dataset_id.to_ascii_lowercase().contains("coco") => {
                format!("{n:012}.jpg")
            }
            _ => format!("{}.jpg", self.image_id),
        }
    }
}

/// Linear interpolation with linear extrapolation, as scipy `interp1d(kind="linear",
/// fill_value="extrapolate")` on sorted `xs`. Repeated times use the earlier point (scipy would
/// divide by zero there).
fn interp(xs: &[f64], ys: &[f64], x: f64) -> f64 {
    let n = xs.len();
    // searchsorted(side="left"), clipped to [1, n - 1].
    let idx = xs.partition_point(|&v| v < x).clamp(1, n - 1);
    let (x0, x1, y0, y1) = (xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]);
    if x1 == x0 {
        return y0;
    }
    (y1 - y0) / (x1 - x0) * (x - x0) + y0
}

fn clip01(v: f64) -> f32 {
    v.clamp(0.0, 1.0) as f32
}

/// Per-utterance locations of one narrative; `None` when it has fewer than two trace points.
pub fn locate_utterances(record: &LocalizedNarrative) -> Option<Vec<UtteranceLocation>> {
    locate(record).map(|(utterances, _)| utterances)
}

/// How far the trace points that locate `record`'s utterances lie outside the image (0 when
/// inside), before clipping; `None` when it has fewer than two trace points.
pub fn trace_overhang(record: &LocalizedNarrative) -> Option<f64> {
    locate(record).map(|(_, overhang)| overhang)
}

/// The utterance locations and the largest overhang of their unclipped points.
fn locate(record: &LocalizedNarrative) -> Option<(Vec<UtteranceLocation>, f64)> {
    let mut pts: Vec<TracePoint> = record.traces.iter().flatten().copied().collect();
    if pts.len() <= 1 {
        return None;
    }
    pts.sort_by(|a, b| a.t.total_cmp(&b.t));
    let trace = SortedTrace {
        ts: pts.iter().map(|p| p.t).collect(),
        xs: pts.iter().map(|p| p.x).collect(),
        ys: pts.iter().map(|p| p.y).collect(),
    };
    let mut overhang = 0.0f64;
    let out = record
        .timed_caption
        .iter()
        .map(|u| {
            let (location, out) = trace.locate(u);
            overhang = overhang.max(out);
            location
        })
        .collect();
    Some((out, overhang))
}

/// A narrative's trace points sorted by time.
struct SortedTrace {
    ts: Vec<f64>,
    xs: Vec<f64>,
    ys: Vec<f64>,
}

impl SortedTrace {
    /// The 16 times an utterance is sampled at, evenly from its start to its end.
    fn sample_times(u: &TimedUtterance) -> Vec<f64> {
        let n = SAMPLES_PER_UTTERANCE;
        let step = (u.end_time - u.start_time) / (n - 1) as f64;
        (0..n)
            .map(|i| {
                if i == n - 1 {
                    u.end_time
                } else {
                    u.start_time + i as f64 * step
                }
            })
            .collect()
    }

    /// One utterance's location (clipped to the image) and how far its unclipped points lie
    /// outside the image.
    fn locate(&self, u: &TimedUtterance) -> (UtteranceLocation, f64) {
        let n = SAMPLES_PER_UTTERANCE;
        let times = Self::sample_times(u);
        let px: Vec<f64> = times
            .iter()
            .map(|&t| interp(&self.ts, &self.xs, t))
            .collect();
        let py: Vec<f64> = times
            .iter()
            .map(|&t| interp(&self.ts, &self.ys, t))
            .collect();
        let span = times[n - 1] - times[0];
        let (cx, cy) = if span < 1e-5 {
            (
                px.iter().sum::<f64>() / n as f64,
                py.iter().sum::<f64>() / n as f64,
            )
        } else {
            let trapz = |v: &[f64]| {
                (1..n)
                    .map(|i| (times[i] - times[i - 1]) * (v[i] + v[i - 1]) / 2.0)
                    .sum::<f64>()
            };
            (trapz(&px) / span, trapz(&py) / span)
        };
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (x0, y0, x1, y1) = (min(&px), min(&py), max(&px), max(&py));
        let overhang = [-x0, -y0, x1 - 1.0, y1 - 1.0, 0.0]
            .into_iter()
            .fold(0.0, f64::max);
        let location = UtteranceLocation {
            utterance: u.utterance.clone(),
            bbox: [clip01(x0), clip01(y0), clip01(x1), clip01(y1)],
            center: [clip01(cx), clip01(cy)],
            points: px
                .iter()
                .zip(&py)
                .map(|(&x, &y)| [clip01(x), clip01(y)])
                .collect(),
        };
        (location, overhang)
    }
}

fn check(record: &LocalizedNarrative) -> Result<(), String> {
    for (i, u) in record.timed_caption.iter().enumerate() {
        if !u.start_time.is_finite() || !u.end_time.is_finite() {
            return Err(format!("timed_caption[{i}] has a non-finite time"));
        }
        if u.end_time < u.start_time {
            return Err(format!(
                "timed_caption[{i}] ends ({}) before it starts ({})",
                u.end_time, u.start_time
            ));
        }
    }
    for (i, tr) in record.traces.iter().enumerate() {
        if let Some(j) = tr
            .iter()
            .position(|p| !(p.x.is_finite() && p.y.is_finite() && p.t.is_finite()))
        {
            return Err(format!(
                "traces[{i}][{j}] has a non-finite coordinate or time"
            ));
        }
    }
    Ok(())
}

/// A sample from one record; `None` when it has too few trace points.
pub fn sample_from_record(record: &LocalizedNarrative) -> Option<NarrativeSample> {
    locate_utterances(record).map(|utterances| sample_with(record, utterances))
}

/// The sample of `record` with its located utterances.
fn sample_with(record: &LocalizedNarrative, utterances: Vec<UtteranceLocation>) -> NarrativeSample {
    let words = utterances
        .iter()
        .flat_map(|u| {
            u.utterance
                .split_whitespace()
                .map(move |w| (w.to_string(), u.bbox))
        })
        .collect();
    NarrativeSample {
        dataset_id: record.dataset_id.clone(),
        image_id: record.image_id.clone(),
        annotator_id: record.annotator_id,
        caption: record.caption.clone(),
        words,
        utterances,
    }
}

/// Reads a Localized Narratives JSON Lines file. Blank lines are ignored; what is left out or
/// clipped is listed in the summary (see the module doc).
pub fn read_narratives(
    path: &Path,
    mode: SkipMode,
) -> Result<(Vec<NarrativeSample>, ReadSummary), DatasetError> {
    let file = std::fs::File::open(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut summary = ReadSummary::default();
    let mut kept = KeptNarratives::default();
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| DatasetError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let (location, line_number) = (format!("line {}", i + 1), i + 1);
        let record = match parse_record(&line) {
            Ok(r) => r,
            Err(why) => {
                summary.malformed(mode, path, location, line_number, why)?;
                continue;
            }
        };
        match kept.sample(&record, line_number) {
            Ok((sample, None)) => out.push(sample),
            Ok((sample, Some(why))) => {
                summary.clip_record(location, line_number, Reason::TraceClipped, why);
                out.push(sample);
            }
            Err((cause, why)) => summary.drop_record(location, line_number, cause, why),
        }
    }
    summary.samples = out.len();
    Ok((out, summary))
}

/// One line as a checked record, or why it is malformed.
fn parse_record(line: &str) -> Result<LocalizedNarrative, String> {
    let record: LocalizedNarrative = serde_json::from_str(line).map_err(|e| e.to_string())?;
    check(&record)?;
    Ok(record)
}

/// The narratives kept so far, by image and annotator.
#[derive(Default)]
struct KeptNarratives {
    seen: SeenIds<String>,
}

impl KeptNarratives {
    /// The sample of a well-formed record, with a note when its trace was clipped, or why it
    /// is left out.
    fn sample(
        &mut self,
        record: &LocalizedNarrative,
        line: usize,
    ) -> Result<(NarrativeSample, Option<String>), (Reason, String)> {
        let image = &record.image_id;
        if record.caption.trim().is_empty() {
            return Err((
                Reason::EmptyCaption,
                format!("image {image}: empty caption"),
            ));
        }
        let Some((utterances, overhang)) = locate(record) else {
            return Err((
                Reason::TooFewTracePoints,
                format!("image {image}: fewer than two trace points (dropped as PixelLLM's preprocessing does)"),
            ));
        };
        if overhang > TRACE_MARGIN {
            return Err((
                Reason::TraceOutsideImage,
                format!("image {image}: the trace leaves the image by {overhang:.3} of its side (more than {TRACE_MARGIN})"),
            ));
        }
        let key = format!("{image} (annotator {})", record.annotator_id);
        self.seen
            .first("narrative of image", key, line)
            .map_err(|why| (Reason::DuplicateId, why))?;
        let clipped = (overhang > 0.0).then(|| {
            format!("image {image}: trace points up to {overhang:.3} outside the image, clipped")
        });
        Ok((sample_with(record, utterances), clipped))
    }
}

/// A record whose trace reproduces `sample`'s word boxes when read back: consecutive words with
/// the same box form one utterance of 0.5 s, traced from the box's `(x0, y0)` corner to its
/// `(x1, y1)` corner; utterances start one second apart.
pub fn record_from_sample(sample: &NarrativeSample) -> LocalizedNarrative {
    let mut groups: Vec<(Vec<&str>, [f32; 4])> = Vec::new();
    for (w, b) in &sample.words {
        match groups.last_mut() {
            Some((ws, gb)) if gb == b => ws.push(w),
            _ => groups.push((vec![w], *b)),
        }
    }
    let mut timed_caption = Vec::new();
    let mut trace = Vec::new();
    for (k, (ws, b)) in groups.iter().enumerate() {
        let (start, end) = (k as f64, k as f64 + 0.5);
        timed_caption.push(TimedUtterance {
            utterance: ws.join(" "),
            start_time: start,
            end_time: end,
        });
        trace.push(TracePoint {
            x: b[0] as f64,
            y: b[1] as f64,
            t: start,
        });
        trace.push(TracePoint {
            x: b[2] as f64,
            y: b[3] as f64,
            t: end,
        });
    }
    LocalizedNarrative {
        dataset_id: sample.dataset_id.clone(),
        image_id: sample.image_id.clone(),
        annotator_id: sample.annotator_id,
        caption: sample.caption.clone(),
        timed_caption,
        traces: vec![trace],
        voice_recording: None,
    }
}

/// Writes records as JSON Lines.
pub fn write_narrative_records(
    path: &Path,
    records: &[LocalizedNarrative],
) -> Result<(), DatasetError> {
    let mut text = String::new();
    for r in records {
        let line = serde_json::to_string(r).map_err(|e| DatasetError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    write_string(path, &text)
}

/// Writes samples as Localized Narratives JSON Lines (see [`record_from_sample`]); reading the
/// file back gives the same words and boxes.
pub fn write_narratives(path: &Path, samples: &[NarrativeSample]) -> Result<(), DatasetError> {
    let records: Vec<LocalizedNarrative> = samples.iter().map(record_from_sample).collect();
    write_narrative_records(path, &records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(traces: Vec<Vec<TracePoint>>, timed: Vec<(&str, f64, f64)>) -> LocalizedNarrative {
        LocalizedNarrative {
            dataset_id: "mscoco_val2017".into(),
            image_id: "139".into(),
            annotator_id: 1,
            caption: "x".into(),
            timed_caption: timed
                .into_iter()
                .map(|(u, s, e)| TimedUtterance {
                    utterance: u.into(),
                    start_time: s,
                    end_time: e,
                })
                .collect(),
            traces,
            voice_recording: None,
        }
    }

    fn p(x: f64, y: f64, t: f64) -> TracePoint {
        TracePoint { x, y, t }
    }

    #[test]
    fn utterance_box_spans_the_trace_during_the_utterance() {
        let r = record(
            vec![
                vec![p(0.0, 0.0, 0.0), p(1.0, 0.5, 1.0)],
                vec![p(1.0, 1.0, 2.0)],
            ],
            vec![("a dog", 0.25, 0.75), ("runs", 1.0, 2.0)],
        );
        let s = sample_from_record(&r).unwrap_or_else(|| panic!("no sample"));
        assert_eq!(s.words.len(), 3);
        assert_eq!(s.words[0].0, "a");
        assert_eq!(s.words[0].1, s.words[1].1);
        let b = s.words[0].1;
        assert!((b[0] - 0.25).abs() < 1e-6 && (b[2] - 0.75).abs() < 1e-6);
        assert!((b[1] - 0.125).abs() < 1e-6 && (b[3] - 0.375).abs() < 1e-6);
        assert_eq!(s.words[2].1, [1.0, 0.5, 1.0, 1.0]);
    }

    #[test]
    fn extrapolates_and_clips_outside_the_trace() {
        let r = record(
            vec![vec![p(0.5, 0.5, 1.0), p(0.9, 0.5, 2.0)]],
            vec![("late", 2.0, 3.0)],
        );
        let s = sample_from_record(&r).unwrap_or_else(|| panic!("no sample"));
        // x runs 0.9 -> 1.3 past the trace end; clipped at 1.
        assert_eq!(s.words[0].1, [0.9, 0.5, 1.0, 0.5]);
    }

    #[test]
    fn coco_image_file_names_are_zero_padded() {
        let r = record(vec![vec![p(0.0, 0.0, 0.0), p(1.0, 1.0, 1.0)]], vec![]);
        let s = sample_from_record(&r).unwrap_or_else(|| panic!("no sample"));
        assert_eq!(s.image_file_name(), "000000000139.jpg");
    }

    /// Reads `records` written as a JSON Lines file (one per line, from line 1).
    fn read_records(records: &[LocalizedNarrative]) -> (Vec<NarrativeSample>, ReadSummary) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("ln.jsonl");
        write_narrative_records(&path, records).unwrap_or_else(|e| panic!("{e}"));
        read_narratives(&path, SkipMode::Strict).unwrap_or_else(|e| panic!("{e}"))
    }

    fn good() -> LocalizedNarrative {
        record(
            vec![vec![p(0.1, 0.1, 0.0), p(0.9, 0.9, 1.0)]],
            vec![("a dog", 0.0, 1.0)],
        )
    }

    /// The causes and lines of the records left out.
    fn dropped(summary: &ReadSummary) -> Vec<(Reason, usize)> {
        summary.dropped.iter().map(|r| (r.cause, r.line)).collect()
    }

    #[test]
    fn empty_caption_is_skipped_and_counted() {
        let mut blank = good();
        blank.caption = "  ".into();
        blank.annotator_id = 2;
        let (samples, summary) = read_records(&[good(), blank]);
        assert_eq!(samples.len(), 1);
        assert_eq!(dropped(&summary), vec![(Reason::EmptyCaption, 2)]);
    }

    #[test]
    fn too_few_trace_points_are_skipped_and_counted() {
        let single = record(vec![vec![p(0.5, 0.5, 0.0)]], vec![("a", 0.0, 1.0)]);
        let (samples, summary) = read_records(&[single, good()]);
        assert_eq!(samples.len(), 1);
        assert_eq!(dropped(&summary), vec![(Reason::TooFewTracePoints, 1)]);
    }

    #[test]
    fn trace_far_outside_the_image_is_skipped_and_counted() {
        // Pixels, not fractions of the image.
        let pixels = record(
            vec![vec![p(12.0, 40.0, 0.0), p(300.0, 200.0, 1.0)]],
            vec![("a dog", 0.0, 1.0)],
        );
        let (samples, summary) = read_records(&[good(), pixels]);
        assert_eq!(samples.len(), 1);
        assert_eq!(dropped(&summary), vec![(Reason::TraceOutsideImage, 2)]);
        assert!(summary.clipped.is_empty());
    }

    #[test]
    fn trace_just_outside_the_image_is_clipped_kept_and_counted() {
        let strayed = record(
            vec![vec![p(-0.05, 0.5, 0.0), p(0.5, 1.08, 1.0)]],
            vec![("a dog", 0.0, 1.0)],
        );
        let (samples, summary) = read_records(&[strayed]);
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].words[0].1, [0.0, 0.5, 0.5, 1.0]);
        assert!(summary.dropped.is_empty());
        let clipped: Vec<_> = summary.clipped.iter().map(|r| (r.cause, r.line)).collect();
        assert_eq!(clipped, vec![(Reason::TraceClipped, 1)]);
    }

    #[test]
    fn inside_the_image_nothing_is_clipped() {
        let (_, summary) = read_records(&[good()]);
        assert!(summary.clipped.is_empty() && summary.dropped.is_empty());
        assert_eq!(trace_overhang(&good()), Some(0.0));
    }

    #[test]
    fn same_annotators_narrative_of_an_image_twice_is_a_duplicate() {
        let mut other_annotator = good();
        other_annotator.annotator_id = 2;
        let (samples, summary) = read_records(&[good(), other_annotator, good()]);
        assert_eq!(samples.len(), 2);
        assert_eq!(dropped(&summary), vec![(Reason::DuplicateId, 3)]);
        assert!(
            summary.dropped[0].reason.contains("line 1"),
            "{:?}",
            summary.dropped
        );
    }

    #[test]
    fn single_point_narrative_has_no_sample() {
        let r = record(vec![vec![p(0.0, 0.0, 0.0)]], vec![("a", 0.0, 1.0)]);
        assert!(sample_from_record(&r).is_none());
    }
}
