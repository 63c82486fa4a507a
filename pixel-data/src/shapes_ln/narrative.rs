//! The narration of a sample: caption, mouse trace, timed utterances and per-word boxes.
//!
//! It imitates how a Localized Narratives annotator speaks while moving the mouse: the cursor
//! starts at the image centre, glides to each object (in caption order) while the connective
//! words are spoken, and circles the object (visiting its extreme points) while its noun phrase
//! ("a large red circle") is spoken. Each noun phrase is one utterance and every other word is an
//! utterance of its own, so the rule "an utterance's trace-segment box goes to all its words"
//! gives object words the object's box and connective words a small box on the path.
//!
//! PixelLLM's rule (scenic `build_ln_tfrecord.py`, `trace2coord`, mirrored in
//! `datasets::narratives`) boxes 16 points interpolated at even times over each utterance. Here
//! every utterance has exactly 16 trace points, at those times, with the hover's extreme points
//! among them; so that rule, the plain "trace points within the utterance" rule and our word
//! boxes all agree, and an exported record reproduces the boxes.

use super::shape::Geometry;
use super::{TracePoint, TracedWord, Utterance};

/// Trace points per utterance, ends included: scenic's `num_samples_per_trace`.
const POINTS_PER_UTTERANCE: u32 = 16;
/// Seconds per spoken word; LN narrators speak about 2-3 words a second.
const WORD_SECONDS: f64 = 0.3;
/// Where the cursor starts and, after the last object, heads back to.
const HOME: [f32; 2] = [0.5, 0.5];
/// Amplitude of the deterministic wobble on glides, so a glide segment has a small 2-D box.
const WOBBLE: f32 = 0.02;

/// One object as narration sees it: its geometry and its noun-phrase words.
pub(crate) struct Narrated<'a> {
    pub geometry: Geometry,
    /// e.g. `["large", "red", "circle"]`.
    pub attributes: [&'a str; 3],
}

/// What [`narrate`] produces.
pub(crate) struct Narrative {
    pub caption: String,
    pub words: Vec<TracedWord>,
    pub trace: Vec<TracePoint>,
    pub timed_caption: Vec<Utterance>,
}

/// How the cursor moves during one utterance.
enum Motion {
    /// The fraction `[s0, s1]` of a wobbling glide from `from` to `to`.
    Glide {
        from: [f32; 2],
        to: [f32; 2],
        s0: f32,
        s1: f32,
    },
    /// Circle object `object`: anchor -> extreme -> anchor for each extreme point.
    Hover { object: usize },
}

/// One utterance to speak and how the cursor moves meanwhile.
struct Planned {
    words: Vec<String>,
    motion: Motion,
}

/// The position phrase for an object centred at `(cx, cy)`, by thirds of the image.
pub(crate) fn position_words(cx: f32, cy: f32) -> Vec<&'static str> {
    let horizontal = if cx < 1.0 / 3.0 {
        Some("left")
    } else if cx > 2.0 / 3.0 {
        Some("right")
    } else {
        None
    };
    let vertical = if cy < 1.0 / 3.0 {
        Some("top")
    } else if cy > 2.0 / 3.0 {
        Some("bottom")
    } else {
        None
    };
    match (vertical, horizontal) {
        (None, None) => vec!["in", "the", "middle"],
        (None, Some(h)) => vec!["on", "the", h],
        (Some(v), None) => vec!["at", "the", v],
        (Some(v), Some(h)) => vec!["at", "the", v, h],
    }
}

/// Splits a glide from `from` to `to` into one single-word utterance per word.
fn glide(plan: &mut Vec<Planned>, words: &[&'static str], from: [f32; 2], to: [f32; 2]) {
    let n = words.len() as f32;
    for (i, &w) in words.iter().enumerate() {
        plan.push(Planned {
            words: vec![w.to_string()],
            motion: Motion::Glide {
                from,
                to,
                s0: i as f32 / n,
                s1: (i + 1) as f32 / n,
            },
        });
    }
}

fn glide_point(from: [f32; 2], to: [f32; 2], s: f32) -> [f32; 2] {
    let tau = std::f32::consts::PI;
    [
        from[0] + (to[0] - from[0]) * s + WOBBLE * (2.0 * tau * s).sin(),
        from[1] + (to[1] - from[1]) * s + WOBBLE * (3.0 * tau * s).sin(),
    ]
}

/// Cursor position at `tick` of `ticks` within a hover; polyline vertices fall on whole ticks so
/// the extreme points are visited exactly.
fn hover_point(g: &Geometry, tick: u32, ticks: u32) -> [f32; 2] {
    let anchor = g.anchor();
    let mut vertices = vec![anchor];
    for e in g.extremes() {
        vertices.push(e);
        vertices.push(anchor);
    }
    let legs = (vertices.len() - 1) as u32;
    let vertex_tick = |j: u32| (j * ticks + legs / 2) / legs;
    for j in 0..legs {
        let (t0, t1) = (vertex_tick(j), vertex_tick(j + 1));
        if tick <= t1 {
            // Exact vertices, not `a + (b - a) * 1`, so extreme points land on the box bit for bit.
            if tick == t1 {
                return vertices[j as usize + 1];
            }
            let s = (tick.saturating_sub(t0)) as f32 / (t1 - t0) as f32;
            let (a, b) = (vertices[j as usize], vertices[j as usize + 1]);
            return [a[0] + (b[0] - a[0]) * s, a[1] + (b[1] - a[1]) * s];
        }
    }
    anchor
}

fn clip01(p: [f32; 2]) -> [f32; 2] {
    [p[0].clamp(0.0, 1.0), p[1].clamp(0.0, 1.0)]
}

/// Box of `points`, clipped to [0, 1].
fn points_box(points: &[TracePoint]) -> Option<[f32; 4]> {
    let mut b: Option<[f32; 4]> = None;
    for p in points {
        let (x, y) = (p.x.clamp(0.0, 1.0), p.y.clamp(0.0, 1.0));
        b = Some(match b {
            None => [x, y, x, y],
            Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
        });
    }
    b
}

/// Narrates `objects`, which must already be in caption order.
pub(crate) fn narrate(objects: &[Narrated<'_>]) -> Narrative {
    let mut plan: Vec<Planned> = Vec::new();
    let intro = ["in", "this", "image", "we", "can", "see"];
    let first = objects.first().map_or(HOME, |o| o.geometry.anchor());
    glide(&mut plan, &intro, HOME, first);
    for (i, o) in objects.iter().enumerate() {
        let mut phrase = vec!["a".to_string()];
        phrase.extend(o.attributes.iter().map(|w| w.to_string()));
        plan.push(Planned {
            words: phrase,
            motion: Motion::Hover { object: i },
        });
        let g = &o.geometry;
        let mut connective = position_words(g.cx, g.cy);
        let next = match objects.get(i + 1) {
            Some(n) => {
                connective.push("and");
                n.geometry.anchor()
            }
            None => HOME,
        };
        glide(&mut plan, &connective, g.anchor(), next);
    }

    let mut trace = vec![TracePoint {
        x: HOME[0],
        y: HOME[1],
        t: 0.0,
    }];
    let mut timed_caption = Vec::with_capacity(plan.len());
    let mut words = Vec::new();
    let steps = POINTS_PER_UTTERANCE - 1;
    let mut start = 0.0f64;
    for p in plan {
        let duration = WORD_SECONDS * p.words.len() as f64;
        let first_point = trace.len() - 1; // the previous utterance's last point is our first
        for k in 1..=steps {
            let pos = match p.motion {
                Motion::Glide { from, to, s0, s1 } => {
                    glide_point(from, to, s0 + (s1 - s0) * k as f32 / steps as f32)
                }
                Motion::Hover { object } => hover_point(&objects[object].geometry, k, steps),
            };
            let pos = clip01(pos);
            trace.push(TracePoint {
                x: pos[0],
                y: pos[1],
                t: (start + duration * k as f64 / steps as f64) as f32,
            });
        }
        let end = start + duration;
        // The segment's points are exactly those pushed above, so box them directly.
        let segment = &trace[first_point..];
        let bbox = points_box(segment).unwrap_or([0.0; 4]);
        let (object, point) = match p.motion {
            Motion::Hover { object } => (Some(object), objects[object].geometry.anchor()),
            Motion::Glide { .. } => {
                let mid = &segment[segment.len() / 2];
                (None, [mid.x, mid.y])
            }
        };
        timed_caption.push(Utterance {
            utterance: p.words.join(" "),
            start_time: start as f32,
            end_time: end as f32,
        });
        for w in p.words {
            words.push(TracedWord {
                word: w,
                bbox,
                point,
                object,
            });
        }
        start = end;
    }
    let caption = words
        .iter()
        .map(|w| w.word.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    Narrative {
        caption,
        words,
        trace,
        timed_caption,
    }
}

#[cfg(test)]
mod tests {
    use super::super::shape::ShapeKind;
    use super::*;

    fn two_objects() -> Vec<Narrated<'static>> {
        vec![
            Narrated {
                geometry: Geometry {
                    kind: ShapeKind::Triangle,
                    cx: 0.2,
                    cy: 0.8,
                    h: 0.1,
                },
                attributes: ["small", "red", "triangle"],
            },
            Narrated {
                geometry: Geometry {
                    kind: ShapeKind::Circle,
                    cx: 0.7,
                    cy: 0.3,
                    h: 0.18,
                },
                attributes: ["large", "blue", "circle"],
            },
        ]
    }

    #[test]
    fn caption_reads_objects_in_order_with_positions() {
        let n = narrate(&two_objects());
        assert_eq!(
            n.caption,
            "in this image we can see a small red triangle at the bottom left and \
             a large blue circle at the top right"
        );
    }

    #[test]
    fn object_words_get_the_object_box_and_a_point_inside() {
        let objects = two_objects();
        let n = narrate(&objects);
        for w in &n.words {
            if let Some(i) = w.object {
                let g = &objects[i].geometry;
                assert_eq!(w.bbox, g.bbox(), "{}", w.word);
                assert!(g.contains(w.point[0], w.point[1]), "{}", w.word);
            }
        }
        let on_objects = n.words.iter().filter(|w| w.object.is_some()).count();
        assert_eq!(on_objects, 8);
    }

    #[test]
    fn connective_words_get_small_boxes_around_their_point() {
        let n = narrate(&two_objects());
        for w in n.words.iter().filter(|w| w.object.is_none()) {
            let [x0, y0, x1, y1] = w.bbox;
            assert!(x1 - x0 < 0.25 && y1 - y0 < 0.25, "{} {:?}", w.word, w.bbox);
            assert!(x0 <= w.point[0] && w.point[0] <= x1, "{}", w.word);
            assert!(y0 <= w.point[1] && w.point[1] <= y1, "{}", w.word);
        }
    }

    #[test]
    fn utterances_tile_time_and_the_trace_covers_them() {
        let n = narrate(&two_objects());
        assert_eq!(n.timed_caption[0].start_time, 0.0);
        for pair in n.timed_caption.windows(2) {
            assert_eq!(pair[0].end_time, pair[1].start_time);
        }
        let last = n.timed_caption.last().unwrap().end_time;
        assert_eq!(n.trace.last().unwrap().t, last);
        assert!(n.trace.windows(2).all(|p| p[0].t < p[1].t));
    }

    #[test]
    fn position_words_follow_thirds() {
        assert_eq!(position_words(0.5, 0.5), ["in", "the", "middle"]);
        assert_eq!(position_words(0.1, 0.5), ["on", "the", "left"]);
        assert_eq!(position_words(0.9, 0.5), ["on", "the", "right"]);
        assert_eq!(position_words(0.5, 0.1), ["at", "the", "top"]);
        assert_eq!(position_words(0.9, 0.9), ["at", "the", "bottom", "right"]);
    }
}
