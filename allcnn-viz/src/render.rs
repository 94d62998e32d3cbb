//! Rendering, separate from attribution and usable on its own: maps to RGB
//! images, grids, PNG files, and the paper's two figures.
//!
//! - Signed maps ([`Style::Signed`]: gradient, deconvnet, guided backprop)
//!   put zero at mid-grey and scale symmetrically: values at or beyond the
//!   `percentile`-th percentile of `|v|` saturate. Each colour channel of the
//!   map drives the same channel of the picture.
//! - Non-negative maps ([`Style::Heat`]: saliency) sum `|v|` over the
//!   channels, scale by the percentile and colour black-red-yellow-white.
//! - Images ([`Style::Image`]: normalised inputs and patches) are stretched
//!   from their minimum to their maximum.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use image::{Rgb, RgbImage};

use crate::error::{CandleContext, VizError};
use crate::methods::Method;
use crate::top::TopFigure;

/// How to turn a `[C, H, W]` tensor into colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Zero at mid-grey, symmetric percentile-clipped scale.
    Signed,
    /// `sum_c |v|` as a heat map, percentile-clipped.
    Heat,
    /// Min-max stretched image.
    Image,
}

impl Style {
    /// The style for a method's maps: [`Style::Heat`] for saliency,
    /// [`Style::Signed`] otherwise.
    pub fn for_method(method: Method) -> Self {
        if method.is_signed() {
            Style::Signed
        } else {
            Style::Heat
        }
    }
}

/// Options shared by the renderers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderOptions {
    /// Percentile of `|v|` (0..=100) at which signed and heat maps saturate.
    pub percentile: f32,
    /// Integer upscaling of every cell (nearest neighbour); 32x32 CIFAR maps
    /// are easier to see at 4.
    pub scale: u32,
    /// Pixels between grid cells (and around the grid).
    pub spacing: u32,
    /// Colour of the spacing.
    pub background: [u8; 3],
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            percentile: 99.5,
            scale: 1,
            spacing: 2,
            background: [255, 255, 255],
        }
    }
}

/// `[C, H, W]` as `(C, H, W, values)` on the CPU in f32.
fn chw(t: &Tensor, what: &str) -> Result<(usize, usize, usize, Vec<f32>), VizError> {
    let (c, h, w) = t.dims3().map_err(|_| VizError::BadTensor {
        what: what.into(),
        expected: "[C, H, W] with C = 1 or 3".into(),
        got: t.dims().to_vec(),
    })?;
    if c != 1 && c != 3 {
        return Err(VizError::BadTensor {
            what: what.into(),
            expected: "[C, H, W] with C = 1 or 3".into(),
            got: t.dims().to_vec(),
        });
    }
    let v = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .with_context(what)?;
    Ok((c, h, w, v))
}

trait WithWhat<T> {
    fn with_context(self, what: &str) -> Result<T, VizError>;
}

impl<T> WithWhat<T> for candle_core::Result<T> {
    fn with_context(self, what: &str) -> Result<T, VizError> {
        self.context(|| format!("reading {what}"))
    }
}

/// The `p`-th percentile (0..=100, nearest rank) of `values`; 0 when empty.
pub fn percentile(values: &[f32], p: f32) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f32> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f32::total_cmp);
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * v.len() as f32).ceil() as usize;
    v[rank.saturating_sub(1).min(v.len() - 1)]
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

fn pixel(c: usize, plane: usize, v: &[f32], i: usize, f: impl Fn(f32) -> u8) -> Rgb<u8> {
    if c == 1 {
        let g = f(v[i]);
        Rgb([g, g, g])
    } else {
        Rgb([f(v[i]), f(v[plane + i]), f(v[2 * plane + i])])
    }
}

/// A signed map `[C, H, W]` (C = 1 or 3): 0 is mid-grey, `+clip` white,
/// `-clip` black, with `clip` the `percentile`-th percentile of `|v|`.
///
/// # Errors
/// [`VizError::BadTensor`] for another shape.
pub fn signed_map(map: &Tensor, percentile_: f32) -> Result<RgbImage, VizError> {
    let (c, h, w, v) = chw(map, "signed map")?;
    let abs: Vec<f32> = v.iter().map(|x| x.abs()).collect();
    let clip = percentile(&abs, percentile_);
    let clip = if clip > 0.0 { clip } else { 1.0 };
    let plane = h * w;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        pixel(c, plane, &v, i, |s| to_u8(0.5 + 0.5 * s / clip))
    }))
}

/// The black-red-yellow-white colour of `t` in `[0, 1]`.
pub fn heat_colour(t: f32) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0) * 3.0;
    Rgb([to_u8(t), to_u8(t - 1.0), to_u8(t - 2.0)])
}

/// A heat map of `sum_c |v|` for `map` `[C, H, W]`, scaled so the
/// `percentile`-th percentile saturates.
///
/// # Errors
/// [`VizError::BadTensor`] for another shape.
pub fn heat_map(map: &Tensor, percentile_: f32) -> Result<RgbImage, VizError> {
    let (c, h, w, v) = chw(map, "heat map")?;
    let plane = h * w;
    let sum: Vec<f32> = (0..plane)
        .map(|i| (0..c).map(|k| v[k * plane + i].abs()).sum())
        .collect();
    let clip = percentile(&sum, percentile_);
    let clip = if clip > 0.0 { clip } else { 1.0 };
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        heat_colour(sum[y as usize * w + x as usize] / clip)
    }))
}

/// An image `[C, H, W]` stretched from its minimum (black) to its maximum
/// (white) over all channels, which suits normalised inputs.
///
/// # Errors
/// [`VizError::BadTensor`] for another shape.
pub fn image_rgb(image: &Tensor) -> Result<RgbImage, VizError> {
    let (c, h, w, v) = chw(image, "image")?;
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let range = if hi > lo { hi - lo } else { 1.0 };
    let plane = h * w;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        pixel(c, plane, &v, i, |s| to_u8((s - lo) / range))
    }))
}

/// Grey drawn where a receptive-field patch lies outside its image.
pub const OUTSIDE: Rgb<u8> = Rgb([160, 160, 160]);

/// A receptive-field patch `[C, S, S]` cropped at `window` out of an image
/// of `image_size` (H, W): stretched like [`image_rgb`] over the pixels
/// inside the image only, the rest [`OUTSIDE`], whatever value the
/// preprocessing gave the padding.
///
/// # Errors
/// [`VizError::BadTensor`] for another shape.
pub fn patch_rgb(
    patch: &Tensor,
    window: crate::Window,
    image_size: (usize, usize),
) -> Result<RgbImage, VizError> {
    let (c, h, w, v) = chw(patch, "patch")?;
    let inside = |y: usize, x: usize| {
        let (iy, ix) = (window.y0 + y as isize, window.x0 + x as isize);
        (0..image_size.0 as isize).contains(&iy) && (0..image_size.1 as isize).contains(&ix)
    };
    let plane = h * w;
    let (lo, hi) = (0..plane)
        .filter(|i| inside(i / w, i % w))
        .flat_map(|i| (0..c).map(move |k| k * plane + i))
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), j| {
            (a.min(v[j]), b.max(v[j]))
        });
    let range = if hi > lo { hi - lo } else { 1.0 };
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let (x, y) = (x as usize, y as usize);
        if inside(y, x) {
            pixel(c, plane, &v, y * w + x, |s| to_u8((s - lo) / range))
        } else {
            OUTSIDE
        }
    }))
}

/// Renders `[C, H, W]` in `style` (the percentile applies to the map styles).
///
/// # Errors
/// [`VizError::BadTensor`] for another shape.
pub fn render(t: &Tensor, style: Style, percentile_: f32) -> Result<RgbImage, VizError> {
    match style {
        Style::Signed => signed_map(t, percentile_),
        Style::Heat => heat_map(t, percentile_),
        Style::Image => image_rgb(t),
    }
}

/// Nearest-neighbour upscaling by an integer `factor` (1 returns a copy).
pub fn upscale(img: &RgbImage, factor: u32) -> RgbImage {
    let f = factor.max(1);
    image::imageops::resize(
        img,
        img.width() * f,
        img.height() * f,
        image::imageops::FilterType::Nearest,
    )
}

/// A grid of equally sized cells with spacing between and around them.
/// Cells left empty show the background.
#[derive(Debug, Clone)]
pub struct Grid {
    rows: u32,
    cols: u32,
    cell_w: u32,
    cell_h: u32,
    spacing: u32,
    image: RgbImage,
}

/// The largest figure a [`Grid`] makes: 100 megapixels (300 MB of RGB).
pub const MAX_FIGURE_PIXELS: u64 = 100_000_000;

impl Grid {
    /// An empty `rows` x `cols` grid of `cell_w` x `cell_h` cells.
    ///
    /// # Errors
    /// [`VizError::InvalidArgument`] for a figure over
    /// [`MAX_FIGURE_PIXELS`] (many rows at a large scale), before anything
    /// is allocated.
    pub fn new(
        rows: u32,
        cols: u32,
        cell_w: u32,
        cell_h: u32,
        spacing: u32,
        background: [u8; 3],
    ) -> Result<Self, VizError> {
        let side = |n: u32, cell: u32| {
            u64::from(n) * u64::from(cell) + (u64::from(n) + 1) * u64::from(spacing)
        };
        let (w, h) = (side(cols, cell_w), side(rows, cell_h));
        if w.saturating_mul(h) > MAX_FIGURE_PIXELS {
            return Err(VizError::InvalidArgument(format!(
                "the figure would be {w} x {h} pixels, over the limit of {} megapixels: draw fewer rows (images, channels) or use a smaller scale",
                MAX_FIGURE_PIXELS / 1_000_000
            )));
        }
        Ok(Self {
            rows,
            cols,
            cell_w,
            cell_h,
            spacing,
            image: RgbImage::from_pixel(w.max(1) as u32, h.max(1) as u32, Rgb(background)),
        })
    }

    /// Draws `img` into cell `(row, col)` (its top-left corner; anything
    /// beyond the cell is cut off).
    ///
    /// # Errors
    /// [`VizError::InvalidArgument`] for a cell outside the grid.
    pub fn put(&mut self, row: u32, col: u32, img: &RgbImage) -> Result<(), VizError> {
        if row >= self.rows || col >= self.cols {
            return Err(VizError::InvalidArgument(format!(
                "grid cell ({row}, {col}) is outside a {}x{} grid",
                self.rows, self.cols
            )));
        }
        let x0 = self.spacing + col * (self.cell_w + self.spacing);
        let y0 = self.spacing + row * (self.cell_h + self.spacing);
        // Clipped to the cell, so a larger picture never spills over.
        let w = img.width().min(self.cell_w);
        let h = img.height().min(self.cell_h);
        let part = image::imageops::crop_imm(img, 0, 0, w, h).to_image();
        image::imageops::replace(&mut self.image, &part, i64::from(x0), i64::from(y0));
        Ok(())
    }

    /// The finished picture.
    pub fn into_image(self) -> RgbImage {
        self.image
    }
}

/// Writes `img` as a PNG, creating the parent folder.
///
/// # Errors
/// [`VizError::Io`] / [`VizError::Image`] naming the file.
pub fn write_png(img: &RgbImage, path: impl AsRef<Path>) -> Result<(), VizError> {
    let path = path.as_ref();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|cause| VizError::Io {
            path: dir.to_path_buf(),
            cause,
        })?;
    }
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|cause| VizError::Image {
            path: path.to_path_buf(),
            cause,
        })
}

/// Renders every map of `maps` `[N, C, H, W]` in `style` and writes
/// `dir/{names[n]}.png` for image `n` (e.g. `guided-backprop-cat` for
/// `cat.jpg`). Returns the paths written.
///
/// # Errors
/// [`VizError::BadTensor`] for another shape or when `names` does not
/// hold one name per map, or a write error.
pub fn write_maps(
    maps: &Tensor,
    style: Style,
    opts: &RenderOptions,
    dir: impl AsRef<Path>,
    names: &[String],
) -> Result<Vec<PathBuf>, VizError> {
    let n = batch_len(maps, "maps")?;
    if names.len() != n {
        return Err(VizError::BadTensor {
            what: format!("maps (for {} file names)", names.len()),
            expected: format!("[{}, C, H, W]", names.len()),
            got: maps.dims().to_vec(),
        });
    }
    let mut paths = Vec::with_capacity(n);
    for (i, name) in names.iter().enumerate() {
        let one = maps.get(i).context(|| format!("map {i}"))?;
        let img = upscale(&render(&one, style, opts.percentile)?, opts.scale);
        let path = dir.as_ref().join(format!("{name}.png"));
        write_png(&img, &path)?;
        paths.push(path);
    }
    Ok(paths)
}

fn batch_len(t: &Tensor, what: &str) -> Result<usize, VizError> {
    t.dims4().map(|(n, ..)| n).map_err(|_| VizError::BadTensor {
        what: what.into(),
        expected: "[N, C, H, W]".into(),
        got: t.dims().to_vec(),
    })
}

/// The method-comparison figure: one row per image of `input` `[N, C, H, W]`,
/// the image first, then each method's map (in the order of `maps`, each
/// `[N, C, H, W]`, or `[N, 1, H, W]` for Grad-CAM) in that method's
/// [`Style`].
///
/// # Errors
/// [`VizError::BadTensor`] when the shapes disagree.
pub fn comparison_grid(
    input: &Tensor,
    maps: &[(Method, Tensor)],
    opts: &RenderOptions,
) -> Result<RgbImage, VizError> {
    let n = batch_len(input, "input")?;
    let (_, _, h, w) = input.dims4().context(|| "input".into())?;
    for (m, t) in maps {
        // One map per image at the input's size: C channels, or one
        // (Grad-CAM).
        let fits = matches!(t.dims(), &[tn, tc, th, tw] if tn == n && th == h && tw == w && (tc == 1 || tc == input.dims()[1]));
        if !fits {
            return Err(VizError::BadTensor {
                what: format!("{m} maps"),
                expected: format!("[{n}, 1 or C, {h}, {w}] (the input is {:?})", input.dims()),
                got: t.dims().to_vec(),
            });
        }
    }
    let s = opts.scale.max(1);
    let mut grid = Grid::new(
        n as u32,
        1 + maps.len() as u32,
        w as u32 * s,
        h as u32 * s,
        opts.spacing,
        opts.background,
    )?;
    for i in 0..n {
        let img = input.get(i).context(|| format!("image {i}"))?;
        grid.put(i as u32, 0, &upscale(&image_rgb(&img)?, s))?;
        for (j, (m, t)) in maps.iter().enumerate() {
            let one = t.get(i).context(|| format!("{m} map {i}"))?;
            let pic = render(&one, Style::for_method(*m), opts.percentile)?;
            grid.put(i as u32, 1 + j as u32, &upscale(&pic, s))?;
        }
    }
    Ok(grid.into_image())
}

/// Glyph size of the label font (font8x8), in pixels at scale 1.
const GLYPH: u32 = 8;

/// Draws `text` (ASCII; other characters as `?`) with its top-left corner at
/// `(x, y)`, in `colour`, each font pixel `scale` x `scale`; pixels outside
/// the image are skipped.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, colour: [u8; 3], scale: u32) {
    let s = scale.max(1);
    for (i, c) in text.chars().enumerate() {
        let code = if c.is_ascii() {
            c as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        let gx = x + i as u32 * GLYPH * s;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..GLYPH {
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..s {
                    for dx in 0..s {
                        let (px, py) = (gx + col * s + dx, y + row as u32 * s + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, Rgb(colour));
                        }
                    }
                }
            }
        }
    }
}

/// The width in pixels of `text` drawn by [`draw_text`] at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * GLYPH * scale.max(1)
}

/// `grid` (made with `opts`' spacing, cells `cell_w` x `cell_h`) with a band
/// of column titles above it and a band of row labels to its left, in
/// dark grey on the background colour. A title is centred over its cell,
/// or starts at the cell's left edge when wider (running over the next,
/// e.g. empty, cells); empty lists leave their band out.
pub fn annotate(
    grid: &RgbImage,
    col_titles: &[String],
    row_labels: &[String],
    cell_w: u32,
    cell_h: u32,
    opts: &RenderOptions,
) -> RgbImage {
    const INK: [u8; 3] = [40, 40, 40];
    let sp = opts.spacing;
    let top = if col_titles.is_empty() {
        0
    } else {
        GLYPH + 2 * sp.max(2)
    };
    let left = row_labels
        .iter()
        .map(|l| text_width(l, 1))
        .max()
        .map_or(0, |w| w + 2 * sp.max(2));
    let mut out = RgbImage::from_pixel(
        grid.width() + left,
        grid.height() + top,
        Rgb(opts.background),
    );
    for (x, y, p) in grid.enumerate_pixels() {
        out.put_pixel(x + left, y + top, *p);
    }
    for (j, title) in col_titles.iter().enumerate() {
        let x0 = left + sp + j as u32 * (cell_w + sp);
        let x = x0 + cell_w.saturating_sub(text_width(title, 1)) / 2;
        draw_text(&mut out, x, sp.max(2), title, INK, 1);
    }
    for (i, label) in row_labels.iter().enumerate() {
        let y0 = top + sp + i as u32 * (cell_h + sp);
        let y = y0 + cell_h.saturating_sub(GLYPH) / 2;
        draw_text(&mut out, sp.max(2), y, label, INK, 1);
    }
    out
}

/// [`comparison_grid`] with each column titled by its method ("input" for
/// the first) and each row labelled with `row_labels` (e.g. the predicted
/// class; may be empty).
///
/// # Errors
/// As [`comparison_grid`].
pub fn labelled_comparison_grid(
    input: &Tensor,
    maps: &[(Method, Tensor)],
    row_labels: &[String],
    opts: &RenderOptions,
) -> Result<RgbImage, VizError> {
    let grid = comparison_grid(input, maps, opts)?;
    let (_, _, h, w) = input.dims4().context(|| "input".into())?;
    let s = opts.scale.max(1);
    // The method's name, or a shorter form where a cell is too narrow.
    let title = |m: &Method| {
        let full = m.to_string();
        if text_width(&full, 1) <= w as u32 * s {
            full
        } else {
            m.info().short.to_string()
        }
    };
    let titles: Vec<String> = std::iter::once("input".to_string())
        .chain(maps.iter().map(|(m, _)| title(m)))
        .collect();
    Ok(annotate(
        &grid,
        &titles,
        row_labels,
        w as u32 * s,
        h as u32 * s,
        opts,
    ))
}

/// [`top_activation_grid`] with a title over each group (the layer's
/// patches, then each method) and the channel at the start of each row.
///
/// `channel_names` names the channels where they mean something, as the
/// class layer's do (its channel `c` is class `c`): a row reads `ch 3 cat`
/// then. `None`, or a channel past the list, reads `ch 3`.
///
/// # Errors
/// As [`top_activation_grid`].
pub fn labelled_top_activation_grid(
    fig: &TopFigure,
    channel_names: Option<&[String]>,
    opts: &RenderOptions,
) -> Result<RgbImage, VizError> {
    let grid = top_activation_grid(fig, opts)?;
    let k = fig.rows.iter().map(|r| r.entries.len()).max().unwrap_or(1);
    let mut titles = Vec::new();
    for (g, name) in std::iter::once(format!("{} patches", fig.layer))
        .chain(fig.methods.iter().map(|m| m.to_string()))
        .enumerate()
    {
        if g > 0 {
            titles.push(String::new()); // the empty cell between groups
        }
        titles.push(name);
        titles.extend(std::iter::repeat_n(String::new(), k - 1));
    }
    let rows: Vec<String> = fig
        .rows
        .iter()
        .map(
            |r| match channel_names.and_then(|names| names.get(r.channel)) {
                Some(name) => format!("ch {} {name}", r.channel),
                None => format!("ch {}", r.channel),
            },
        )
        .collect();
    let size = fig.receptive_field.size as u32 * opts.scale.max(1);
    Ok(annotate(&grid, &titles, &rows, size, size, opts))
}

/// The paper's top-activation figure for one layer: per channel a row of the
/// `k` receptive-field patches, then, for each reconstruction method, the `k`
/// reconstructions in the same order. Groups are separated by an empty
/// cell. Each patch and reconstruction is scaled on its own.
///
/// # Errors
/// [`VizError::InvalidArgument`] for a figure with no rows.
pub fn top_activation_grid(fig: &TopFigure, opts: &RenderOptions) -> Result<RgbImage, VizError> {
    let k = fig.rows.iter().map(|r| r.entries.len()).max().unwrap_or(0);
    if fig.rows.is_empty() || k == 0 {
        return Err(VizError::InvalidArgument(format!(
            "the {} top-activation figure has nothing to draw",
            fig.layer
        )));
    }
    let size = fig.receptive_field.size as u32 * opts.scale.max(1);
    let groups = 1 + fig.methods.len() as u32;
    let cols = groups * k as u32 + (groups - 1);
    let mut grid = Grid::new(
        fig.rows.len() as u32,
        cols,
        size,
        size,
        opts.spacing,
        opts.background,
    )?;
    for (r, row) in fig.rows.iter().enumerate() {
        for (i, e) in row.entries.iter().enumerate() {
            let col = i as u32;
            let patch = patch_rgb(&e.patch, e.window, fig.image_size)?;
            grid.put(r as u32, col, &upscale(&patch, opts.scale))?;
            for (g, (m, rec)) in e.reconstructions.iter().enumerate() {
                let col = (g as u32 + 1) * (k as u32 + 1) + i as u32;
                let pic = render(rec, Style::for_method(*m), opts.percentile)?;
                grid.put(r as u32, col, &upscale(&pic, opts.scale))?;
            }
        }
    }
    Ok(grid.into_image())
}

/// The cascading-randomisation figure of a sanity check (Adebayo et al.,
/// figure 2): one row per method, the first image's map from the trained
/// network, then after randomising the top 1, 2, ... convolutions, titled by
/// the deepest layer randomised.
///
/// # Errors
/// [`VizError::BadTensor`] for maps of another shape.
pub fn sanity_grid(
    report: &crate::SanityReport,
    opts: &RenderOptions,
) -> Result<RgbImage, VizError> {
    let Some((_, first)) = report.cascade_maps.first() else {
        return Err(VizError::InvalidArgument("the report holds no maps".into()));
    };
    let (cols, _, h, w) = first.dims4().context(|| "cascade maps".into())?;
    let s = opts.scale.max(1);
    let mut grid = Grid::new(
        report.cascade_maps.len() as u32,
        cols as u32,
        w as u32 * s,
        h as u32 * s,
        opts.spacing,
        opts.background,
    )?;
    for (i, (m, maps)) in report.cascade_maps.iter().enumerate() {
        for j in 0..cols {
            let one = maps.get(j).context(|| format!("{m} cascade map {j}"))?;
            let pic = render(&one, Style::for_method(*m), opts.percentile)?;
            grid.put(i as u32, j as u32, &upscale(&pic, s))?;
        }
    }
    let convs = cols - 1;
    let titles: Vec<String> = std::iter::once("trained".to_string())
        .chain((1..=convs).map(|k| format!("-conv{}", convs + 1 - k)))
        .collect();
    let rows: Vec<String> = report
        .cascade_maps
        .iter()
        .map(|(m, _)| m.to_string())
        .collect();
    Ok(annotate(
        &grid.into_image(),
        &titles,
        &rows,
        w as u32 * s,
        h as u32 * s,
        opts,
    ))
}

/// One curve: a label and its values, evenly spaced on `[0, 1]`.
pub type Curve = (String, Vec<f32>);

/// A panel of curves with its title.
pub type Panel = (String, Vec<Curve>);

/// An SVG of curves on `[0, 1] x [0, 1]`, drawn with plotters: one panel
/// per `(title, series)`, each series `(label, points evenly spaced on x)`,
/// the same colour for a label in every panel, and one legend beside the
/// panels. For the deletion and insertion curves.
///
/// # Errors
/// [`VizError::InvalidArgument`] if plotters cannot draw (it does not fail
/// on an SVG string in practice).
pub fn curves_svg(title: &str, x_label: &str, panels: &[Panel]) -> Result<String, VizError> {
    let mut svg = String::new();
    draw_curves(&mut svg, title, x_label, panels)
        .map_err(|e| VizError::InvalidArgument(format!("cannot draw `{title}`: {e}")))?;
    Ok(svg)
}

fn draw_curves(
    svg: &mut String,
    title: &str,
    x_label: &str,
    panels: &[Panel],
) -> Result<(), String> {
    use plotters::prelude::*;
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let (pw, legend_w) = (400u32, 260u32);
    let width = pw * panels.len().max(1) as u32 + legend_w;
    let root = SVGBackend::with_string(svg, (width, 340)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| text(&e))?;
    let root = root
        .titled(title, ("sans-serif", 16))
        .map_err(|e| text(&e))?;
    let (charts, legend) = root.split_horizontally(pw * panels.len().max(1) as u32);
    let colour = |k: usize| Palette99::pick(k).to_rgba();
    for (area, (name, series)) in charts
        .split_evenly((1, panels.len().max(1)))
        .iter()
        .zip(panels)
    {
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|e| text(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("class probability")
            .draw()
            .map_err(|e| text(&e))?;
        for (k, (_, ys)) in series.iter().enumerate() {
            let n = ys.len().max(2) - 1;
            let points = ys
                .iter()
                .enumerate()
                .map(|(i, &y)| (i as f64 / n as f64, f64::from(y.clamp(0.0, 1.0))));
            chart
                .draw_series(LineSeries::new(points, colour(k).stroke_width(2)))
                .map_err(|e| text(&e))?;
        }
    }
    // The legend, once, beside the panels (it would hide curves inside).
    let labels = panels.first().map(|p| p.1.as_slice()).unwrap_or_default();
    for (k, (label, _)) in labels.iter().enumerate() {
        let y = 50 + 22 * k as i32;
        legend
            .draw(&PathElement::new(
                vec![(8, y), (32, y)],
                colour(k).stroke_width(3),
            ))
            .map_err(|e| text(&e))?;
        legend
            .draw(&Text::new(label.clone(), (38, y - 7), ("sans-serif", 13)))
            .map_err(|e| text(&e))?;
    }
    root.present().map_err(|e| text(&e))?;
    Ok(())
}

/// Which part of a map a heat map or overlay shows (Captum's `sign`). The
/// map is first summed over its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Sign {
    /// Positive and negative evidence, on a diverging scale.
    All,
    /// Only the positive part (evidence for the target).
    Positive,
    /// Only the negative part (evidence against), as magnitudes.
    Negative,
    /// The magnitude `|v|`.
    #[default]
    Absolute,
}

impl Sign {
    /// `all`, `positive`, `negative` or `absolute`.
    pub fn name(self) -> &'static str {
        match self {
            Sign::All => "all",
            Sign::Positive => "positive",
            Sign::Negative => "negative",
            Sign::Absolute => "absolute",
        }
    }

    /// Every mode.
    pub const ALL: [Sign; 4] = [Sign::All, Sign::Positive, Sign::Negative, Sign::Absolute];
}

/// Colour scales for heat maps and overlays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Colormap {
    /// Black, red, yellow, white (the saliency maps' scale).
    #[default]
    Heat,
    /// The perceptually uniform dark-blue, green, yellow scale (viridis,
    /// from the colorous crate, as the next three).
    Viridis,
    /// Black, purple, orange, pale yellow (inferno).
    Inferno,
    /// Black, purple, pink, pale yellow (magma).
    Magma,
    /// Dark blue to yellow, readable with colour-vision deficiency (cividis).
    Cividis,
    /// Blue (negative), near-white (zero), red (positive), ColorBrewer's
    /// RdBu; the scale of [`Sign::All`].
    Diverging,
}

impl Colormap {
    /// `heat`, `viridis` or `diverging`.
    pub fn name(self) -> &'static str {
        match self {
            Colormap::Heat => "heat",
            Colormap::Viridis => "viridis",
            Colormap::Inferno => "inferno",
            Colormap::Magma => "magma",
            Colormap::Cividis => "cividis",
            Colormap::Diverging => "diverging",
        }
    }

    /// Every colour map.
    pub const ALL: [Colormap; 6] = [
        Colormap::Heat,
        Colormap::Viridis,
        Colormap::Inferno,
        Colormap::Magma,
        Colormap::Cividis,
        Colormap::Diverging,
    ];

    /// The colour of `t`: in `[0, 1]`, or in `[-1, 1]` for
    /// [`Colormap::Diverging`] (other maps take `|t|`).
    pub fn colour(self, t: f32) -> Rgb<u8> {
        let at = |g: colorous::Gradient, x: f32| {
            let c = g.eval_continuous(f64::from(x.clamp(0.0, 1.0)));
            Rgb([c.r, c.g, c.b])
        };
        let t = if t.is_finite() { t } else { 0.0 };
        match self {
            Colormap::Heat => heat_colour(t.abs()),
            Colormap::Viridis => at(colorous::VIRIDIS, t.abs()),
            Colormap::Inferno => at(colorous::INFERNO, t.abs()),
            Colormap::Magma => at(colorous::MAGMA, t.abs()),
            Colormap::Cividis => at(colorous::CIVIDIS, t.abs()),
            // RdBu runs from red (0) to blue (1): positive is red.
            Colormap::Diverging => at(colorous::RED_BLUE, (1.0 - t.clamp(-1.0, 1.0)) / 2.0),
        }
    }
}

/// How [`overlay`] and [`sign_map`] draw a map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlayOptions {
    /// Which part of the map.
    pub sign: Sign,
    /// The colour scale ([`Sign::All`] always uses [`Colormap::Diverging`]).
    pub colormap: Colormap,
    /// Opacity of the strongest attribution over the image (0..=1); weaker
    /// attributions are proportionally more transparent.
    pub alpha: f32,
    /// Percentile of the shown magnitudes at which the scale saturates.
    pub percentile: f32,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        Self {
            sign: Sign::Absolute,
            colormap: Colormap::Heat,
            alpha: 0.7,
            percentile: 99.0,
        }
    }
}

/// The channel sum of `map` `[C, H, W]` under `sign`, scaled so the
/// `percentile`-th percentile of the shown magnitudes is 1: values in
/// `[-1, 1]` for [`Sign::All`], `[0, 1]` otherwise, row-major.
fn signed_plane(
    map: &Tensor,
    sign: Sign,
    percentile_: f32,
) -> Result<(usize, usize, Vec<f32>), VizError> {
    let (c, h, w, v) = chw(map, "map")?;
    let plane = h * w;
    let sum: Vec<f32> = (0..plane)
        .map(|i| (0..c).map(|k| v[k * plane + i]).sum())
        .map(|s: f32| match sign {
            Sign::All => s,
            Sign::Positive => s.max(0.0),
            Sign::Negative => (-s).max(0.0),
            Sign::Absolute => s.abs(),
        })
        .collect();
    let shown: Vec<f32> = sum.iter().map(|x| x.abs()).filter(|&x| x > 0.0).collect();
    let clip = percentile(&shown, percentile_);
    let clip = if clip > 0.0 { clip } else { 1.0 };
    Ok((
        h,
        w,
        sum.iter().map(|x| (x / clip).clamp(-1.0, 1.0)).collect(),
    ))
}

/// A map `[C, H, W]` alone, summed over channels, in `opts`' sign mode and
/// colour map (alpha unused).
///
/// # Errors
/// [`VizError::BadTensor`] for another shape.
pub fn sign_map(map: &Tensor, opts: &OverlayOptions) -> Result<RgbImage, VizError> {
    let (h, w, t) = signed_plane(map, opts.sign, opts.percentile)?;
    let cmap = if opts.sign == Sign::All {
        Colormap::Diverging
    } else {
        opts.colormap
    };
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        cmap.colour(t[y as usize * w + x as usize])
    }))
}

/// `map` `[C', H, W]` over `image` `[C, H, W]` (same size; the image in grey,
/// min-max stretched): each pixel blends the image with the map's colour by
/// `alpha` times the pixel's scaled magnitude, so unimportant pixels show
/// the image.
///
/// # Errors
/// [`VizError::BadTensor`] for other shapes or sizes that differ.
pub fn overlay(image: &Tensor, map: &Tensor, opts: &OverlayOptions) -> Result<RgbImage, VizError> {
    let base = image_rgb(image)?;
    let (h, w, t) = signed_plane(map, opts.sign, opts.percentile)?;
    if (base.width() as usize, base.height() as usize) != (w, h) {
        return Err(VizError::BadTensor {
            what: "map to overlay".into(),
            expected: format!("the image's size {}x{}", base.height(), base.width()),
            got: map.dims().to_vec(),
        });
    }
    let cmap = if opts.sign == Sign::All {
        Colormap::Diverging
    } else {
        opts.colormap
    };
    let alpha = opts.alpha.clamp(0.0, 1.0);
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let p = base.get_pixel(x, y).0;
        let grey = 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
        let v = t[y as usize * w + x as usize];
        let a = alpha * v.abs();
        let c = cmap.colour(v).0;
        Rgb(std::array::from_fn(|k| {
            ((1.0 - a) * grey + a * c[k] as f32)
                .round()
                .clamp(0.0, 255.0) as u8
        }))
    }))
}
