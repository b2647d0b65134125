//! Charts people read: line, scatter and grouped-bar charts and heatmaps, each with a title,
//! labelled axes, ticks and a legend, drawn with plotters as PNG or SVG (by the file's
//! extension). Text is set in DejaVu Sans, carried in the binary (`assets/`), so no system font
//! is needed. A [`Chart`] is plain data: the library's own plots build one, and `uniattn plot`
//! draws one read from JSON, so the scripts' figures come from the same code.
use crate::error::{Error, Result};
use plotters::chart::MeshStyle;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::{DynElement, IntoDynElement};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};
use std::path::Path;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
/// matplotlib's tab10, the colours most readers know.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The marker of series `i` as (colour, shape: 0 filled circle, 1 triangle, 2 cross): colours
/// cycle through [`PALETTE`], then the shape changes, so that past ten series no two share a
/// look (an experiment's summary plots eleven: every method and its ablations).
fn marker(i: usize) -> (RGBColor, usize) {
    (PALETTE[i % PALETTE.len()], (i / PALETTE.len()) % 3)
}

/// Marker `shape` of [`marker`] at `at`, `size` across (a triangle two more, to look as large),
/// as both the chart's points and the legend's swatches draw it.
fn point_marker<DB: DrawingBackend, C: Clone + 'static>(
    shape: usize,
    at: C,
    size: i32,
    color: RGBColor,
) -> DynElement<'static, DB, C> {
    match shape {
        0 => Circle::new(at, size, color.filled()).into_dyn(),
        1 => TriangleMarker::new(at, size + 2, color.filled()).into_dyn(),
        _ => Cross::new(at, size, color.stroke_width(2)).into_dyn(),
    }
}

/// A chart as data (`kind` names the variant in JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Chart {
    /// Series of points joined by lines.
    Lines(XyChart),
    /// Series of points, unjoined (with their ranges as whiskers where given).
    Scatter(XyChart),
    /// Grouped bars: one group per category, one bar per series.
    Bars(BarChart),
    /// A square matrix of values (layer x layer), with a colour bar.
    Heatmap(Heatmap),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XyChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// A log2 x axis (batch sizes, context lengths), ticks at the points' x values.
    #[serde(default)]
    pub log2_x: bool,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub name: String,
    /// `[x, y]` pairs.
    pub points: Vec<[f64; 2]>,
    /// Per point, the `[low, high]` of y (seeds' spread, min-max of repeats), drawn as whiskers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_ranges: Option<Vec<[f64; 2]>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub series: Vec<BarSeries>,
    /// Scale each category to its tallest bar (for categories that differ by orders of
    /// magnitude); the values stay printed on the bars.
    #[serde(default)]
    pub per_category_scale: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BarSeries {
    pub name: String,
    /// One value per category; null for none.
    pub values: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heatmap {
    pub title: String,
    /// What columns count (e.g. "layer").
    pub x_label: String,
    /// What rows count.
    pub y_label: String,
    /// What the colour means.
    pub value_label: String,
    /// `values[i][j]`: row i, column j; NaN (null in JSON) is left blank.
    pub values: Vec<Vec<Option<f64>>>,
    /// The number of row and column 0.
    #[serde(default)]
    pub first: usize,
    /// The colour scale's ends.
    pub range: [f64; 2],
}

impl Heatmap {
    /// A heatmap of `values` (NaN: blank), rows and columns numbered from `first`, its colour
    /// scale over `range`.
    pub fn of(
        [title, x_label, y_label, value_label]: [&str; 4],
        values: &[Vec<f64>],
        first: usize,
        range: [f64; 2],
    ) -> Chart {
        let values = values.iter().map(|r| r.iter().map(|v| (!v.is_nan()).then_some(*v)).collect()).collect();
        Chart::Heatmap(Heatmap {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            value_label: value_label.into(),
            values,
            first,
            range,
        })
    }
}

impl Chart {
    /// A chart from a JSON file (`-`: standard input), with the file, line and field named
    /// where it does not parse.
    pub fn read(path: &Path) -> Result<Chart> {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).map_err(|e| Error::io(path, e))?
        } else {
            std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?
        };
        serde_json::from_str(&text).map_err(|e| {
            Error::format(
                path,
                format!("not a chart ({e}); expected {{\"kind\": \"lines\" | \"scatter\" | \"bars\" | \"heatmap\", ...}}"),
            )
        })
    }

    /// Draws the chart to `path`: SVG for `.svg`, PNG otherwise.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.check().map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        let (width, height) = match self {
            Chart::Heatmap(_) => (760, 680),
            Chart::Bars(b) => {
                let (category, legend) = bar_layout(b);
                (110 + category * b.categories.len() as u32 + legend, 500)
            }
            Chart::Lines(c) | Chart::Scatter(c) => {
                (760 + legend_width(c.series.iter().map(|s| s.name.as_str())), 500)
            }
        };
        // Wide enough for the title on one line.
        let size = (width.max(text_width(self.title(), 20) + 40), height);
        register_font();
        let failed = |e: String| Error::format(path, format!("drawing the chart: {e}"));
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
            let mut svg = String::new();
            {
                let area = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                self.draw(&area).map_err(failed)?;
            }
            crate::fs::write_atomic(path, svg.as_bytes())
        } else {
            let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
            {
                let area = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
                self.draw(&area).map_err(failed)?;
            }
            write_png(path, size, &rgb)
        }
    }

    /// What makes a chart undrawable, said before drawing.
    fn check(&self) -> std::result::Result<(), String> {
        match self {
            Chart::Lines(c) | Chart::Scatter(c) => {
                for s in &c.series {
                    if let Some(r) = &s.y_ranges {
                        if r.len() != s.points.len() {
                            return Err(format!(
                                "series {:?}: {} y_ranges for {} points",
                                s.name,
                                r.len(),
                                s.points.len()
                            ));
                        }
                    }
                    if c.log2_x && s.points.iter().any(|p| p[0] <= 0.0) {
                        return Err(format!("series {:?}: log2_x needs x > 0", s.name));
                    }
                }
                Ok(())
            }
            Chart::Bars(b) => match b.series.iter().find(|s| s.values.len() != b.categories.len()) {
                Some(s) => Err(format!(
                    "series {:?}: {} values for {} categories",
                    s.name,
                    s.values.len(),
                    b.categories.len()
                )),
                None => Ok(()),
            },
            Chart::Heatmap(h) => {
                let n = h.values.len();
                if let Some((i, _)) = h.values.iter().enumerate().find(|(_, r)| r.len() != n) {
                    return Err(format!(
                        "heatmap row {i} has {} values; the matrix is {n} x {n}",
                        h.values[i].len()
                    ));
                }
                Ok(())
            }
        }
    }

    fn title(&self) -> &str {
        match self {
            Chart::Lines(c) | Chart::Scatter(c) => &c.title,
            Chart::Bars(b) => &b.title,
            Chart::Heatmap(h) => &h.title,
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        root.fill(&WHITE).map_err(msg)?;
        // The title over the whole width; the chart below it.
        let below = root.titled(self.title(), (FAMILY, 20)).map_err(msg)?;
        match self {
            Chart::Lines(c) => draw_xy(&below, c, true),
            Chart::Scatter(c) => draw_xy(&below, c, false),
            Chart::Bars(b) => draw_bars(&below, b),
            Chart::Heatmap(h) => draw_heatmap(&below, h),
        }?;
        root.present().map_err(msg)
    }
}

type Drawn = std::result::Result<(), String>;

/// About how many pixels `text` takes at `size` points of DejaVu Sans (0.6 em a character).
fn text_width(text: &str, size: u32) -> u32 {
    (text.chars().count() as f64 * size as f64 * 0.6).ceil() as u32
}

/// A bar chart's width per category (its bars or its label, whichever is wider) and its
/// legend's width.
fn bar_layout(b: &BarChart) -> (u32, u32) {
    let label = b.categories.iter().map(|c| text_width(c, 13)).max().unwrap_or(0);
    let category = (44 * b.series.len() as u32 + 30).max(label + 24);
    (category, legend_width(b.series.iter().map(|s| s.name.as_str())))
}

fn msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn register_font() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let parsed = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
        assert!(parsed.is_ok(), "the carried font parses");
    });
}

fn write_png(path: &Path, (w, h): (u32, u32), rgb: &[u8]) -> Result<()> {
    let mut buf = Vec::new();
    let mut enc = png::Encoder::new(&mut buf, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| Error::format(path, e.to_string()))?;
    writer.write_image_data(rgb).map_err(|e| Error::format(path, e.to_string()))?;
    writer.finish().map_err(|e| Error::format(path, e.to_string()))?;
    crate::fs::write_atomic(path, &buf)
}

/// A value as a bar's or an axis' label: no more digits than it needs.
fn short(v: f64) -> String {
    // A tick computed as 0 plus rounding error reads as 0.
    let v = if v.abs() < 1e-12 { 0.0 } else { v };
    let a = v.abs();
    if a >= 100.0 || (v.fract() == 0.0 && a < 1e15) {
        return format!("{v:.0}");
    }
    if a != 0.0 && a < 0.01 {
        return format!("{v:.1e}");
    }
    let fixed = if a >= 10.0 { format!("{v:.1}") } else { format!("{v:.3}") };
    fixed.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `lo..hi` widened by `pad` of its span on each side (a unit span if empty).
fn padded(lo: f64, hi: f64, pad: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - pad * span, hi + pad * span)
}

/// The axes' common look: fonts, a faint minor grid, y values as [`short`] prints them.
fn house_style<'m, 'a, 'b, DB: DrawingBackend>(
    mesh: &'m mut MeshStyle<'a, 'b, RangedCoordf64, RangedCoordf64, DB>,
) -> &'m mut MeshStyle<'a, 'b, RangedCoordf64, RangedCoordf64, DB> {
    mesh.y_label_formatter(&|v| short(*v))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(RGBColor(244, 244, 244))
}

/// A legend's width for these series names.
fn legend_width<'a>(names: impl Iterator<Item = &'a str>) -> u32 {
    names.map(|n| text_width(n, 13)).max().unwrap_or(0) + 50
}

/// One legend entry per (name, colour), top down, in `area` (beside the plot, so it never
/// covers data): a swatch (a line with a point, or a box for bars) and the name.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(&str, RGBColor)],
    bars: bool,
) -> Drawn {
    for (j, (name, color)) in entries.iter().enumerate() {
        let (x, y) = (10, 20 + 22 * j as i32);
        if bars {
            area.draw(&Rectangle::new([(x, y), (x + 16, y + 12)], color.filled())).map_err(msg)?;
        } else {
            area.draw(&PathElement::new(vec![(x, y + 6), (x + 18, y + 6)], color.stroke_width(2)))
                .map_err(msg)?;
            area.draw(&point_marker(marker(j).1, (x + 9, y + 6), 4, *color)).map_err(msg)?;
        }
        area.draw(&Text::new(name.to_string(), (x + 24, y), (FAMILY, 13))).map_err(msg)?;
    }
    Ok(())
}

fn draw_xy<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &XyChart, joined: bool) -> Drawn {
    let (width, _) = root.dim_in_pixel();
    let (root, legend) =
        root.split_horizontally(width.saturating_sub(legend_width(c.series.iter().map(|s| s.name.as_str()))));
    let root = &root;
    let fx = |x: f64| if c.log2_x { x.log2() } else { x };
    let pts = || c.series.iter().flat_map(|s| s.points.iter());
    let highs = c.series.iter().flat_map(|s| s.y_ranges.iter().flatten()).flat_map(|r| [r[0], r[1]]);
    let ys: Vec<f64> = pts().map(|p| p[1]).chain(highs).filter(|y| y.is_finite()).collect();
    let xs: Vec<f64> = pts().map(|p| fx(p[0])).filter(|x| x.is_finite()).collect();
    let min_max = |v: &[f64]| v.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let (x0, x1) = padded(min_max(&xs).0, min_max(&xs).1, 0.03);
    let (y0, y1) = padded(min_max(&ys).0, min_max(&ys).1, 0.06);
    let mut chart = ChartBuilder::on(root)
        .margin(14)
        .x_label_area_size(50)
        .y_label_area_size(76)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(msg)?;
    let mut ticks: Vec<f64> = pts().map(|p| p[0]).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let x_fmt = |v: &f64| if c.log2_x { short(v.exp2()) } else { short(*v) };
    house_style(&mut chart.configure_mesh())
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .x_labels(if c.log2_x { ticks.len().clamp(2, 12) } else { 10 })
        .x_label_formatter(&x_fmt)
        .draw()
        .map_err(msg)?;
    for (i, s) in c.series.iter().enumerate() {
        let (color, shape) = marker(i);
        let points: Vec<(f64, f64)> = s.points.iter().map(|p| (fx(p[0]), p[1])).collect();
        if joined {
            chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2))).map_err(msg)?;
        }
        // Every point of a scatter; a line's points while few enough to tell apart.
        if !joined || points.len() <= 40 {
            let size = if joined { 3 } else { 5 };
            chart.draw_series(points.iter().map(|&p| point_marker(shape, p, size, color))).map_err(msg)?;
        }
        if let Some(ranges) = &s.y_ranges {
            let bars = points.iter().zip(ranges).map(|(&(x, y), r)| {
                ErrorBar::new_vertical(x, r[0].min(y), y, r[1].max(y), color.stroke_width(2), 10)
            });
            chart.draw_series(bars).map_err(msg)?;
        }
    }
    let entries: Vec<(&str, RGBColor)> =
        c.series.iter().enumerate().map(|(i, s)| (s.name.as_str(), marker(i).0)).collect();
    draw_legend(&legend, &entries, false)
}

fn draw_bars<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, b: &BarChart) -> Drawn {
    let (n, k) = (b.categories.len(), b.series.len().max(1));
    let tallest: Vec<f64> =
        (0..n).map(|c| b.series.iter().filter_map(|s| s.values[c]).fold(0.0f64, |a, v| a.max(v))).collect();
    let height = |c: usize, v: f64| if b.per_category_scale && tallest[c] > 0.0 { v / tallest[c] } else { v };
    let top = if b.per_category_scale { 1.0 } else { tallest.iter().fold(0.0f64, |a, &v| a.max(v)) };
    // Bars below zero (changes in percent, say) hang from the zero line: the axis reaches
    // down to the lowest one.
    let lowest = b
        .series
        .iter()
        .flat_map(|s| s.values.iter().enumerate().filter_map(|(c, v)| v.map(|v| height(c, v))))
        .fold(0.0f64, f64::min);
    let y_low = lowest * 1.15;
    let y_high = if top > 0.0 {
        top * 1.15
    } else if lowest < 0.0 {
        -0.05 * lowest
    } else {
        1.0
    };
    let (width, _) = root.dim_in_pixel();
    let (plot, legend) = root.split_horizontally(width.saturating_sub(bar_layout(b).1));
    let y_label = if b.per_category_scale {
        format!("{} (each group scaled to its tallest bar)", b.y_label)
    } else {
        b.y_label.clone()
    };
    let mut chart = ChartBuilder::on(&plot)
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(76)
        .build_cartesian_2d(0f64..n.max(1) as f64, y_low..y_high)
        .map_err(msg)?;
    house_style(&mut chart.configure_mesh())
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_label)
        .draw()
        .map_err(msg)?;
    let width = 0.8 / k as f64;
    let value_style = |v: f64| {
        let beyond = if v < 0.0 { VPos::Top } else { VPos::Bottom };
        TextStyle::from((FAMILY, 11).into_font()).pos(Pos::new(HPos::Center, beyond))
    };
    for (j, s) in b.series.iter().enumerate() {
        let color = PALETTE[j % PALETTE.len()];
        for (c, v) in s.values.iter().enumerate() {
            let Some(v) = *v else { continue };
            let x = c as f64 + 0.1 + j as f64 * width;
            let h = height(c, v);
            chart
                .draw_series([Rectangle::new([(x, 0.0), (x + width * 0.92, h)], color.filled())])
                .map_err(msg)?;
            chart.draw_series([Text::new(short(v), (x + width * 0.46, h), value_style(v))]).map_err(msg)?;
        }
    }
    let entries: Vec<(&str, RGBColor)> =
        b.series.iter().enumerate().map(|(j, s)| (s.name.as_str(), PALETTE[j % PALETTE.len()])).collect();
    draw_legend(&legend, &entries, true)?;
    let label_style = TextStyle::from((FAMILY, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (c, name) in b.categories.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(c as f64 + 0.5, y_low));
        let (ox, oy) = plot.get_base_pixel();
        plot.draw(&Text::new(name.clone(), (px - ox, py - oy + 8), label_style.clone())).map_err(msg)?;
    }
    Ok(())
}

/// Viridis, by linear interpolation between five stops.
fn viridis(t: f64) -> RGBColor {
    const STOPS: [[f64; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) * 4.0 } else { 0.0 };
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let c = |k: usize| (STOPS[i][k] + (STOPS[i + 1][k] - STOPS[i][k]) * f).round() as u8;
    RGBColor(c(0), c(1), c(2))
}

fn draw_heatmap<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, h: &Heatmap) -> Drawn {
    let n = h.values.len().max(1);
    let [lo, hi] = h.range;
    let t = |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    let (w, _) = root.dim_in_pixel();
    let (main, bar) = root.split_horizontally(w.saturating_sub(120));
    // Row 0 on top: row i is drawn at height n - 1 - i.
    let label = |v: &f64| {
        let k = v.round() as i64;
        if v.fract().abs() < 1e-9 && (0..n as i64).contains(&k) {
            (h.first as i64 + k).to_string()
        } else {
            String::new()
        }
    };
    let label_y = |v: &f64| label(&(n as f64 - 1.0 - v));
    let mut chart = ChartBuilder::on(&main)
        .margin(14)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, -0.5f64..n as f64 - 0.5)
        .map_err(msg)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(&h.x_label)
        .y_desc(&h.y_label)
        .x_labels(n.min(16))
        .y_labels(n.min(16))
        .x_label_formatter(&label)
        .y_label_formatter(&label_y)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()
        .map_err(msg)?;
    let cells = h.values.iter().enumerate().flat_map(|(i, row)| {
        row.iter().enumerate().filter_map(move |(j, v)| {
            let v = (*v)?;
            let (x, y) = (j as f64, (n - 1 - i) as f64);
            v.is_finite()
                .then(|| Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], viridis(t(v)).filled()))
        })
    });
    chart.draw_series(cells).map_err(msg)?;
    let mut scale = ChartBuilder::on(&bar)
        .margin_top(14)
        .margin_bottom(64)
        .margin_right(8)
        .set_label_area_size(LabelAreaPosition::Right, 60)
        .build_cartesian_2d(0f64..1f64, lo..(if hi > lo { hi } else { lo + 1.0 }))
        .map_err(msg)?;
    scale
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc(&h.value_label)
        .y_label_formatter(&|v| short(*v))
        .label_style((FAMILY, 12))
        .axis_desc_style((FAMILY, 13))
        .draw()
        .map_err(msg)?;
    let steps = 100;
    let span = if hi > lo { hi - lo } else { 1.0 };
    let strips = (0..steps).map(|s| {
        let (a, b) = (lo + span * s as f64 / steps as f64, lo + span * (s + 1) as f64 / steps as f64);
        Rectangle::new([(0.0, a), (1.0, b)], viridis((a - lo) / span).filled())
    });
    scale.draw_series(strips).map_err(msg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(path: &Path) -> (u32, u32) {
        let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        (info.width, info.height)
    }

    /// Every kind draws to PNG and SVG; the SVG carries the title, the axis names, the legend
    /// and the tick labels as text, and the PNG is not blank.
    #[test]
    fn charts_carry_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let series = |name: &str, k: f64| Series {
            name: name.into(),
            points: (1..=4).map(|i| [(1 << i) as f64, k * i as f64]).collect(),
            y_ranges: Some((1..=4).map(|i| [k * i as f64 - 0.3, k * i as f64 + 0.3]).collect()),
        };
        let xy = XyChart {
            title: "decode throughput".into(),
            x_label: "batch".into(),
            y_label: "tokens/s".into(),
            log2_x: true,
            series: vec![series("dense", 1.0), series("UniAttn", 1.5)],
        };
        let charts = [
            (
                "lines",
                Chart::Lines(xy.clone()),
                vec!["decode throughput", "batch", "tokens/s", "dense", "UniAttn", "16"],
            ),
            ("scatter", Chart::Scatter(xy), vec!["decode throughput", "UniAttn"]),
            (
                "bars",
                Chart::Bars(BarChart {
                    title: "speed".into(),
                    y_label: "tok/s".into(),
                    categories: vec!["b1 2k".into(), "b32 8k".into()],
                    series: vec![
                        BarSeries { name: "ours".into(), values: vec![Some(829.0), Some(15712.0)] },
                        BarSeries { name: "compiled".into(), values: vec![Some(608.0), None] },
                    ],
                    per_category_scale: true,
                }),
                vec!["speed", "b32 8k", "compiled", "15712", "608"],
            ),
            (
                "bars_below_zero",
                Chart::Bars(BarChart {
                    title: "change".into(),
                    y_label: "%".into(),
                    categories: vec!["combine".into(), "8 splits".into()],
                    series: vec![BarSeries {
                        name: "against main".into(),
                        values: vec![Some(0.08), Some(-3.3)],
                    }],
                    per_category_scale: false,
                }),
                // A bar below zero takes the axis down with it: its ticks include negative ones.
                vec!["change", "8 splits", "-3.3", "-3"],
            ),
            (
                "heatmap",
                Chart::Heatmap(Heatmap {
                    title: "similarity".into(),
                    x_label: "layer".into(),
                    y_label: "lead layer".into(),
                    value_label: "cosine".into(),
                    values: (0..6)
                        .map(|i| (0..6).map(|j| (i != j || i == 0).then_some(0.1 * (i + j) as f64)).collect())
                        .collect(),
                    first: 10,
                    range: [0.0, 1.0],
                }),
                vec!["similarity", "layer", "lead layer", "cosine", "15"],
            ),
        ];
        for (name, chart, texts) in charts {
            let svg = dir.path().join(format!("{name}.svg"));
            chart.save(&svg).unwrap();
            if let Ok(keep) = std::env::var("UNIATTN_KEEP_PLOTS") {
                std::fs::create_dir_all(&keep).unwrap();
                chart.save(&Path::new(&keep).join(format!("{name}.svg"))).unwrap();
                chart.save(&Path::new(&keep).join(format!("{name}.png"))).unwrap();
            }
            let svg_text = std::fs::read_to_string(&svg).unwrap();
            let shown: Vec<&str> = svg_text
                .split("<text")
                .skip(1)
                .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim()))
                .collect();
            for t in texts {
                assert!(shown.contains(&t), "{name}: the SVG lacks the text {t:?}; it has {shown:?}");
            }
            let png = dir.path().join(format!("{name}.png"));
            chart.save(&png).unwrap();
            let (w, h) = png_size(&png);
            assert!(w >= 400 && h >= 400, "{name}: {w}x{h}");
            let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
            let mut reader = decoder.read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size()];
            reader.next_frame(&mut buf).unwrap();
            let dark = buf.chunks(3).filter(|p| p.iter().all(|&c| c < 80)).count();
            assert!(dark > 500, "{name}: the PNG has almost no text or lines ({dark} dark pixels)");
        }
    }

    /// Up to thirty series, no two look alike: the colours repeat past ten, the shapes then
    /// change.
    #[test]
    fn series_markers_stay_apart() {
        let looks: Vec<_> = (0..30)
            .map(|i| {
                let (c, shape) = marker(i);
                (c.0, c.1, c.2, shape)
            })
            .collect();
        let mut distinct = looks.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), looks.len(), "{looks:?}");
        assert_eq!(marker(0), (PALETTE[0], 0), "the first series keeps tab10's first colour, filled");
    }

    /// Inconsistent data is refused, naming the file and what does not fit.
    #[test]
    fn a_malformed_chart_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let bad = Chart::Bars(BarChart {
            title: "t".into(),
            y_label: "y".into(),
            categories: vec!["a".into(), "b".into()],
            series: vec![BarSeries { name: "s".into(), values: vec![Some(1.0)] }],
            per_category_scale: false,
        });
        let e = bad.save(&path).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("1 values for 2 categories"), "{e}");
        assert!(!path.exists(), "nothing is written for a refused chart");
        let json = r#"{"kind": "heatmap", "title": "t", "x_label": "l", "y_label": "l", "value_label": "v", "values": [[1.0, 2.0], [3.0]], "range": [0, 1]}"#;
        let h: Chart = serde_json::from_str(json).unwrap();
        let e = h.save(&path).unwrap_err().to_string();
        assert!(e.contains("row 1 has 1 values"), "{e}");
    }
}
