//! Line plots of training curves and grouped bar charts with error bars.

use std::path::Path;

use image::{Rgb, RgbImage};

use super::draw::{self, BLACK, GLYPH, GREY, LIGHT_GREY, WHITE};
use super::{finite, save_png, RenderError};

/// How values map to the y axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scale {
    #[default]
    Linear,
    /// Log base 10; every value must be positive. Losses spanning decades read better so.
    Log,
}

/// An axis: its range (in log10 units for log axes) and labelled ticks.
#[derive(Debug, Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<(f64, String)>,
    minor: Vec<f64>,
}

impl Axis {
    /// Fraction along the axis of data value `v`.
    fn frac(&self, v: f64) -> f64 {
        let v = if self.log { v.log10() } else { v };
        (v - self.lo) / (self.hi - self.lo)
    }
}

/// The 1-2-5 step closest above `raw`.
fn nice_step(raw: f64) -> f64 {
    let exp = raw.log10().floor();
    let base = 10f64.powf(exp);
    let f = raw / base;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * base
}

/// A tick label that shows just the digits the step needs.
fn tick_label(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 1e6 || v.abs() < 1e-4 {
        return format!("{v:.1e}");
    }
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

/// A linear axis over `[min, max]` with about `target` ticks at round numbers.
fn linear_axis(min: f64, max: f64, target: f64) -> Result<Axis, RenderError> {
    let (mut min, mut max) = (min, max);
    if max - min <= 1e-12 * max.abs().max(1.0) {
        let pad = if max != 0.0 { max.abs() * 0.1 } else { 1.0 };
        min -= pad;
        max += pad;
    }
    let range = max - min;
    if !range.is_finite() {
        return Err(RenderError::Invalid {
            what: "data range".into(),
            problem: format!("[{min}, {max}] is too wide to plot"),
        });
    }
    let step = nice_step(range / target);
    let (k0, k1) = ((min / step).floor(), (max / step).ceil());
    let ticks = (k0 as i64..=k1 as i64)
        .map(|k| {
            let v = k as f64 * step;
            (v, tick_label(v, step))
        })
        .collect();
    Ok(Axis {
        lo: k0 * step,
        hi: k1 * step,
        log: false,
        ticks,
        minor: Vec::new(),
    })
}

/// A log10 axis over positive `[min, max]`, with ticks at powers of ten.
fn log_axis(min: f64, max: f64) -> Axis {
    let lo = min.log10().floor();
    let mut hi = max.log10().ceil();
    if hi <= lo {
        hi = lo + 1.0;
    }
    let decades = (hi - lo) as i64;
    let stride = (decades + 7) / 8;
    let ticks = (lo as i64..=hi as i64)
        .filter(|k| (k - lo as i64) % stride == 0)
        .map(|k| {
            let label = match k {
                0..=5 => format!("{}", 10i64.pow(k as u32)),
                -4..=-1 => format!("0.{}1", "0".repeat((-k - 1) as usize)),
                _ => format!("1e{k}"),
            };
            (10f64.powi(k as i32), label)
        })
        .collect();
    let minor = if decades <= 4 {
        (lo as i64..hi as i64)
            .flat_map(|k| (2..10).map(move |m| m as f64 * 10f64.powi(k as i32)))
            .collect()
    } else {
        Vec::new()
    };
    Axis {
        lo,
        hi,
        log: true,
        ticks,
        minor,
    }
}

/// The plot rectangle in pixels: left, top, right, bottom (inclusive).
#[derive(Debug, Clone, Copy)]
struct Frame {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl Frame {
    fn x(&self, t: f64) -> f64 {
        self.x0 as f64 + t * (self.x1 - self.x0) as f64
    }
    fn y(&self, t: f64) -> f64 {
        self.y1 as f64 - t * (self.y1 - self.y0) as f64
    }
}

fn title(img: &mut RgbImage, s: &str) {
    let x = (img.width() as i64 - draw::text_width(s, 2)) / 2;
    draw::text(img, x.max(4), 10, s, 2, BLACK);
}

/// Grid, y ticks and labels, and the frame.
fn y_axis(img: &mut RgbImage, f: Frame, axis: &Axis) {
    for &m in &axis.minor {
        let t = axis.frac(m);
        if (0.0..=1.0).contains(&t) {
            let y = f.y(t).round() as i64;
            draw::line(
                img,
                (f.x0 as f64 - 3.0, y as f64),
                (f.x0 as f64, y as f64),
                1,
                BLACK,
            );
        }
    }
    for (v, label) in &axis.ticks {
        let y = f.y(axis.frac(*v)).round() as i64;
        draw::fill_rect(img, f.x0 + 1, y, f.x1, y + 1, LIGHT_GREY);
        draw::fill_rect(img, f.x0 - 6, y, f.x0, y + 1, BLACK);
        let w = draw::text_width(label, 1);
        draw::text(img, f.x0 - 9 - w, y - GLYPH / 2, label, 1, BLACK);
    }
    draw::rect_outline(img, f.x0, f.y0, f.x1, f.y1, 1, BLACK);
}

fn legend(img: &mut RgbImage, x: i64, y: i64, entries: &[(String, [u8; 3])]) {
    for (i, (name, colour)) in entries.iter().enumerate() {
        let row = y + i as i64 * 16;
        draw::fill_rect(img, x, row + 2, x + 20, row + 6, *colour);
        draw::text(img, x + 26, row, name, 1, BLACK);
    }
}

/// Loss (or any metric) curves over training steps; see [`loss_curves_png`].
pub fn loss_curves_image(
    series: &[(&str, &[(f64, f64)])],
    title_text: &str,
    y_scale: Scale,
) -> Result<RgbImage, RenderError> {
    if series.is_empty() {
        return Err(RenderError::Empty("no series to plot".into()));
    }
    let (mut x_min, mut x_max) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y_min, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for (name, points) in series {
        if points.is_empty() {
            return Err(RenderError::Empty(format!("series {name:?} has no points")));
        }
        for (i, &(x, y)) in points.iter().enumerate() {
            finite(x, || format!("step of point {i} of series {name:?}"))?;
            finite(y, || format!("value of point {i} of series {name:?}"))?;
            if y_scale == Scale::Log && y <= 0.0 {
                return Err(RenderError::NonPositive {
                    what: format!("value of point {i} of series {name:?}"),
                    value: y,
                });
            }
            x_min = x_min.min(x);
            x_max = x_max.max(x);
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    let x_axis = linear_axis(x_min, x_max, 8.0)?;
    let y_axis_ = match y_scale {
        Scale::Linear => linear_axis(y_min, y_max, 6.0)?,
        Scale::Log => log_axis(y_min, y_max),
    };

    let entries: Vec<(String, [u8; 3])> = series
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.to_string(), draw::palette(i)))
        .collect();
    let legend_w = entries
        .iter()
        .map(|(n, _)| draw::text_width(n, 1))
        .max()
        .unwrap_or(0)
        + 40;
    let label_w = y_axis_
        .ticks
        .iter()
        .map(|(_, l)| draw::text_width(l, 1))
        .max()
        .unwrap_or(0);
    let (width, height) = (760 + legend_w, 480);
    let mut img = RgbImage::from_pixel(width as u32, height as u32, Rgb(WHITE));
    let frame = Frame {
        x0: label_w + 16,
        y0: 40,
        x1: width - legend_w - 10,
        y1: height - 44,
    };
    title(&mut img, title_text);
    y_axis(&mut img, frame, &y_axis_);
    for (v, label) in &x_axis.ticks {
        let x = frame.x(x_axis.frac(*v)).round() as i64;
        draw::fill_rect(&mut img, x, frame.y0 + 1, x + 1, frame.y1, LIGHT_GREY);
        draw::fill_rect(&mut img, x, frame.y1, x + 1, frame.y1 + 6, BLACK);
        let w = draw::text_width(label, 1);
        draw::text(&mut img, x - w / 2, frame.y1 + 9, label, 1, BLACK);
    }
    draw::rect_outline(&mut img, frame.x0, frame.y0, frame.x1, frame.y1, 1, BLACK);
    let step_w = draw::text_width("step", 1);
    draw::text(
        &mut img,
        (frame.x0 + frame.x1 - step_w) / 2,
        frame.y1 + 24,
        "step",
        1,
        GREY,
    );

    for (i, (_, points)) in series.iter().enumerate() {
        let colour = draw::palette(i);
        let px: Vec<(f64, f64)> = points
            .iter()
            .map(|&(x, y)| (frame.x(x_axis.frac(x)), frame.y(y_axis_.frac(y))))
            .collect();
        if px.len() == 1 {
            draw::disc(
                &mut img,
                px[0].0.round() as i64,
                px[0].1.round() as i64,
                3,
                colour,
            );
        }
        for w in px.windows(2) {
            draw::line(&mut img, w[0], w[1], 2, colour);
        }
    }
    legend(&mut img, frame.x1 + 12, frame.y0 + 4, &entries);
    Ok(img)
}

/// Writes a line plot of `series` (name, `(step, value)` points in drawing order) to `path`:
/// axes with numbered ticks, one colour per series, a legend, `Scale::Log` for decades-wide
/// losses. Errors (never panics) on no series, an empty series, or a non-finite point.
pub fn loss_curves_png(
    path: impl AsRef<Path>,
    series: &[(&str, &[(f64, f64)])],
    title_text: &str,
    y_scale: Scale,
) -> Result<(), RenderError> {
    save_png(&loss_curves_image(series, title_text, y_scale)?, path)
}

/// A number with about three significant digits, for labels on bars.
fn short_number(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs().log10().floor() as i32;
    if !(-3..6).contains(&mag) {
        return format!("{v:.1e}");
    }
    let decimals = (2 - mag).max(0) as usize;
    format!("{v:.decimals$}")
}

/// One group of bars: its label and `(bar name, mean, std)` per bar.
pub type BarGroup = (String, Vec<(String, f64, f64)>);

const BAR_W: i64 = 40;
const BAR_GAP: i64 = 6;
const GROUP_GAP: i64 = 30;

/// Grouped bars with ±std error bars; see [`bar_chart_png`].
pub fn bar_chart_image(groups: &[BarGroup], title_text: &str) -> Result<RgbImage, RenderError> {
    if groups.iter().all(|(_, bars)| bars.is_empty()) {
        return Err(RenderError::Empty("no bars to draw".into()));
    }
    let mut names: Vec<&str> = Vec::new();
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for (group, bars) in groups {
        for (name, mean, std) in bars {
            finite(*mean, || format!("mean of {name:?} in group {group:?}"))?;
            finite(*std, || format!("std of {name:?} in group {group:?}"))?;
            if *std < 0.0 {
                return Err(RenderError::Invalid {
                    what: format!("std of {name:?} in group {group:?}"),
                    problem: format!("{std} is negative"),
                });
            }
            lo = lo.min(mean - std);
            hi = hi.max(mean + std);
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    let axis = linear_axis(lo, hi, 6.0)?;
    let colour_of = |name: &str| draw::palette(names.iter().position(|n| *n == name).unwrap_or(0));
    let entries: Vec<(String, [u8; 3])> = names
        .iter()
        .map(|n| (n.to_string(), colour_of(n)))
        .collect();
    let legend_w = entries
        .iter()
        .map(|(n, _)| draw::text_width(n, 1))
        .max()
        .unwrap_or(0)
        + 40;
    let label_w = axis
        .ticks
        .iter()
        .map(|(_, l)| draw::text_width(l, 1))
        .max()
        .unwrap_or(0);
    let group_widths: Vec<i64> = groups
        .iter()
        .map(|(_, bars)| (bars.len() as i64 * (BAR_W + BAR_GAP) - BAR_GAP).max(BAR_W))
        .collect();
    let plot_w: i64 = group_widths.iter().sum::<i64>() + GROUP_GAP * (groups.len() as i64 + 1);
    let x0 = label_w + 16;
    let width = (x0 + plot_w + legend_w + 20)
        .max(480)
        .max(draw::text_width(title_text, 2) + 20);
    let height = 420;
    let mut img = RgbImage::from_pixel(width as u32, height as u32, Rgb(WHITE));
    let frame = Frame {
        x0,
        y0: 40,
        x1: x0 + plot_w,
        y1: height - 40,
    };
    title(&mut img, title_text);
    y_axis(&mut img, frame, &axis);
    let zero = frame.y(axis.frac(0.0));
    let mut x = frame.x0 + GROUP_GAP;
    for ((group, bars), gw) in groups.iter().zip(&group_widths) {
        for (j, (name, mean, std)) in bars.iter().enumerate() {
            let bx = x + j as i64 * (BAR_W + BAR_GAP);
            let top = frame.y(axis.frac(*mean));
            let (ya, yb) = (top.min(zero).round() as i64, top.max(zero).round() as i64);
            draw::fill_rect(
                &mut img,
                bx,
                ya,
                bx + BAR_W,
                yb.max(ya + 1),
                colour_of(name),
            );
            let cx = (bx + BAR_W / 2) as f64;
            let (e0, e1) = (
                frame.y(axis.frac(mean - std)),
                frame.y(axis.frac(mean + std)),
            );
            if *std > 0.0 {
                draw::line(&mut img, (cx, e0), (cx, e1), 2, BLACK);
                draw::line(&mut img, (cx - 6.0, e0), (cx + 6.0, e0), 2, BLACK);
                draw::line(&mut img, (cx - 6.0, e1), (cx + 6.0, e1), 2, BLACK);
            }
            let label = short_number(*mean);
            let lw = draw::text_width(&label, 1);
            let ly = if *mean >= 0.0 {
                e1.min(top) as i64 - GLYPH - 4
            } else {
                e0.max(top) as i64 + 4
            };
            draw::text(&mut img, bx + (BAR_W - lw) / 2, ly, &label, 1, BLACK);
        }
        let max_chars = ((gw + GROUP_GAP - 4) / GLYPH).max(1) as usize;
        let shown: String = group.chars().take(max_chars).collect();
        let w = draw::text_width(&shown, 1);
        draw::text(&mut img, x + (gw - w) / 2, frame.y1 + 10, &shown, 1, BLACK);
        x += gw + GROUP_GAP;
    }
    draw::fill_rect(
        &mut img,
        frame.x0,
        zero.round() as i64,
        frame.x1,
        zero.round() as i64 + 1,
        BLACK,
    );
    legend(&mut img, frame.x1 + 12, frame.y0 + 4, &entries);
    Ok(img)
}

/// Writes grouped bars to `path`: one group per `(group label, bars)`, each bar
/// `(name, mean, std)` drawn with a ±std error bar and its mean printed on top; a bar name keeps
/// one colour across groups (legend). Errors on no bars, non-finite values or negative std.
pub fn bar_chart_png(
    path: impl AsRef<Path>,
    groups: &[BarGroup],
    title_text: &str,
) -> Result<(), RenderError> {
    save_png(&bar_chart_image(groups, title_text)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(img: &RgbImage, colour: [u8; 3]) -> usize {
        img.pixels().filter(|p| p.0 == colour).count()
    }

    #[test]
    fn nice_steps_are_one_two_five() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.5), 2.0);
        assert_eq!(nice_step(30.0), 50.0);
        assert!((nice_step(0.013) - 0.02).abs() < 1e-12);
    }

    #[test]
    fn linear_axis_covers_the_data_with_round_ticks() {
        let a = linear_axis(0.13, 2.9, 6.0).unwrap();
        assert!(a.lo <= 0.13 && a.hi >= 2.9);
        let labels: Vec<_> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0", "0.5", "1.0", "1.5", "2.0", "2.5", "3.0"]);
        // A flat series still gets a non-empty range.
        let flat = linear_axis(0.5, 0.5, 6.0).unwrap();
        assert!(flat.lo < 0.5 && flat.hi > 0.5);
    }

    #[test]
    fn log_axis_labels_powers_of_ten() {
        let a = log_axis(0.02, 3.0);
        let labels: Vec<_> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.01", "0.1", "1", "10"]);
        assert!(!a.minor.is_empty());
    }

    #[test]
    fn each_series_is_drawn_in_its_own_colour() {
        let a: Vec<(f64, f64)> = (0..100)
            .map(|i| (i as f64, 5.0 / (1.0 + i as f64)))
            .collect();
        let b: Vec<(f64, f64)> = (0..100)
            .map(|i| (i as f64, 4.0 / (1.0 + i as f64) + 0.5))
            .collect();
        let img = loss_curves_image(&[("train", &a), ("val", &b)], "loss", Scale::Linear).unwrap();
        assert!(count(&img, draw::palette(0)) > 200);
        assert!(count(&img, draw::palette(1)) > 200);
        let log = loss_curves_image(&[("train", &a)], "loss", Scale::Log).unwrap();
        assert!(count(&log, draw::palette(0)) > 200);
    }

    #[test]
    fn bad_series_are_errors_not_panics() {
        let nan = [(0.0, 1.0), (1.0, f64::NAN)];
        let inf = [(f64::INFINITY, 1.0)];
        let zero = [(0.0, 0.0)];
        let ok = [(0.0, 1.0)];
        let empty: [(f64, f64); 0] = [];
        assert!(matches!(
            loss_curves_image(&[], "t", Scale::Linear),
            Err(RenderError::Empty(_))
        ));
        assert!(matches!(
            loss_curves_image(&[("a", &ok), ("b", &empty)], "t", Scale::Linear),
            Err(RenderError::Empty(_))
        ));
        assert!(matches!(
            loss_curves_image(&[("a", &nan)], "t", Scale::Linear),
            Err(RenderError::NonFinite { .. })
        ));
        assert!(matches!(
            loss_curves_image(&[("a", &inf)], "t", Scale::Linear),
            Err(RenderError::NonFinite { .. })
        ));
        assert!(matches!(
            loss_curves_image(&[("a", &zero)], "t", Scale::Log),
            Err(RenderError::NonPositive { .. })
        ));
        let huge = [(0.0, -1e308), (1.0, 1e308)];
        assert!(loss_curves_image(&[("a", &huge)], "t", Scale::Linear).is_err());
        // A single point is fine: drawn as a dot.
        assert!(loss_curves_image(&[("a", &ok)], "t", Scale::Linear).is_ok());
    }

    #[test]
    fn bars_and_error_bars_are_drawn() {
        let groups = vec![
            (
                "caption".to_string(),
                vec![
                    ("ours".to_string(), 0.8, 0.05),
                    ("base".to_string(), 0.5, 0.1),
                ],
            ),
            ("ref".to_string(), vec![("ours".to_string(), -0.3, 0.0)]),
        ];
        let img = bar_chart_image(&groups, "results").unwrap();
        assert!(count(&img, draw::palette(0)) > 1000);
        assert!(count(&img, draw::palette(1)) > 1000);
    }

    #[test]
    fn bad_bars_are_errors_not_panics() {
        let one = |m: f64, s: f64| vec![("g".to_string(), vec![("a".to_string(), m, s)])];
        assert!(matches!(
            bar_chart_image(&[], "t"),
            Err(RenderError::Empty(_))
        ));
        assert!(matches!(
            bar_chart_image(&[("g".to_string(), vec![])], "t"),
            Err(RenderError::Empty(_))
        ));
        assert!(matches!(
            bar_chart_image(&one(f64::NAN, 0.1), "t"),
            Err(RenderError::NonFinite { .. })
        ));
        assert!(matches!(
            bar_chart_image(&one(1.0, -0.1), "t"),
            Err(RenderError::Invalid { .. })
        ));
        assert!(bar_chart_image(&one(0.0, 0.0), "t").is_ok());
    }
}
