//! Small plots without a plotting stack: PNG heatmaps and line charts labelled with a built-in
//! 3x5 pixel font (digits, '.', '-', and a few letters), and SVG line charts with legends.
use crate::error::{Error, Result};
use std::path::Path;

/// An RGB canvas.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pixels: Vec<[u8; 3]>,
}

const GLYPHS: &[(char, [u8; 5])] = &[
    ('0', [0b111, 0b101, 0b101, 0b101, 0b111]),
    ('1', [0b010, 0b110, 0b010, 0b010, 0b111]),
    ('2', [0b111, 0b001, 0b111, 0b100, 0b111]),
    ('3', [0b111, 0b001, 0b111, 0b001, 0b111]),
    ('4', [0b101, 0b101, 0b111, 0b001, 0b001]),
    ('5', [0b111, 0b100, 0b111, 0b001, 0b111]),
    ('6', [0b111, 0b100, 0b111, 0b101, 0b111]),
    ('7', [0b111, 0b001, 0b010, 0b010, 0b010]),
    ('8', [0b111, 0b101, 0b111, 0b101, 0b111]),
    ('9', [0b111, 0b101, 0b111, 0b001, 0b111]),
    ('.', [0b000, 0b000, 0b000, 0b000, 0b010]),
    ('-', [0b000, 0b000, 0b111, 0b000, 0b000]),
    ('e', [0b000, 0b111, 0b111, 0b100, 0b111]),
    ('L', [0b100, 0b100, 0b100, 0b100, 0b111]),
    (' ', [0; 5]),
];

impl Canvas {
    pub fn new(width: usize, height: usize) -> Self {
        Canvas { width, height, pixels: vec![[255, 255, 255]; width * height] }
    }

    pub fn fill_rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                self.pixels[yy * self.width + xx] = c;
            }
        }
    }

    /// Text at (x, y), each font pixel drawn as `scale` x `scale`.
    pub fn text(&mut self, x: usize, y: usize, s: &str, scale: usize) {
        for (i, ch) in s.chars().enumerate() {
            let Some((_, rows)) = GLYPHS.iter().find(|(c, _)| *c == ch) else { continue };
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        self.fill_rect(x + (i * 4 + col) * scale, y + r * scale, scale, scale, [0, 0, 0]);
                    }
                }
            }
        }
    }

    pub fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            if x >= 0.0 && y >= 0.0 {
                self.fill_rect(x as usize, y as usize, 2, 2, c);
            }
        }
    }

    pub fn save_png(&self, path: &Path) -> Result<()> {
        let mut data = Vec::with_capacity(self.pixels.len() * 3);
        for p in &self.pixels {
            data.extend_from_slice(p);
        }
        let mut buf = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut buf, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(|e| Error::format(path, e.to_string()))?;
            w.write_image_data(&data).map_err(|e| Error::format(path, e.to_string()))?;
        }
        crate::fs::write_atomic(path, &buf)
    }
}

/// Viridis, by linear interpolation between five stops.
pub fn viridis(t: f64) -> [u8; 3] {
    const STOPS: [[f64; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let t = t.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let c = |k: usize| (STOPS[i][k] + (STOPS[i + 1][k] - STOPS[i][k]) * f).round() as u8;
    [c(0), c(1), c(2)]
}

/// An `n x n` heatmap (row i, column j = `values[i][j]`, NaN left blank), axes labelled every
/// `tick` cells from `first` (the layer of row and column 0), with a colour bar from `lo` to `hi`.
pub fn heatmap(values: &[Vec<f64>], first: usize, lo: f64, hi: f64, tick: usize, path: &Path) -> Result<()> {
    let n = values.len();
    let cell = (600 / n.max(1)).clamp(4, 24);
    let (left, top) = (40, 20);
    let mut c = Canvas::new(left + n * cell + 110, top + n * cell + 40);
    for (i, row) in values.iter().enumerate() {
        for (j, v) in row.iter().enumerate().filter(|(_, v)| !v.is_nan()) {
            let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
            c.fill_rect(left + j * cell, top + i * cell, cell, cell, viridis(t));
        }
    }
    for k in (0..n).step_by(tick.max(1)) {
        let label = (first + k).to_string();
        c.text(left + k * cell, top + n * cell + 6, &label, 2);
        c.text(4, top + k * cell, &label, 2);
    }
    let bx = left + n * cell + 20;
    for y in 0..n * cell {
        let t = 1.0 - y as f64 / (n * cell) as f64;
        c.fill_rect(bx, top + y, 20, 1, viridis(t));
    }
    c.text(bx + 26, top, &format!("{hi:.2}"), 2);
    c.text(bx + 26, top + n * cell - 10, &format!("{lo:.2}"), 2);
    c.save_png(path)
}

/// Points of one line and its colour.
pub type Series<'a> = (&'a [(f64, f64)], [u8; 3]);

/// Line chart of one or more series over a shared x axis.
pub fn lines(series: &[Series], path: &Path) -> Result<()> {
    let (w, h, left, top) = (640usize, 360usize, 60usize, 20usize);
    let pts = series.iter().flat_map(|(s, _)| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 >= x1 {
        x1 = x0 + 1.0;
    }
    if y0 >= y1 {
        y1 = y0 + 1.0;
    }
    let mut c = Canvas::new(w + left + 20, h + top + 40);
    c.fill_rect(left, top, 1, h, [0, 0, 0]);
    c.fill_rect(left, top + h, w, 1, [0, 0, 0]);
    let px = |x: f64| left as f64 + (x - x0) / (x1 - x0) * w as f64;
    let py = |y: f64| top as f64 + (1.0 - (y - y0) / (y1 - y0)) * h as f64;
    for (s, color) in series {
        for pair in s.windows(2) {
            c.line((px(pair[0].0), py(pair[0].1)), (px(pair[1].0), py(pair[1].1)), *color);
        }
    }
    c.text(4, top, &format!("{y1:.3}"), 2);
    c.text(4, top + h - 10, &format!("{y0:.3}"), 2);
    c.text(left, top + h + 8, &format!("{x0:.0}"), 2);
    c.text(left + w - 40, top + h + 8, &format!("{x1:.0}"), 2);
    c.save_png(path)
}

/// A labelled line chart as SVG (text needs no font of ours): one series per label, a legend,
/// the axes' ranges and names. A log2 x axis suits batch sizes and context lengths.
pub fn svg_lines(
    title: &str,
    x_name: &str,
    y_name: &str,
    log2_x: bool,
    series: &[(String, Vec<(f64, f64)>)],
    path: &Path,
) -> Result<()> {
    const PALETTE: [&str; 8] =
        ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
    let (w, h, left, top, right) = (640.0, 360.0, 70.0, 40.0, 220.0);
    let fx = |x: f64| if log2_x { x.max(1e-12).log2() } else { x };
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|(_, s)| s.iter().map(|&(x, y)| (fx(x), y))).collect();
    let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let y1 = pts.iter().fold(0.0f64, |a, p| a.max(p.1)) * 1.05;
    let (x1, y1) = (if x1 > x0 { x1 } else { x0 + 1.0 }, if y1 > 0.0 { y1 } else { 1.0 });
    let px = |x: f64| left + (fx(x) - x0) / (x1 - x0) * w;
    let py = |y: f64| top + (1.0 - y / y1) * h;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_name}</text>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{y_name}</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y1:.0}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\n",
        w + left + right,
        h + top + 50.0,
        top + h,
        top + h,
        left + w,
        top + h,
        left + w / 2.0,
        top + h + 40.0,
        top + h / 2.0,
        top + h / 2.0,
        left - 4.0,
        top + 4.0,
        left - 4.0,
        top + h,
    );
    let mut ticks: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for t in ticks {
        s +=
            &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t}</text>\n", px(t), top + h + 16.0);
    }
    for (i, (label, p)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let d: Vec<String> = p.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\n",
            d.join(" ")
        );
        for &(x, y) in p {
            s += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>\n", px(x), py(y));
        }
        let ly = top + 16.0 * i as f64;
        s += &format!(
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            left + w + 12.0,
            ly + 4.0,
            left + w + 28.0,
            ly + 9.0,
            label.replace('&', "&amp;").replace('<', "&lt;")
        );
    }
    s += "</svg>\n";
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}
