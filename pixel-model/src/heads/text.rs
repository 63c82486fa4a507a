//! Coordinates written as text, the paper's baselines for dense per-token regression.
//!
//! - `bins`: each coordinate quantized to one of N bins, written as one extra vocabulary token
//!   (Pix2Seq's recipe). The bin tokens are T5's sentinel pieces `<extra_id_k>`, so a real T5
//!   vocabulary needs no growth.
//! - `string`: the box written as `[0.12, 0.40, 0.55, 0.91]`.
//!
//! Both rewrite the target text and are trained by the text loss alone: a referring expression's
//! target becomes its box; a trace caption gets each run of tokens that share a box followed by
//! that box (`trace_captioning = false` leaves captions alone, which keeps them short); location
//! captioning, whose box is the input, is left alone. Locations are read back by parsing: from
//! the generated text, or, teacher-forced, from the argmax at the positions where the target
//! writes a box.
use crate::error::{ModelError, Result};
use crate::heads::config::{options, HeadBuild};
use crate::heads::{
    DecodeMode, DecodedTokens, HeadInputs, HeadLossPart, HeadPrediction, OutputHead, Reads,
};
use crate::presets::PixelDims;
use crate::tasks::{Example, TaskKind};
use crate::vocab::VocabMap;
use dfdx::prelude::*;
use pixel_core::geometry::{BoxXyxy, Point};
use pixel_core::params::{ParamVisitor, Params};
use pixel_lm::tokenizer::{T5Tokenizer, EOS_ID, PAD_ID};
use serde::Deserialize;
use std::ops::Range;
use std::sync::Arc;

/// How a box is written as T5 tokens and read back.
pub trait CoordinateCodec: std::fmt::Debug + Send + Sync {
    /// T5 ids that write `b` (coordinates clipped to `[0, 1]`).
    fn write(&self, b: BoxXyxy) -> Result<Vec<usize>>;
    /// Index ranges of `t5_ids` that each write one box.
    fn spans(&self, t5_ids: &[usize]) -> Vec<Range<usize>>;
    /// The box one span writes, when it is readable.
    fn read(&self, t5_ids: &[usize]) -> Option<BoxXyxy>;
    /// Words whose pieces the codec writes (a sub-vocabulary must hold them).
    fn vocabulary(&self) -> Vec<String>;
}

/// Coordinates as `<extra_id_k>` bin tokens: bin `k` of `n` covers `[k/n, (k+1)/n)` and reads
/// back as its centre.
#[derive(Debug, Clone)]
pub struct BinCodec {
    /// T5 id of each bin's token.
    ids: Vec<usize>,
}

impl BinCodec {
    /// `bins` bins (1 to 100: T5 has 100 sentinel pieces).
    pub fn new(tokenizer: &T5Tokenizer, bins: usize) -> Result<Self> {
        if !(1..=100).contains(&bins) {
            return Err(ModelError::Invalid(format!(
                "T5 has 100 sentinel pieces, {bins} bins asked"
            )));
        }
        let ids = (0..bins)
            .map(|k| {
                let word = Self::word(k);
                match tokenizer.encode(&word).map_err(lm)?.as_slice() {
                    [id, EOS_ID] => Ok(*id),
                    other => Err(ModelError::Invalid(format!(
                        "the tokenizer writes `{word}` as {other:?}, not one piece"
                    ))),
                }
            })
            .collect::<Result<_>>()?;
        Ok(BinCodec { ids })
    }

    fn word(k: usize) -> String {
        format!("<extra_id_{k}>")
    }

    pub fn bins(&self) -> usize {
        self.ids.len()
    }

    /// The bin of a coordinate in `[0, 1]` (clipped).
    pub fn quantize(&self, v: f32) -> usize {
        let n = self.bins();
        ((v.clamp(0.0, 1.0) * n as f32) as usize).min(n - 1)
    }

    fn bin_of(&self, t5_id: usize) -> Option<usize> {
        self.ids.iter().position(|&id| id == t5_id)
    }
}

impl CoordinateCodec for BinCodec {
    fn write(&self, b: BoxXyxy) -> Result<Vec<usize>> {
        Ok(b.to_array()
            .iter()
            .map(|&v| self.ids[self.quantize(v)])
            .collect())
    }

    fn spans(&self, t5_ids: &[usize]) -> Vec<Range<usize>> {
        let mut spans = Vec::new();
        let mut start = None;
        for (i, &id) in t5_ids.iter().chain([&PAD_ID]).enumerate() {
            match (self.bin_of(id).is_some(), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    // A run of bin tokens holds one box per four.
                    spans.extend((s..i).step_by(4).filter(|&a| a + 4 <= i).map(|a| a..a + 4));
                    start = None;
                }
                _ => {}
            }
        }
        spans
    }

    fn read(&self, t5_ids: &[usize]) -> Option<BoxXyxy> {
        let n = self.bins() as f32;
        let c: Vec<f32> = t5_ids
            .iter()
            .map(|&id| self.bin_of(id).map(|k| (k as f32 + 0.5) / n))
            .collect::<Option<_>>()?;
        match c.as_slice() {
            [x0, y0, x1, y1] => Some(BoxXyxy::from_corners(
                Point::new(*x0, *y0),
                Point::new(*x1, *y1),
            )),
            _ => None,
        }
    }

    fn vocabulary(&self) -> Vec<String> {
        (0..self.bins()).map(Self::word).collect()
    }
}

/// Coordinates as text with `decimals` digits: `[0.12, 0.40, 0.55, 0.91]`.
pub struct StringCodec {
    decimals: usize,
    tokenizer: Arc<T5Tokenizer>,
}

impl std::fmt::Debug for StringCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StringCodec")
            .field("decimals", &self.decimals)
            .finish()
    }
}

impl StringCodec {
    pub fn new(tokenizer: Arc<T5Tokenizer>, decimals: usize) -> Self {
        StringCodec {
            decimals,
            tokenizer,
        }
    }

    /// `[x0, y0, x1, y1]` as written.
    pub fn text(&self, b: BoxXyxy) -> String {
        let d = self.decimals;
        let [x0, y0, x1, y1] = b.to_array().map(|v| v.clamp(0.0, 1.0));
        format!("[{x0:.d$}, {y0:.d$}, {x1:.d$}, {y1:.d$}]")
    }

    /// The text of one piece, `None` when the tokenizer cannot decode it.
    fn piece(&self, id: usize) -> Option<String> {
        self.tokenizer.decode(&[id]).ok()
    }

    /// `[a, b, c, d]` -> the box, when it holds four numbers in `[0, 1]`.
    pub fn parse(text: &str) -> Option<BoxXyxy> {
        let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?;
        let values: Vec<f32> = inner
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|v| (0.0..=1.0).contains(v))
            })
            .collect::<Option<_>>()?;
        match values.as_slice() {
            [x0, y0, x1, y1] => Some(BoxXyxy::from_corners(
                Point::new(*x0, *y0),
                Point::new(*x1, *y1),
            )),
            _ => None,
        }
    }
}

impl CoordinateCodec for StringCodec {
    fn write(&self, b: BoxXyxy) -> Result<Vec<usize>> {
        let mut ids = self.tokenizer.encode(&self.text(b)).map_err(lm)?;
        ids.pop();
        Ok(ids)
    }

    fn spans(&self, t5_ids: &[usize]) -> Vec<Range<usize>> {
        let mut spans = Vec::new();
        let mut start = None;
        for (i, &id) in t5_ids.iter().enumerate() {
            let piece = self.piece(id).unwrap_or_default();
            if piece.contains('[') {
                start = Some(i);
            }
            if let (true, Some(s)) = (piece.contains(']'), start) {
                spans.push(s..i + 1);
                start = None;
            }
        }
        spans
    }

    fn read(&self, t5_ids: &[usize]) -> Option<BoxXyxy> {
        Self::parse(&self.tokenizer.decode(t5_ids).ok()?)
    }

    fn vocabulary(&self) -> Vec<String> {
        // SentencePiece splits on whitespace, so a box's pieces are those of its four words:
        // `[a,` first, `b,` and `c,` in the middle, `d]` last.
        let steps = 10usize.pow(self.decimals as u32);
        let d = self.decimals;
        (0..=steps)
            .flat_map(|i| {
                let v = i as f32 / steps as f32;
                [
                    format!("[{v:.d$},"),
                    format!("{v:.d$},"),
                    format!("{v:.d$}]"),
                ]
            })
            .collect()
    }
}

/// A head whose locations are written in the text.
#[derive(Debug)]
pub struct TextHead<C: CoordinateCodec> {
    pub name: String,
    pub codec: C,
    /// Write boxes into trace captions (else only referring targets become boxes).
    pub trace_captioning: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BinOptions {
    #[serde(default = "default_bins")]
    bins: usize,
    #[serde(default = "yes")]
    trace_captioning: bool,
}

fn default_bins() -> usize {
    32
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StringOptions {
    #[serde(default = "default_decimals")]
    decimals: usize,
    #[serde(default = "yes")]
    trace_captioning: bool,
}

fn default_decimals() -> usize {
    2
}

/// The registry's constructor for `kind = "bins"`: `bins` (default 32, at most 100),
/// `trace_captioning` (default true).
pub fn build_bins<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe>(
    build: &HeadBuild<'_, D>,
    table: &toml::Table,
) -> Result<Box<dyn OutputHead<P, D>>> {
    let o: BinOptions = options(table, &build.key)?;
    if !(2..=100).contains(&o.bins) {
        return Err(build.error(
            "bins",
            format!(
                "must be 2 to 100 (T5 has 100 sentinel pieces), got {}",
                o.bins
            ),
        ));
    }
    Ok(Box::new(TextHead {
        name: build.name.clone(),
        codec: BinCodec::new(&build.tokenizer, o.bins)?,
        trace_captioning: o.trace_captioning,
    }))
}

/// The registry's constructor for `kind = "string"`: `decimals` (default 2, 1 to 3),
/// `trace_captioning` (default true).
pub fn build_string<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe>(
    build: &HeadBuild<'_, D>,
    table: &toml::Table,
) -> Result<Box<dyn OutputHead<P, D>>> {
    let o: StringOptions = options(table, &build.key)?;
    if !(1..=3).contains(&o.decimals) {
        return Err(build.error("decimals", format!("must be 1, 2 or 3, got {}", o.decimals)));
    }
    Ok(Box::new(TextHead {
        name: build.name.clone(),
        codec: StringCodec::new(build.tokenizer.clone(), o.decimals),
        trace_captioning: o.trace_captioning,
    }))
}

impl<C: CoordinateCodec> TextHead<C> {
    /// The model ids that write `b`.
    fn write_model(&self, b: BoxXyxy, vocab: &VocabMap) -> Result<Vec<usize>> {
        Ok(self
            .codec
            .write(b)?
            .into_iter()
            .map(|id| vocab.to_model(id))
            .collect())
    }

    /// Token locations and the first box, from the sequence the locations refer to (`read`,
    /// T5 ids: position `k + 1` reads token `k`) and the tokens the model said there (`said`).
    fn locate(&self, read: &[usize], said: &[usize], positions: usize) -> HeadPrediction {
        let mut p = HeadPrediction::empty(&self.name, Reads::Text, positions);
        let mut run_start = 0;
        for span in self.codec.spans(read) {
            let box_ = said.get(span.clone()).and_then(|ids| self.codec.read(ids));
            if let Some(b) = box_ {
                p.object.get_or_insert(b);
                for k in run_start..span.start {
                    if let Some(slot) = p.tokens.get_mut(k + 1) {
                        *slot = Some(b.to_array());
                    }
                }
            }
            run_start = span.end;
        }
        p
    }
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe, C: CoordinateCodec> OutputHead<P, D>
    for TextHead<C>
{
    fn name(&self) -> &str {
        &self.name
    }

    fn reads(&self) -> Reads {
        Reads::Text
    }

    fn vocabulary(&self) -> Vec<String> {
        self.codec.vocabulary()
    }

    fn prepare(&self, mut example: Example, vocab: &VocabMap) -> Result<Example> {
        match (example.task, example.target_box) {
            (TaskKind::ReferringLocalization, Some(target)) => {
                let mut ids = self.write_model(target, vocab)?;
                ids.push(EOS_ID);
                example.token_boxes = vec![None; ids.len()];
                example.target_ids = ids;
            }
            (TaskKind::TraceCaptioning, _) if self.trace_captioning => {
                let (mut ids, mut boxes) = (Vec::new(), Vec::new());
                let n = example.target_ids.len();
                for k in 0..n {
                    let (id, b) = (example.target_ids[k], example.token_boxes[k]);
                    if id == EOS_ID {
                        break;
                    }
                    ids.push(id);
                    boxes.push(b);
                    let next = example.token_boxes.get(k + 1).copied().flatten();
                    if let Some(b) = b.filter(|b| Some(*b) != next) {
                        let written = self.write_model(b, vocab)?;
                        boxes.extend(std::iter::repeat_n(None, written.len()));
                        ids.extend(written);
                    }
                }
                ids.push(EOS_ID);
                boxes.push(None);
                example.target_ids = ids;
                example.token_boxes = boxes;
            }
            _ => {}
        }
        Ok(example)
    }

    fn loss(&self, _inputs: &HeadInputs<P, D>) -> Result<Vec<HeadLossPart<D>>> {
        Ok(Vec::new())
    }

    fn decode(
        &self,
        inputs: &HeadInputs<P, D>,
        tokens: &DecodedTokens,
        _earlier: &[Vec<HeadPrediction>],
    ) -> Result<Vec<HeadPrediction>> {
        let positions = inputs.decoder.shape().1;
        let t5 = |ids: &[usize]| -> Vec<usize> {
            ids.iter()
                .map(|&id| inputs.vocab.to_t5(id))
                .take_while(|&id| id != EOS_ID && id != PAD_ID)
                .collect()
        };
        let batch = inputs.batch;
        Ok(tokens
            .said
            .iter()
            .enumerate()
            .map(|(b, said)| {
                let said = t5(said);
                match tokens.mode {
                    DecodeMode::TeacherForced => {
                        let t = batch.target_len;
                        let truth = t5(&batch.target_ids[b * t..(b + 1) * t]);
                        self.locate(&truth, &said, positions)
                    }
                    DecodeMode::Generated => self.locate(&said, &said, positions),
                }
            })
            .collect())
    }
}

/// Text heads have no parameters.
impl<C: CoordinateCodec, D: Device<f32> + pixel_core::ThreadSafe> Params<D> for TextHead<C> {
    fn visit_params(
        &mut self,
        _prefix: &str,
        _v: &mut dyn ParamVisitor<D>,
    ) -> pixel_core::Result<()> {
        Ok(())
    }
}

fn lm(e: pixel_lm::error::LmError) -> ModelError {
    ModelError::Invalid(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Loaded once: proptest cases share it.
    fn tokenizer() -> Arc<T5Tokenizer> {
        static TOKENIZER: std::sync::OnceLock<Arc<T5Tokenizer>> = std::sync::OnceLock::new();
        TOKENIZER
            .get_or_init(|| Arc::new(T5Tokenizer::bundled().unwrap()))
            .clone()
    }

    #[test]
    fn bins_are_t5_sentinels() {
        let codec = BinCodec::new(&tokenizer(), 100).unwrap();
        assert_eq!(codec.ids[0], 32099);
        assert_eq!(codec.ids[99], 32000);
        assert!(BinCodec::new(&tokenizer(), 101).is_err());
    }

    #[test]
    fn string_spans_cover_each_written_box() {
        let tok = tokenizer();
        let codec = StringCodec::new(tok.clone(), 2);
        let mut ids = tok.encode("the red circle").unwrap();
        ids.pop();
        let words = ids.len();
        let a = BoxXyxy::new(0.12, 0.4, 0.55, 0.91).unwrap();
        ids.extend(codec.write(a).unwrap());
        let mid = ids.len();
        ids.extend(codec.write(BoxXyxy::whole_image()).unwrap());
        assert_eq!(codec.spans(&ids), vec![words..mid, mid..ids.len()]);
        assert_eq!(codec.read(&ids[words..mid]), Some(a));
        assert_eq!(StringCodec::parse("[0.1, 0.2]"), None);
        assert_eq!(StringCodec::parse("[0.1, 0.2, 1.5, 0.3]"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn bins_round_trip_through_the_tokenizer_within_half_a_bin(
            x0 in 0.0f32..0.5, y0 in 0.0f32..0.5, w in 0.0f32..0.5, h in 0.0f32..0.5,
            bins in 2usize..=100,
        ) {
            let tok = tokenizer();
            let codec = BinCodec::new(&tok, bins).unwrap();
            let b = BoxXyxy::new(x0, y0, x0 + w, y0 + h).unwrap();
            let ids = codec.write(b).unwrap();
            // Through text and back: the sentinels survive the real tokenizer.
            let text: String = ids
                .iter()
                .map(|&id| BinCodec::word(codec.bin_of(id).unwrap()))
                .collect();
            let mut again = tok.encode(&text).unwrap();
            again.pop();
            prop_assert_eq!(&again, &ids);
            prop_assert_eq!(codec.spans(&again), vec![0..4]);
            let back = codec.read(&again).unwrap();
            let half = 0.5 / bins as f32 + 1e-6;
            for (p, t) in back.to_array().iter().zip(b.to_array()) {
                prop_assert!((p - t).abs() <= half, "{:?} vs {:?}", back, b);
            }
        }

        #[test]
        fn strings_round_trip_through_the_tokenizer(
            x0 in 0.0f32..0.5, y0 in 0.0f32..0.5, w in 0.0f32..0.5, h in 0.0f32..0.5,
            decimals in 1usize..=3,
        ) {
            let codec = StringCodec::new(tokenizer(), decimals);
            let b = BoxXyxy::new(x0, y0, x0 + w, y0 + h).unwrap();
            let ids = codec.write(b).unwrap();
            prop_assert_eq!(codec.spans(&ids), vec![0..ids.len()]);
            let back = codec.read(&ids).unwrap();
            let half = 0.5 / 10f32.powi(decimals as i32) + 1e-5;
            for (p, t) in back.to_array().iter().zip(b.to_array()) {
                prop_assert!((p - t).abs() <= half, "{:?} vs {:?}", back, b);
            }
        }
    }
}
