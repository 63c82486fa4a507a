//! Line plots of training curves and grouped bar charts with error bars, drawn by `plotters`
//! into an `RgbImage` with the embedded font; the ticks are ours (round numbers, powers of ten).

use std::path::Path;

use image::{Rgb, RgbImage};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};

use super::draw::{self, BLACK, GREY, WHITE};
use super::{finite, font, save_png, RenderError};

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
    ticks: Vec<(f64, String)>,
    minor: Vec<f64>,
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
        ticks,
        minor,
    }
}

/// The label of the tick of `axis` nearest `v` (plotters asks for the key points we gave it).
fn label_at(axis: &Axis, v: f64) -> String {
    axis.ticks
        .iter()
        .min_by(|a, b| (a.0 - v).abs().total_cmp(&(b.0 - v).abs()))
        .map(|(_, label)| label.clone())
        .unwrap_or_default()
}

/// A plotters axis over `inner` whose ticks (bold grid) and minor ticks (light grid) are ours.
struct Ticked<R> {
    inner: R,
    ticks: Vec<f64>,
    minor: Vec<f64>,
}

impl<R: Ranged<ValueType = f64>> Ticked<R> {
    fn new(inner: R, axis: &Axis) -> Self {
        Self {
            inner,
            ticks: axis.ticks.iter().map(|t| t.0).collect(),
            minor: axis.minor.clone(),
        }
    }
}

impl<R: Ranged<ValueType = f64>> Ranged for Ticked<R> {
    type ValueType = f64;
    // Labels come from `label_at` through the mesh's label formatters.
    type FormatOption = DefaultFormatting;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// Chart title, tick labels, axis names and legend entries, in pixels (ascent to descent).
const TITLE_PX: f64 = 22.0;
const LABEL_PX: f64 = 15.0;
/// Legend names longer than this many pixels are cut short with "…".
const LEGEND_NAME_MAX: i64 = 280;
/// Blank space around the plot.
const MARGIN: i64 = 12;

/// plotters' bitmap backend over an `RgbImage`, with its text drawn by `font.rs` (the panels'
/// rasterizer: kerning, side bearings and sub-pixel pen positions), so chart text reads the same
/// as panel text. plotters' own ab_glyph text path rounds each pen position and drops the
/// glyphs' side bearings; it only draws the rotated text we never ask for.
struct Canvas<'a> {
    inner: BitMapBackend<'a>,
}

impl<'a> DrawingBackend for Canvas<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        colour: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, colour)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let size = style.size() as f32;
        Ok((
            font::text_width(text, size).max(0) as u32,
            font::line_height(size).max(0) as u32,
        ))
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        if !matches!(style.transform(), FontTransform::None) {
            return self.inner.draw_text(text, style, pos);
        }
        let size = style.size() as f32;
        let anchor = style.anchor();
        let width = font::text_width(text, size);
        let x = pos.0 as i64
            - match anchor.h_pos {
                HPos::Left => 0,
                HPos::Center => width / 2,
                HPos::Right => width,
            };
        // Centred text puts the middle of its capitals and digits on `pos` (a tick, a swatch).
        let y = pos.1 as i64
            - match anchor.v_pos {
                VPos::Top => 0,
                VPos::Center => font::middle(size),
                VPos::Bottom => font::line_height(size),
            };
        let BackendColor { alpha, rgb } = style.color();
        let mut result = Ok(());
        font::rasterize(x, y, text, size, |px, py, coverage| {
            if let (Ok(px), Ok(py), true) = (i32::try_from(px), i32::try_from(py), result.is_ok()) {
                let colour = BackendColor {
                    alpha: alpha * f64::from(coverage),
                    rgb,
                };
                result = self.inner.draw_pixel((px, py), colour);
            }
        });
        result
    }
}

type Area<'a> = DrawingArea<Canvas<'a>, Shift>;

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

fn text_style(size: f64, colour: [u8; 3]) -> TextStyle<'static> {
    (font::FAMILY, size).into_font().color(&rgb(colour))
}

fn draw_error(e: impl std::fmt::Display) -> RenderError {
    RenderError::Draw(e.to_string())
}

/// A white `width` x `height` image with `paint` run on a plotters drawing area over it.
fn paint_image(
    width: i64,
    height: i64,
    paint: impl FnOnce(&Area<'_>) -> Result<(), RenderError>,
) -> Result<RgbImage, RenderError> {
    font::for_plotters()?;
    let mut img = RgbImage::from_pixel(width as u32, height as u32, Rgb(WHITE));
    {
        // An `RgbImage` is a packed RGB buffer of exactly width x height pixels, as
        // `BitMapBackend` expects.
        let root = Canvas {
            inner: BitMapBackend::with_buffer(&mut img, (width as u32, height as u32)),
        }
        .into_drawing_area();
        paint(&root)?;
        root.present().map_err(draw_error)?;
    }
    Ok(img)
}

/// What a legend entry shows beside its name: a stroke (curves) or a filled box (bars).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Swatch {
    Line,
    Box,
}

/// Legend names as shown (cut short) and the width of the legend column they need.
fn legend_layout(names: &[String]) -> (Vec<String>, i64) {
    let shown: Vec<String> = names
        .iter()
        .map(|n| font::truncate(n, LABEL_PX as f32, LEGEND_NAME_MAX))
        .collect();
    let widest = shown
        .iter()
        .map(|n| font::text_width(n, LABEL_PX as f32))
        .max()
        .unwrap_or(0);
    (shown, widest + 36 + MARGIN)
}

/// The legend, one row per entry from the top of `area`.
fn legend(
    area: &Area<'_>,
    top: i32,
    entries: &[(String, [u8; 3])],
    swatch: Swatch,
) -> Result<(), RenderError> {
    let row_height = font::line_height(LABEL_PX as f32) as i32 + 6;
    let style = text_style(LABEL_PX, BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (name, colour)) in entries.iter().enumerate() {
        let y = top + row_height / 2 + i as i32 * row_height;
        match swatch {
            Swatch::Line => area.draw(&PathElement::new(
                vec![(4, y), (28, y)],
                rgb(*colour).stroke_width(3),
            )),
            Swatch::Box => area.draw(&Rectangle::new(
                [(8, y - 6), (22, y + 7)],
                rgb(*colour).filled(),
            )),
        }
        .map_err(draw_error)?;
        area.draw(&Text::new(name.as_str(), (36, y), style.clone()))
            .map_err(draw_error)?;
    }
    Ok(())
}

/// Grid lines at the ticks, and at the minor ticks of log axes.
const GRID: RGBColor = RGBColor(222, 222, 222);
const MINOR_GRID: RGBColor = RGBColor(240, 240, 240);

/// Draws `series` on `area` over `x` (linear) and `y`, whose plotters range is `y_range`.
fn draw_curves<Y>(
    area: &Area<'_>,
    series: &[(&str, &[(f64, f64)])],
    x: &Axis,
    y: &Axis,
    y_range: Y,
    y_label_width: i64,
) -> Result<(), RenderError>
where
    Y: Ranged<ValueType = f64>,
{
    let x_range = Ticked::new(RangedCoordf64::from(x.lo..x.hi), x);
    let y_range = Ticked::new(y_range, y);
    let label_height = font::line_height(LABEL_PX as f32) as u32;
    let mut chart = ChartBuilder::on(area)
        .margin(MARGIN as u32)
        .margin_top(4)
        .x_label_area_size(2 * label_height + 14)
        .y_label_area_size((y_label_width + 14) as u32)
        .build_cartesian_2d(x_range, y_range)
        .map_err(draw_error)?;
    let x_label = |v: &f64| label_at(x, *v);
    let y_label = |v: &f64| label_at(y, *v);
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(MINOR_GRID)
        .axis_style(rgb(BLACK))
        .label_style(text_style(LABEL_PX, BLACK))
        .axis_desc_style(text_style(LABEL_PX, GREY))
        .x_desc("step")
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .draw()
        .map_err(draw_error)?;
    for (i, (_, points)) in series.iter().enumerate() {
        let colour = rgb(draw::palette(i));
        if let [only] = points {
            chart
                .draw_series(std::iter::once(Circle::new(*only, 4, colour.filled())))
                .map_err(draw_error)?;
        } else {
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(draw_error)?;
        }
    }
    Ok(())
}

/// The title across the top of `root`; returns the area below it.
fn titled<'a>(root: &Area<'a>, title: &str, width: i64) -> Result<Area<'a>, RenderError> {
    let shown = font::truncate(title, TITLE_PX as f32, width - 2 * MARGIN);
    root.titled(&shown, text_style(TITLE_PX, BLACK))
        .map_err(draw_error)
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
    let y_axis = match y_scale {
        Scale::Linear => linear_axis(y_min, y_max, 6.0)?,
        Scale::Log => log_axis(y_min, y_max),
    };
    let names: Vec<String> = series.iter().map(|(n, _)| n.to_string()).collect();
    let (shown, legend_w) = legend_layout(&names);
    let entries: Vec<(String, [u8; 3])> = shown
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, draw::palette(i)))
        .collect();
    let y_label_width = y_axis
        .ticks
        .iter()
        .map(|(_, l)| font::text_width(l, LABEL_PX as f32))
        .max()
        .unwrap_or(0);
    let (width, height) = (800 + legend_w, 480);
    paint_image(width, height, |root| {
        let body = titled(root, title_text, width)?;
        let (plot, legend_area) = body.split_horizontally((width - legend_w) as i32);
        match y_scale {
            Scale::Linear => {
                let range = RangedCoordf64::from(y_axis.lo..y_axis.hi);
                draw_curves(&plot, series, &x_axis, &y_axis, range, y_label_width)?;
            }
            Scale::Log => {
                let range = (10f64.powf(y_axis.lo)..10f64.powf(y_axis.hi)).log_scale();
                let range: LogCoord<f64> = range.into();
                draw_curves(&plot, series, &x_axis, &y_axis, range, y_label_width)?;
            }
        }
        legend(&legend_area, 4, &entries, Swatch::Line)
    })
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

const BAR_W: f64 = 40.0;
const BAR_GAP: f64 = 6.0;
const GROUP_GAP: f64 = 30.0;

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
    // Headroom for the numbers printed past the ends of the bars.
    let room = 0.12 * (hi - lo);
    let axis = linear_axis(
        if lo < 0.0 { lo - room } else { lo },
        if hi > 0.0 { hi + room } else { hi },
        6.0,
    )?;
    let colour_of = |name: &str| draw::palette(names.iter().position(|n| *n == name).unwrap_or(0));
    let (shown, legend_w) = legend_layout(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
    let entries: Vec<(String, [u8; 3])> = shown
        .into_iter()
        .zip(&names)
        .map(|(s, n)| (s, colour_of(n)))
        .collect();
    let y_label_width = axis
        .ticks
        .iter()
        .map(|(_, l)| font::text_width(l, LABEL_PX as f32))
        .max()
        .unwrap_or(0);

    // Groups side by side in plot units (pixels when the chart is not widened).
    let mut slots: Vec<(f64, f64)> = Vec::with_capacity(groups.len()); // (start, width)
    let mut x = GROUP_GAP;
    for (_, bars) in groups {
        let w = (bars.len() as f64 * (BAR_W + BAR_GAP) - BAR_GAP).max(BAR_W);
        slots.push((x, w));
        x += w + GROUP_GAP;
    }
    let plot_w = x;
    let group_labels: Vec<(f64, String)> = groups
        .iter()
        .zip(&slots)
        .map(|((label, _), &(start, w))| {
            let room = (w + GROUP_GAP - 6.0) as i64;
            (
                start + w / 2.0,
                font::truncate(label, LABEL_PX as f32, room),
            )
        })
        .collect();
    let title_w = font::text_width(title_text, TITLE_PX as f32);
    let width = (y_label_width + 14 + plot_w.ceil() as i64 + 2 * MARGIN + legend_w)
        .max(480)
        .max(title_w + 2 * MARGIN);
    let height = 420;
    paint_image(width, height, |root| {
        let body = titled(root, title_text, width)?;
        let (plot, legend_area) = body.split_horizontally((width - legend_w) as i32);
        let x_range = Ticked {
            inner: RangedCoordf64::from(0.0..plot_w),
            ticks: group_labels.iter().map(|g| g.0).collect(),
            minor: Vec::new(),
        };
        let y_range = Ticked::new(RangedCoordf64::from(axis.lo..axis.hi), &axis);
        let label_height = font::line_height(LABEL_PX as f32) as u32;
        let mut chart = ChartBuilder::on(&plot)
            .margin(MARGIN as u32)
            .margin_top(4)
            .x_label_area_size(label_height + 12)
            .y_label_area_size((y_label_width + 14) as u32)
            .build_cartesian_2d(x_range, y_range)
            .map_err(draw_error)?;
        let x_label = |v: &f64| {
            group_labels
                .iter()
                .min_by(|a, b| (a.0 - v).abs().total_cmp(&(b.0 - v).abs()))
                .map(|g| g.1.clone())
                .unwrap_or_default()
        };
        let y_label = |v: &f64| label_at(&axis, *v);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .bold_line_style(GRID)
            .axis_style(rgb(BLACK))
            .label_style(text_style(LABEL_PX, BLACK))
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .draw()
            .map_err(draw_error)?;

        let number_style =
            |v: VPos| text_style(LABEL_PX - 1.0, BLACK).pos(Pos::new(HPos::Center, v));
        for ((_, bars), &(start, _)) in groups.iter().zip(&slots) {
            for (j, (name, mean, std)) in bars.iter().enumerate() {
                let bx = start + j as f64 * (BAR_W + BAR_GAP);
                let cx = bx + BAR_W / 2.0;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(bx, 0.0), (bx + BAR_W, *mean)],
                        rgb(colour_of(name)).filled(),
                    )))
                    .map_err(draw_error)?;
                if *std > 0.0 {
                    let (e0, e1) = (mean - std, mean + std);
                    let whisker = rgb(BLACK).stroke_width(2);
                    let half = BAR_W * 0.18;
                    chart
                        .draw_series([
                            PathElement::new(vec![(cx, e0), (cx, e1)], whisker),
                            PathElement::new(vec![(cx - half, e0), (cx + half, e0)], whisker),
                            PathElement::new(vec![(cx - half, e1), (cx + half, e1)], whisker),
                        ])
                        .map_err(draw_error)?;
                }
                // The mean past the end of the bar (and of its error bar).
                let label = short_number(*mean);
                let (anchor, offset, v) = if *mean >= 0.0 {
                    ((cx, mean + std), -3, VPos::Bottom)
                } else {
                    ((cx, mean - std), 3, VPos::Top)
                };
                chart
                    .draw_series(std::iter::once(
                        EmptyElement::at(anchor) + Text::new(label, (0, offset), number_style(v)),
                    ))
                    .map_err(draw_error)?;
            }
        }
        if axis.lo < 0.0 {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0.0, 0.0), (plot_w, 0.0)],
                    rgb(BLACK).stroke_width(1),
                )))
                .map_err(draw_error)?;
        }
        legend(&legend_area, 4, &entries, Swatch::Box)
    })
}

/// Writes grouped bars to `path`: one group per `(group label, bars)`, each bar
/// `(name, mean, std)` drawn with a ±std error bar and its mean printed past its end; a bar name
/// keeps one colour across groups (legend). Errors on no bars, non-finite values or negative std.
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

    /// Mean row of the pixels of `colour` left of column `max_x` (the legend is right of it).
    fn mean_row(img: &RgbImage, colour: [u8; 3], max_x: u32) -> f64 {
        let rows: Vec<u32> = img
            .enumerate_pixels()
            .filter(|(x, _, p)| *x < max_x && p.0 == colour)
            .map(|(_, y, _)| y)
            .collect();
        assert!(!rows.is_empty(), "no pixel of {colour:?}");
        rows.iter().map(|&y| y as f64).sum::<f64>() / rows.len() as f64
    }

    #[test]
    fn log_scale_spaces_decades_evenly() {
        let (a, b, c) = ([(0.0, 2.0)], [(0.0, 20.0)], [(0.0, 200.0)]);
        let series = [("a", &a[..]), ("b", &b[..]), ("c", &c[..])];
        let rows = |scale| {
            let img = loss_curves_image(&series, "t", scale).unwrap();
            [0, 1, 2].map(|i| mean_row(&img, draw::palette(i), 700))
        };
        let [y2, y20, y200] = rows(Scale::Log);
        assert!(y2 > y20 && y20 > y200);
        assert!(((y2 - y20) - (y20 - y200)).abs() < 2.0, "{y2} {y20} {y200}");
        let [y2, y20, y200] = rows(Scale::Linear);
        assert!((y2 - y20) * 5.0 < y20 - y200, "{y2} {y20} {y200}");
    }

    #[test]
    fn the_legend_column_fits_the_names() {
        let points = [(0.0, 1.0), (1.0, 0.5)];
        let short = loss_curves_image(&[("a", &points)], "t", Scale::Linear).unwrap();
        let name = "a much longer series name";
        let long = loss_curves_image(&[(name, &points)], "t", Scale::Linear).unwrap();
        let grown = long.width() as i64 - short.width() as i64;
        let expected =
            font::text_width(name, LABEL_PX as f32) - font::text_width("a", LABEL_PX as f32);
        assert_eq!(grown, expected);
        // The name is drawn there: dark pixels right of the plot, on the first legend row.
        let dark = long
            .enumerate_pixels()
            .filter(|(x, y, p)| *x > 800 && *y < 80 && p.0.iter().all(|&v| v < 100))
            .count();
        assert!(dark > 50, "{dark}");
    }

    #[test]
    fn error_bars_span_the_std() {
        // "b" sets the axis (0 to 2 and a bit), the same with and without the error bar.
        let bars = |std: f64| {
            vec![(
                "g".to_string(),
                vec![("a".to_string(), 1.0, std), ("b".to_string(), 2.0, 0.0)],
            )]
        };
        let black = |img: &RgbImage| count(img, BLACK);
        let without = bar_chart_image(&bars(0.0), "t").unwrap();
        let with = bar_chart_image(&bars(0.5), "t").unwrap();
        // The whisker (±0.5 of a 0..2.5 axis about 300 px tall) adds a 2 px line ~120 px long.
        let extra = black(&with) as i64 - black(&without) as i64;
        assert!(extra > 2 * 100, "{extra}");
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
        // Values at the ends of f64 on a log scale: drawn or refused, never a panic.
        let tiny = [(0.0, 1e-320), (1.0, 1.0)];
        let vast = [(0.0, 1.0), (1.0, 1.7e308)];
        for extreme in [&tiny[..], &vast[..]] {
            let _ = loss_curves_image(&[("a", extreme)], "t", Scale::Log);
        }
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
