//! ShapesLN: a seeded synthetic dataset in the style of Localized Narratives.
//!
//! Real Localized Narratives (COCO/Flickr/OpenImages images with a spoken caption and a mouse
//! trace) cannot be trained on a 2-core CPU in minutes. ShapesLN keeps the same annotation
//! structure — caption, mouse trace, timed utterances, hence one box per word — on small images of
//! a few coloured shapes, so a tiny PixelLLM can learn captioning with per-word locations, and
//! referring-expression localization, fast. Everything is a pure function of
//! `(seed, split, index)`: the same triple always yields the same sample, and the two splits
//! draw from different random streams so they never share an image.
//!
//! Captions follow one template, objects left to right, so they are predictable from the image:
//! `in this image we can see a large red circle on the left and a small blue square at the bottom`.
//! Position words come from the object centre's thirds of the image. From 48 px up, every caption
//! can be rebuilt from the pixels alone (`tests/shapes_ln_oracle.rs`); at 32 px the smallest
//! shapes are a few pixels wide and sometimes ambiguous.
//!
//! Word locations follow the Localized Narratives recipe (see `narrative`): the words of a noun
//! phrase ("a large red circle") get the object's box and a point inside it; the other words get
//! a small box on the cursor's glide between objects. Exported with
//! [`Sample::localized_narrative`], PixelLLM's trace-to-box rule gives the same boxes back.
//!
//! Not here, on purpose: occlusion, rotation, textures, pronouns ("it") and any variation in
//! wording — each would add text the image does not determine.

mod narrative;
mod shape;

use image::{GrayImage, Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use shape::ShapeKind;

/// Errors from building a ShapesLN generator.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShapesLnError {
    /// A config field is out of range; the message names the field and the allowed values.
    #[error("invalid ShapesLN config: `{field}` {problem}")]
    InvalidConfig {
        field: &'static str,
        problem: String,
    },
}

/// Colour of an object; the lowercase name is the caption word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
}

impl Colour {
    /// All colours, in vocabulary order.
    pub const ALL: [Colour; 6] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
    ];

    /// The caption word for this colour.
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
        }
    }

    /// Nominal RGB; chosen far apart from each other and from the light background.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [215, 35, 35],
            Colour::Green => [35, 160, 55],
            Colour::Blue => [35, 85, 225],
            Colour::Yellow => [240, 200, 20],
            Colour::Purple => [140, 50, 190],
            Colour::Orange => [250, 130, 20],
        }
    }
}

/// Size class of an object; the two diameter ranges do not overlap, so the word is decidable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeClass {
    Small,
    Large,
}

impl SizeClass {
    /// The caption word for this size.
    pub fn word(self) -> &'static str {
        match self {
            SizeClass::Small => "small",
            SizeClass::Large => "large",
        }
    }
}

/// The order in which a caption describes the objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionOrder {
    /// Left to right by box centre: the caption is a function of the image.
    #[default]
    LeftToRight,
    /// A random order per image, as a real narrator's: a word's location then follows from
    /// what it names, not from how many objects came before it.
    Random,
}

/// Generator settings. Every field has a default, so `[shapes_ln]` with no keys is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapesLnConfig {
    /// Width and height of the square image in pixels (16..=1024). Default 64.
    pub image_size: u32,
    /// Fewest objects drawn per image (>= 1). Default 1.
    pub min_objects: usize,
    /// Most objects drawn per image (<= 6, so they fit without overlap). Default 4.
    pub max_objects: usize,
    /// Shape kinds to draw from. Default: all four.
    pub shapes: Vec<ShapeKind>,
    /// Colours to draw from. Default: all six.
    pub colours: Vec<Colour>,
    /// Diameter range of small objects, as a fraction of the image side. Default [0.16, 0.22].
    pub small_diameter: [f32; 2],
    /// Diameter range of large objects; must start above `small_diameter`. Default [0.32, 0.40].
    pub large_diameter: [f32; 2],
    /// Least empty space between two objects' boxes, fraction of the side. Default 0.04.
    pub min_gap: f32,
    /// Object centres keep this far from the thirds lines (1/3, 2/3) that decide the position
    /// words, so "on the left" vs "in the middle" is never a pixel-level call. Default 0.03.
    pub position_margin: f32,
    /// Object centres differ in x by at least this much, so the left-to-right caption order is
    /// plain to see. Default 0.04.
    pub order_margin: f32,
    /// Each background channel is 255 minus up to this much, for a light random tint. Default 30.
    pub background_tint: u8,
    /// Each object's channels move from the nominal colour by up to ± this much. Default 10.
    pub colour_jitter: u8,
    /// Order of the objects in the caption. Default left to right.
    pub caption_order: CaptionOrder,
    /// Referring expressions name the colour even where kind (and size) single the object out,
    /// as speakers over-specify colour. Default false: the shortest unique description.
    pub always_name_colour: bool,
}

impl Default for ShapesLnConfig {
    fn default() -> Self {
        Self {
            image_size: 64,
            min_objects: 1,
            max_objects: 4,
            shapes: ShapeKind::ALL.to_vec(),
            colours: Colour::ALL.to_vec(),
            small_diameter: [0.16, 0.22],
            large_diameter: [0.32, 0.40],
            min_gap: 0.04,
            position_margin: 0.03,
            order_margin: 0.04,
            background_tint: 30,
            colour_jitter: 10,
            caption_order: CaptionOrder::LeftToRight,
            always_name_colour: false,
        }
    }
}

impl ShapesLnConfig {
    /// Checks every field, so generation itself cannot fail.
    pub fn validate(&self) -> Result<(), ShapesLnError> {
        let bad = |field, problem: String| Err(ShapesLnError::InvalidConfig { field, problem });
        if !(16..=1024).contains(&self.image_size) {
            return bad(
                "image_size",
                format!("is {}; use 16..=1024", self.image_size),
            );
        }
        if self.min_objects == 0 || self.min_objects > self.max_objects {
            return bad(
                "min_objects",
                format!(
                    "is {}; use 1..=max_objects ({})",
                    self.min_objects, self.max_objects
                ),
            );
        }
        if self.max_objects > 6 {
            return bad(
                "max_objects",
                format!("is {}; use at most 6", self.max_objects),
            );
        }
        let mut shapes = self.shapes.clone();
        shapes.sort_by_key(|k| *k as u8);
        shapes.dedup();
        if shapes.len() != self.shapes.len() || shapes.is_empty() {
            return bad("shapes", "must list at least one kind, each once".into());
        }
        let mut colours = self.colours.clone();
        colours.sort_by_key(|c| *c as u8);
        colours.dedup();
        if colours.len() != self.colours.len() || colours.is_empty() {
            return bad("colours", "must list at least one colour, each once".into());
        }
        // Objects in one image differ in (size, colour, kind), so referring expressions are unique.
        let combos = 2 * shapes.len() * colours.len();
        if combos < self.max_objects {
            return bad(
                "max_objects",
                format!(
                    "is {} but shapes x colours x sizes gives only {combos} distinct objects",
                    self.max_objects
                ),
            );
        }
        let [s0, s1] = self.small_diameter;
        let [l0, l1] = self.large_diameter;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 0.3) {
            return bad(
                "small_diameter",
                format!("is [{s0}, {s1}]; use 0 < lo <= hi <= 0.3"),
            );
        }
        if !(l0 > s1 && l0 <= l1 && l1 <= 0.5) {
            return bad(
                "large_diameter",
                format!("is [{l0}, {l1}]; use small_diameter's hi < lo <= hi <= 0.5"),
            );
        }
        if !(0.0..=0.2).contains(&self.min_gap) {
            return bad("min_gap", format!("is {}; use 0..=0.2", self.min_gap));
        }
        if !(0.0..=0.1).contains(&self.position_margin) {
            return bad(
                "position_margin",
                format!("is {}; use 0..=0.1", self.position_margin),
            );
        }
        if !(0.0..=0.1).contains(&self.order_margin) {
            return bad(
                "order_margin",
                format!("is {}; use 0..=0.1", self.order_margin),
            );
        }
        if self.colour_jitter > 40 {
            return bad(
                "colour_jitter",
                format!(
                    "is {}; use at most 40 so colours stay distinct",
                    self.colour_jitter
                ),
            );
        }
        Ok(())
    }
}

/// Which split a sample belongs to; each has its own random stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
}

impl Split {
    /// Prefix of image ids in this split.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "val",
        }
    }

    fn salt(self) -> u64 {
        match self {
            Split::Train => 0x7472_6169_6e5f_6c6e,
            Split::Validation => 0x7661_6c69_645f_6c6e,
        }
    }
}

/// One drawn object.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeObject {
    pub kind: ShapeKind,
    pub colour: Colour,
    pub size: SizeClass,
    /// Normalized `[x0, y0, x1, y1]`, the exact geometric box.
    pub bbox: [f32; 4],
    /// 255 on the object's pixels, 0 elsewhere; same size as the image.
    pub mask: GrayImage,
}

impl ShapeObject {
    /// "small blue square": the dense-caption phrase.
    pub fn phrase(&self) -> String {
        format!(
            "{} {} {}",
            self.size.word(),
            self.colour.word(),
            self.kind.word()
        )
    }
}

/// A caption word with its location, as PixelLLM's per-word regression target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracedWord {
    pub word: String,
    /// Normalized `[x0, y0, x1, y1]`: box of the trace segment of the word's utterance.
    pub bbox: [f32; 4],
    /// Normalized `[x, y]`: inside the object for object words, on the trace otherwise.
    pub point: [f32; 2],
    /// Index into [`Sample::objects`] of the object this word names, if any.
    pub object: Option<usize>,
}

/// A mouse-trace point, normalized, with time in seconds (LN's `traces` entries).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TracePoint {
    pub x: f32,
    pub y: f32,
    pub t: f32,
}

/// A spoken utterance and its time span in seconds (LN's `timed_caption` entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utterance {
    pub utterance: String,
    pub start_time: f32,
    pub end_time: f32,
}

/// Text that picks out exactly one object, for text -> box localization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferringExpression {
    /// Shortest of "the circle", "the red circle", "the small circle", "the small red circle"
    /// that no other object in the image also matches.
    pub text: String,
    pub object: usize,
    pub bbox: [f32; 4],
    /// The object's mask at the image's size where the source gives one apart from `objects`
    /// (files: RefCOCO's segmentation); the generator's masks are in `objects`.
    #[serde(skip)]
    pub mask: Option<GrayImage>,
}

/// A box with a short description, for dense captioning (box -> text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionCaption {
    pub bbox: [f32; 4],
    pub caption: String,
    pub object: usize,
}

/// One image with all its annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Unique within a generator, e.g. `train-000042`.
    pub image_id: String,
    pub image: RgbImage,
    /// Left to right by box centre (the caption's order unless `caption_order` is random).
    pub objects: Vec<ShapeObject>,
    pub caption: String,
    /// One per whitespace word of `caption`, in order.
    pub words: Vec<TracedWord>,
    pub trace: Vec<TracePoint>,
    pub timed_caption: Vec<Utterance>,
    /// One per object, same order.
    pub referring: Vec<ReferringExpression>,
    /// One per object, same order.
    pub regions: Vec<RegionCaption>,
}

/// A sample as a Localized Narratives JSON-lines record (same field names), for tools that
/// read LN; word boxes follow from it by the usual utterance-segment rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LnRecord {
    pub dataset_id: String,
    pub image_id: String,
    pub annotator_id: u32,
    pub caption: String,
    pub timed_caption: Vec<Utterance>,
    pub traces: Vec<Vec<TracePoint>>,
    pub voice_recording: String,
}

impl Sample {
    /// A render panel of the ground truth: each word at its point, each object's box labelled
    /// with its referring expression; for eyeballing the data (`render::samples_png`).
    pub fn ground_truth_panel(&self) -> pixel_render::SamplePanel {
        pixel_render::SamplePanel {
            image: self.image.clone(),
            words: self
                .words
                .iter()
                .map(|w| (w.word.clone(), Some(w.point)))
                .collect(),
            boxes: self
                .referring
                .iter()
                .map(|r| (r.bbox, r.text.clone(), [0, 0, 0]))
                .collect(),
            title: self.image_id.clone(),
        }
    }

    /// The sample's narrative as an LN record.
    pub fn localized_narrative(&self) -> LnRecord {
        LnRecord {
            dataset_id: "shapes_ln".into(),
            image_id: self.image_id.clone(),
            annotator_id: 0,
            caption: self.caption.clone(),
            timed_caption: self.timed_caption.clone(),
            traces: vec![self.trace.clone()],
            voice_recording: String::new(),
        }
    }
}

/// Deterministic generator: `sample(split, index)` is a pure function of the seed.
#[derive(Debug, Clone)]
pub struct ShapesLn {
    config: ShapesLnConfig,
    seed: u64,
}

/// An object placed during generation, before it is drawn.
#[derive(Debug, Clone, Copy)]
struct Placed {
    geometry: shape::Geometry,
    colour: Colour,
    size: SizeClass,
}

/// (kind, colour, size): what must differ between objects of one image.
type Attributes = (ShapeKind, Colour, SizeClass);

impl Placed {
    fn attributes(&self) -> Attributes {
        (self.geometry.kind, self.colour, self.size)
    }
}

/// Attempts at placing one object before giving up on its size (then on the object).
const PLACEMENT_TRIES: usize = 200;
/// Least distance from a box to the image border, fraction of the side.
const BORDER: f32 = 0.02;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn boxes_too_close(a: [f32; 4], b: [f32; 4], gap: f32) -> bool {
    a[0] < b[2] + gap && b[0] < a[2] + gap && a[1] < b[3] + gap && b[1] < a[3] + gap
}

impl ShapesLn {
    /// A generator for `config`, after checking it.
    pub fn new(config: ShapesLnConfig, seed: u64) -> Result<Self, ShapesLnError> {
        config.validate()?;
        Ok(Self { config, seed })
    }

    pub fn config(&self) -> &ShapesLnConfig {
        &self.config
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The seed of one sample's random stream; distinct per (seed, split, index).
    fn sample_seed(&self, split: Split, index: u64) -> u64 {
        splitmix64(splitmix64(splitmix64(self.seed) ^ split.salt()) ^ index)
    }

    /// Attributes for a new object that no placed object shares in full, so the referring
    /// expression "the size colour kind" is always unique. `validate` ensures one exists.
    fn pick_attributes(&self, rng: &mut ChaCha8Rng, placed: &[Placed]) -> Attributes {
        let cfg = &self.config;
        loop {
            let attrs = (
                cfg.shapes[rng.gen_range(0..cfg.shapes.len())],
                cfg.colours[rng.gen_range(0..cfg.colours.len())],
                if rng.gen_bool(0.5) {
                    SizeClass::Small
                } else {
                    SizeClass::Large
                },
            );
            if !placed.iter().any(|p| p.attributes() == attrs) {
                return attrs;
            }
        }
    }

    /// A position (and diameter) for a new object by rejection sampling: clear of the others'
    /// boxes and x centres and of the thirds lines. A large object that does not fit is tried
    /// small; `None` when neither fits.
    fn place(
        &self,
        rng: &mut ChaCha8Rng,
        kind: ShapeKind,
        colour: Colour,
        size: SizeClass,
        placed: &[Placed],
    ) -> Option<Placed> {
        let cfg = &self.config;
        let near_third = |v: f32| {
            (v - 1.0 / 3.0).abs() < cfg.position_margin
                || (v - 2.0 / 3.0).abs() < cfg.position_margin
        };
        let mut sizes = vec![size];
        let small_free = !placed
            .iter()
            .any(|p| p.attributes() == (kind, colour, SizeClass::Small));
        if size == SizeClass::Large && small_free {
            sizes.push(SizeClass::Small);
        }
        for size in sizes {
            let [d0, d1] = match size {
                SizeClass::Small => cfg.small_diameter,
                SizeClass::Large => cfg.large_diameter,
            };
            for _ in 0..PLACEMENT_TRIES {
                let h = rng.gen_range(d0..=d1) / 2.0;
                let (lo, hi) = (h + BORDER, 1.0 - h - BORDER);
                let geometry = shape::Geometry {
                    kind,
                    cx: rng.gen_range(lo..=hi),
                    cy: rng.gen_range(lo..=hi),
                    h,
                };
                let clashes = placed.iter().any(|p| {
                    boxes_too_close(p.geometry.bbox(), geometry.bbox(), cfg.min_gap)
                        || (p.geometry.cx - geometry.cx).abs() < cfg.order_margin
                });
                if !near_third(geometry.cx) && !near_third(geometry.cy) && !clashes {
                    return Some(Placed {
                        geometry,
                        colour,
                        size,
                    });
                }
            }
        }
        None
    }

    /// Samples `indices` of `split`, in order.
    pub fn samples(
        &self,
        split: Split,
        indices: std::ops::Range<u64>,
    ) -> impl Iterator<Item = Sample> + '_ {
        indices.map(move |i| self.sample(split, i))
    }

    /// Generates sample `index` of `split`.
    pub fn sample(&self, split: Split, index: u64) -> Sample {
        let cfg = &self.config;
        let mut rng = ChaCha8Rng::seed_from_u64(self.sample_seed(split, index));
        let background = [0; 3].map(|_: u8| 255 - rng.gen_range(0..=cfg.background_tint));
        let wanted = rng.gen_range(cfg.min_objects..=cfg.max_objects);

        let mut placed: Vec<Placed> = Vec::new();
        for _ in 0..wanted {
            let (kind, colour, size) = self.pick_attributes(&mut rng, &placed);
            if let Some(p) = self.place(&mut rng, kind, colour, size, &placed) {
                placed.push(p);
            }
        }
        // Caption order: left to right, ties top to bottom.
        placed.sort_by(|a, b| {
            let key = |p: &Placed| (p.geometry.cx, p.geometry.cy);
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });

        let n = cfg.image_size;
        let mut image = RgbImage::from_pixel(n, n, Rgb(background));
        let mut objects = Vec::with_capacity(placed.len());
        for Placed {
            geometry: g,
            colour,
            size,
        } in &placed
        {
            let jitter = cfg.colour_jitter as i16;
            let rgb = colour.rgb().map(|c| {
                let d = rng.gen_range(-jitter..=jitter);
                (c as i16 + d).clamp(0, 255) as u8
            });
            let mask = g.rasterize(n, n);
            for (x, y, m) in mask.enumerate_pixels() {
                if m.0[0] > 0 {
                    image.put_pixel(x, y, Rgb(rgb));
                }
            }
            objects.push(ShapeObject {
                kind: g.kind,
                colour: *colour,
                size: *size,
                bbox: g.bbox(),
                mask,
            });
        }

        // `order[k]` is the object the caption describes k-th.
        let mut order: Vec<usize> = (0..placed.len()).collect();
        if cfg.caption_order == CaptionOrder::Random {
            order.shuffle(&mut rng);
        }
        let narrated: Vec<_> = order
            .iter()
            .map(|&i| {
                let p = &placed[i];
                narrative::Narrated {
                    geometry: p.geometry,
                    attributes: [p.size.word(), p.colour.word(), p.geometry.kind.word()],
                }
            })
            .collect();
        let mut story = narrative::narrate(&narrated);
        for w in &mut story.words {
            w.object = w.object.map(|k| order[k]);
        }
        let referring = referring_expressions(&objects, cfg.always_name_colour);
        let regions = objects
            .iter()
            .enumerate()
            .map(|(i, o)| RegionCaption {
                bbox: o.bbox,
                caption: o.phrase(),
                object: i,
            })
            .collect();
        Sample {
            image_id: format!("{}-{index:06}", split.prefix()),
            image,
            objects,
            caption: story.caption,
            words: story.words,
            trace: story.trace,
            timed_caption: story.timed_caption,
            referring,
            regions,
        }
    }
}

/// The shortest description among kind, colour+kind, size+kind, size+colour+kind (only those
/// with the colour when `name_colour`) that matches one object only. Objects of one image differ
/// in (size, colour, kind), so the last always does.
fn referring_expressions(objects: &[ShapeObject], name_colour: bool) -> Vec<ReferringExpression> {
    objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let candidates: [(bool, bool); 4] =
                [(false, false), (false, true), (true, false), (true, true)];
            let (use_size, use_colour) = candidates
                .into_iter()
                .filter(|&(_, use_colour)| use_colour || !name_colour)
                .find(|&(use_size, use_colour)| {
                    objects.iter().enumerate().all(|(j, p)| {
                        j == i
                            || p.kind != o.kind
                            || (use_size && p.size != o.size)
                            || (use_colour && p.colour != o.colour)
                    })
                })
                .unwrap_or((true, true));
            let mut words = vec!["the"];
            if use_size {
                words.push(o.size.word());
            }
            if use_colour {
                words.push(o.colour.word());
            }
            words.push(o.kind.word());
            ReferringExpression {
                text: words.join(" "),
                object: i,
                bbox: o.bbox,
                mask: None,
            }
        })
        .collect()
}

/// Every word the generator can emit (captions and referring expressions), sorted.
pub fn vocabulary() -> Vec<&'static str> {
    let mut words = vec![
        "in", "this", "image", "we", "can", "see", "a", "and", "the", "on", "at", "middle", "left",
        "right", "top", "bottom",
    ];
    words.extend([SizeClass::Small.word(), SizeClass::Large.word()]);
    words.extend(Colour::ALL.map(Colour::word));
    words.extend(ShapeKind::ALL.map(ShapeKind::word));
    words.sort_unstable();
    words.dedup();
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::hash::{Hash, Hasher};

    fn generator() -> ShapesLn {
        ShapesLn::new(ShapesLnConfig::default(), 7).unwrap()
    }

    fn pixel_hash(image: &RgbImage) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        image.as_raw().hash(&mut h);
        h.finish()
    }

    #[test]
    fn same_seed_split_and_index_give_identical_samples() {
        let a = generator();
        let b = generator();
        for i in 0..20 {
            assert_eq!(a.sample(Split::Train, i), b.sample(Split::Train, i));
            assert_eq!(
                a.sample(Split::Validation, i),
                b.sample(Split::Validation, i)
            );
        }
    }

    #[test]
    fn train_and_validation_never_share_an_image() {
        let g = generator();
        let mut seen = HashMap::new();
        for split in [Split::Train, Split::Validation] {
            for i in 0..300 {
                let s = g.sample(split, i);
                if let Some(other) = seen.insert(pixel_hash(&s.image), s.image_id.clone()) {
                    panic!("{} has the same pixels as {other}", s.image_id);
                }
            }
        }
    }

    #[test]
    fn different_seeds_give_different_images() {
        let a = ShapesLn::new(ShapesLnConfig::default(), 1).unwrap();
        let b = ShapesLn::new(ShapesLnConfig::default(), 2).unwrap();
        assert_ne!(
            a.sample(Split::Train, 0).image,
            b.sample(Split::Train, 0).image
        );
    }

    #[test]
    fn samples_iterates_the_same_samples_as_sample() {
        let g = generator();
        let many: Vec<_> = g.samples(Split::Validation, 3..6).collect();
        assert_eq!(many.len(), 3);
        assert_eq!(many[1], g.sample(Split::Validation, 4));
    }

    #[test]
    fn ground_truth_panel_has_every_word_and_object() {
        let s = generator().sample(Split::Train, 1);
        let panel = s.ground_truth_panel();
        assert_eq!(panel.words.len(), s.words.len());
        assert_eq!(panel.boxes.len(), s.objects.len());
        assert!(pixel_render::samples_image(&[panel]).is_ok());
    }

    #[test]
    fn image_ids_name_split_and_index() {
        let g = generator();
        assert_eq!(g.sample(Split::Train, 42).image_id, "train-000042");
        assert_eq!(g.sample(Split::Validation, 3).image_id, "val-000003");
    }

    #[test]
    fn every_emitted_word_is_in_the_vocabulary() {
        let vocab: HashSet<_> = vocabulary().into_iter().collect();
        assert!(vocab.len() < 60);
        let g = generator();
        for i in 0..200 {
            let s = g.sample(Split::Train, i);
            let referring = s.referring.iter().flat_map(|r| r.text.split(' '));
            for w in s.caption.split_whitespace().chain(referring) {
                assert!(vocab.contains(w), "{w:?} missing from vocabulary()");
            }
        }
    }

    #[test]
    fn words_match_the_caption_one_to_one() {
        let g = generator();
        for i in 0..50 {
            let s = g.sample(Split::Validation, i);
            let words: Vec<_> = s.words.iter().map(|w| w.word.as_str()).collect();
            assert_eq!(words, s.caption.split_whitespace().collect::<Vec<_>>());
        }
    }

    #[test]
    fn object_count_respects_config_and_objects_do_not_touch() {
        let g = generator();
        let cfg = g.config().clone();
        for i in 0..300 {
            let s = g.sample(Split::Train, i);
            let n = s.objects.len();
            assert!(n >= cfg.min_objects && n <= cfg.max_objects, "{n}");
            for a in 0..n {
                for b in a + 1..n {
                    let (p, q) = (s.objects[a].bbox, s.objects[b].bbox);
                    assert!(!boxes_too_close(p, q, cfg.min_gap * 0.99), "{p:?} {q:?}");
                }
            }
        }
    }

    #[test]
    fn centres_keep_clear_of_thirds_and_of_each_other_in_x() {
        let g = generator();
        let cfg = g.config().clone();
        for i in 0..300 {
            let s = g.sample(Split::Train, i);
            let centres: Vec<[f32; 2]> = s
                .objects
                .iter()
                .map(|o| [(o.bbox[0] + o.bbox[2]) / 2.0, (o.bbox[1] + o.bbox[3]) / 2.0])
                .collect();
            for (k, c) in centres.iter().enumerate() {
                for v in c {
                    for third in [1.0 / 3.0, 2.0 / 3.0] {
                        assert!((v - third).abs() >= cfg.position_margin * 0.999, "{c:?}");
                    }
                }
                for d in &centres[k + 1..] {
                    assert!(
                        (c[0] - d[0]).abs() >= cfg.order_margin * 0.999,
                        "{c:?} {d:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn objects_are_described_left_to_right() {
        let g = generator();
        for i in 0..100 {
            let s = g.sample(Split::Train, i);
            let centres: Vec<f32> = s.objects.iter().map(|o| o.bbox[0] + o.bbox[2]).collect();
            assert!(centres.windows(2).all(|w| w[0] <= w[1]));
            let mentioned: Vec<usize> = s.words.iter().filter_map(|w| w.object).collect();
            let mut order = mentioned.clone();
            order.dedup();
            assert_eq!(order, (0..s.objects.len()).collect::<Vec<_>>());
        }
    }

    /// Every word that names an object has the object's box and a point on the object.
    fn assert_object_words_lie_on_their_object(g: &ShapesLn) {
        for i in 0..100 {
            let s = g.sample(Split::Train, i);
            let size = s.image.width() as f32;
            for w in &s.words {
                let Some(o) = w.object else { continue };
                let obj = &s.objects[o];
                assert_eq!(w.bbox, obj.bbox);
                let px = ((w.point[0] * size) as u32).min(s.image.width() - 1);
                let py = ((w.point[1] * size) as u32).min(s.image.height() - 1);
                assert_eq!(
                    obj.mask.get_pixel(px, py).0[0],
                    255,
                    "{} in {}",
                    w.word,
                    s.image_id
                );
            }
        }
    }

    #[test]
    fn object_words_lie_on_their_object() {
        assert_object_words_lie_on_their_object(&generator());
    }

    #[test]
    fn random_caption_order_moves_only_the_caption() {
        let random = ShapesLnConfig {
            caption_order: CaptionOrder::Random,
            ..ShapesLnConfig::default()
        };
        let g = ShapesLn::new(random, 7).unwrap();
        assert_object_words_lie_on_their_object(&g);
        let left_to_right = generator();
        let mut reordered = 0;
        for i in 0..100 {
            let s = g.sample(Split::Train, i);
            let l = left_to_right.sample(Split::Train, i);
            assert_eq!(s.image, l.image);
            assert_eq!(s.referring, l.referring);
            let mut named: Vec<usize> = s.words.iter().filter_map(|w| w.object).collect();
            named.dedup();
            let mut sorted = named.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..s.objects.len()).collect::<Vec<_>>());
            reordered += usize::from(named != sorted);
        }
        assert!(reordered > 20, "only {reordered} of 100 captions reordered");
    }

    #[test]
    fn object_pixels_have_the_object_colour() {
        let g = generator();
        for i in 0..50 {
            let s = g.sample(Split::Train, i);
            for o in &s.objects {
                let nominal = o.colour.rgb();
                let jitter = g.config().colour_jitter as i32;
                for (x, y, m) in o.mask.enumerate_pixels() {
                    if m.0[0] > 0 {
                        let p = s.image.get_pixel(x, y).0;
                        for c in 0..3 {
                            assert!((p[c] as i32 - nominal[c] as i32).abs() <= jitter);
                        }
                    }
                }
            }
        }
    }

    /// Expressions are unique within each image, end with the kind and, with `name_colour`,
    /// name the colour.
    fn assert_expressions_pick_one_object(g: &ShapesLn, name_colour: bool) {
        for i in 0..300 {
            let s = g.sample(Split::Train, i);
            let texts: HashSet<_> = s.referring.iter().map(|r| r.text.as_str()).collect();
            assert_eq!(texts.len(), s.objects.len(), "{:?}", s.referring);
            for r in &s.referring {
                let o = &s.objects[r.object];
                assert_eq!(r.bbox, o.bbox);
                assert!(r.text.ends_with(o.kind.word()));
                if name_colour {
                    assert!(r.text.split_whitespace().any(|w| w == o.colour.word()));
                }
            }
        }
    }

    #[test]
    fn referring_expressions_are_unique_within_an_image() {
        assert_expressions_pick_one_object(&generator(), false);
        let config = ShapesLnConfig {
            always_name_colour: true,
            ..ShapesLnConfig::default()
        };
        assert_expressions_pick_one_object(&ShapesLn::new(config, 7).unwrap(), true);
    }

    /// The expressions for a small red circle, a large red circle, a large blue circle and a
    /// large blue square.
    fn four_object_expressions(name_colour: bool) -> Vec<String> {
        let obj = |kind, colour, size| ShapeObject {
            kind,
            colour,
            size,
            bbox: [0.0; 4],
            mask: GrayImage::new(1, 1),
        };
        let objects = vec![
            obj(ShapeKind::Circle, Colour::Red, SizeClass::Small),
            obj(ShapeKind::Circle, Colour::Red, SizeClass::Large),
            obj(ShapeKind::Circle, Colour::Blue, SizeClass::Large),
            obj(ShapeKind::Square, Colour::Blue, SizeClass::Large),
        ];
        referring_expressions(&objects, name_colour)
            .into_iter()
            .map(|r| r.text)
            .collect()
    }

    #[test]
    fn referring_expression_is_shortest_unique_description() {
        assert_eq!(
            four_object_expressions(false),
            [
                "the small circle",
                "the large red circle",
                "the blue circle",
                "the square"
            ]
        );
    }

    #[test]
    fn always_naming_the_colour_adds_size_only_where_needed() {
        assert_eq!(
            four_object_expressions(true),
            [
                "the small red circle",
                "the large red circle",
                "the blue circle",
                "the blue square"
            ]
        );
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let c: ShapesLnConfig = serde_json::from_str(r#"{"image_size": 32}"#).unwrap();
        assert_eq!(c.image_size, 32);
        assert_eq!(c.max_objects, ShapesLnConfig::default().max_objects);
        let c: ShapesLnConfig =
            serde_json::from_str(r#"{"shapes": ["circle", "cross"], "colours": ["red"]}"#).unwrap();
        assert_eq!(c.shapes, [ShapeKind::Circle, ShapeKind::Cross]);
        assert!(serde_json::from_str::<ShapesLnConfig>(r#"{"imagesize": 32}"#).is_err());
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_field_name() {
        let cases: Vec<(ShapesLnConfig, &str)> = vec![
            (
                ShapesLnConfig {
                    image_size: 8,
                    ..Default::default()
                },
                "image_size",
            ),
            (
                ShapesLnConfig {
                    min_objects: 0,
                    ..Default::default()
                },
                "min_objects",
            ),
            (
                ShapesLnConfig {
                    min_objects: 5,
                    max_objects: 4,
                    ..Default::default()
                },
                "min_objects",
            ),
            (
                ShapesLnConfig {
                    max_objects: 7,
                    ..Default::default()
                },
                "max_objects",
            ),
            (
                ShapesLnConfig {
                    shapes: vec![],
                    ..Default::default()
                },
                "shapes",
            ),
            (
                ShapesLnConfig {
                    shapes: vec![ShapeKind::Circle],
                    colours: vec![Colour::Red],
                    ..Default::default()
                },
                "max_objects",
            ),
            (
                ShapesLnConfig {
                    large_diameter: [0.2, 0.4],
                    ..Default::default()
                },
                "large_diameter",
            ),
            (
                ShapesLnConfig {
                    small_diameter: [f32::NAN, 0.2],
                    ..Default::default()
                },
                "small_diameter",
            ),
        ];
        for (config, field) in cases {
            match ShapesLn::new(config, 0) {
                Err(ShapesLnError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                Ok(_) => panic!("accepted a config with bad {field}"),
            }
        }
    }

    #[test]
    fn other_image_sizes_work() {
        for size in [32, 128, 256] {
            let cfg = ShapesLnConfig {
                image_size: size,
                ..Default::default()
            };
            let s = ShapesLn::new(cfg, 3).unwrap().sample(Split::Train, 0);
            assert_eq!(s.image.dimensions(), (size, size));
            assert_eq!(s.objects[0].mask.dimensions(), (size, size));
        }
    }
}
