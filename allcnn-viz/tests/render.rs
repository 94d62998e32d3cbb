//! Rendering on its own: colour scales, grids and PNG files.

use allcnn_viz::render::{self, Grid, RenderOptions, Style};
use allcnn_viz::Method;
use candle_core::{Device, Tensor};
use image::Rgb;

fn t(v: Vec<f32>, shape: (usize, usize, usize)) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn percentile_is_nearest_rank() {
    let v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
    assert_eq!(render::percentile(&v, 99.0), 99.0);
    assert_eq!(render::percentile(&v, 100.0), 100.0);
    assert_eq!(render::percentile(&v, 0.0), 1.0);
    assert_eq!(render::percentile(&[], 50.0), 0.0);
}

#[test]
fn signed_maps_put_zero_at_mid_grey_and_clip_symmetrically() {
    // |v| = 0, 1, 2, 4: the 75th percentile is 2, so +-2 and beyond saturate.
    let img = render::signed_map(&t(vec![0.0, 1.0, -2.0, 4.0], (1, 2, 2)), 75.0).unwrap();
    assert_eq!(*img.get_pixel(0, 0), Rgb([128, 128, 128]));
    assert_eq!(*img.get_pixel(1, 0), Rgb([191, 191, 191]));
    assert_eq!(*img.get_pixel(0, 1), Rgb([0, 0, 0]));
    assert_eq!(*img.get_pixel(1, 1), Rgb([255, 255, 255]));
    // An all-zero map is uniformly grey; colour channels stay separate.
    let img = render::signed_map(&t(vec![1.0, 0.0, -1.0], (3, 1, 1)), 100.0).unwrap();
    assert_eq!(*img.get_pixel(0, 0), Rgb([255, 128, 0]));
    let img = render::signed_map(&t(vec![0.0; 4], (1, 2, 2)), 99.5).unwrap();
    assert!(img.pixels().all(|p| *p == Rgb([128, 128, 128])));
}

#[test]
fn heat_maps_sum_absolute_channels() {
    assert_eq!(render::heat_colour(0.0), Rgb([0, 0, 0]));
    assert_eq!(render::heat_colour(1.0), Rgb([255, 255, 255]));
    assert_eq!(render::heat_colour(1.0 / 3.0), Rgb([255, 0, 0]));
    // Pixel sums 0 and 3 (= the 100th percentile).
    let img = render::heat_map(&t(vec![0.0, 1.0, 0.0, -1.0, 0.0, 1.0], (3, 1, 2)), 100.0).unwrap();
    assert_eq!(*img.get_pixel(0, 0), Rgb([0, 0, 0]));
    assert_eq!(*img.get_pixel(1, 0), Rgb([255, 255, 255]));
    assert_eq!(Style::for_method(Method::Saliency), Style::Heat);
    assert_eq!(Style::for_method(Method::GuidedBackprop), Style::Signed);
}

#[test]
fn images_are_stretched_and_bad_shapes_rejected() {
    let img = render::image_rgb(&t(vec![-1.0, 1.0], (1, 1, 2))).unwrap();
    assert_eq!(*img.get_pixel(0, 0), Rgb([0, 0, 0]));
    assert_eq!(*img.get_pixel(1, 0), Rgb([255, 255, 255]));
    assert!(render::image_rgb(&t(vec![0.0; 8], (2, 2, 2))).is_err());
    assert!(render::signed_map(
        &Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
        99.0
    )
    .is_err());
}

#[test]
fn grids_have_spacing() {
    // A figure too large to allocate is refused first (64 channels at
    // scale 64 asked for gigabytes; sides that overflowed u32 wrapped).
    for (rows, cols, cell) in [(64, 26, 32 * 64), (100_000, 100_000, 4_000_000)] {
        let err = Grid::new(rows, cols, cell, cell, 2, [0, 0, 0]).unwrap_err();
        assert!(
            err.to_string().contains("over the limit of 100 megapixels"),
            "{err}"
        );
    }
    let mut g = Grid::new(2, 3, 4, 5, 2, [255, 0, 255]).unwrap();
    let cell = image::RgbImage::from_pixel(4, 5, Rgb([1, 2, 3]));
    g.put(1, 2, &cell).unwrap();
    assert!(g.put(2, 0, &cell).is_err());
    let img = g.into_image();
    assert_eq!(img.dimensions(), (3 * 4 + 4 * 2, 2 * 5 + 3 * 2));
    assert_eq!(*img.get_pixel(2 + 2 * 6, 2 + 7), Rgb([1, 2, 3]));
    assert_eq!(*img.get_pixel(0, 0), Rgb([255, 0, 255]));
    assert_eq!(render::upscale(&cell, 3).dimensions(), (12, 15));
}

#[test]
fn writes_one_png_per_image_and_a_comparison_grid() {
    let dev = Device::Cpu;
    let input = Tensor::randn(0f32, 1.0, (2, 3, 6, 5), &dev).unwrap();
    let maps = Tensor::randn(0f32, 1.0, (2, 3, 6, 5), &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = RenderOptions {
        scale: 2,
        ..Default::default()
    };
    let names = ["gb-cat".to_string(), "gb-dog".to_string()];
    let out = dir.path().join("out");
    let paths = render::write_maps(&maps, Style::Signed, &opts, &out, &names).unwrap();
    assert_eq!(paths.len(), 2);
    assert!(paths[1].ends_with("out/gb-dog.png"));
    let err = render::write_maps(&maps, Style::Signed, &opts, &out, &names[..1]).unwrap_err();
    assert!(err.to_string().contains("1 file names"), "{err}");
    let back = image::open(&paths[0]).unwrap();
    assert_eq!((back.width(), back.height()), (10, 12));

    let all = vec![
        (Method::Gradient, maps.clone()),
        (Method::Saliency, maps.abs().unwrap()),
    ];
    let grid = render::comparison_grid(&input, &all, &opts).unwrap();
    assert_eq!(grid.dimensions(), (3 * 10 + 4 * 2, 2 * 12 + 3 * 2));
    let bad = vec![(Method::Gradient, maps.narrow(0, 0, 1).unwrap())];
    assert!(render::comparison_grid(&input, &bad, &opts).is_err());
    let path = dir.path().join("comparison.png");
    render::write_png(&grid, &path).unwrap();
    assert!(path.is_file());
}

#[test]
fn text_is_drawn_inside_its_box_only() {
    let mut img = image::RgbImage::from_pixel(40, 20, Rgb([255, 255, 255]));
    render::draw_text(&mut img, 3, 2, "T", [0, 0, 0], 2);
    assert_eq!(render::text_width("T", 2), 16);
    // font8x8's T: the top bar spans 6 of the 8 columns in its first row.
    let ink: Vec<(u32, u32)> = img
        .enumerate_pixels()
        .filter(|(_, _, p)| p.0 == [0, 0, 0])
        .map(|(x, y, _)| (x, y))
        .collect();
    assert!(!ink.is_empty());
    assert!(ink
        .iter()
        .all(|&(x, y)| (3..19).contains(&x) && (2..18).contains(&y)));
    // Text past the edge is clipped, not a panic.
    render::draw_text(&mut img, 35, 15, "clipped", [0, 0, 0], 1);
}

#[test]
fn annotate_adds_title_and_label_bands() {
    let opts = RenderOptions::default();
    let grid = image::RgbImage::from_pixel(
        2 * 32 + 3 * opts.spacing,
        32 + 2 * opts.spacing,
        Rgb([9, 9, 9]),
    );
    let out = render::annotate(
        &grid,
        &["input".into(), "gradient".into()],
        &["cat 63%".into()],
        32,
        32,
        &opts,
    );
    let left = render::text_width("cat 63%", 1) + 2 * opts.spacing.max(2);
    assert_eq!(out.width(), grid.width() + left);
    assert!(out.height() > grid.height());
    let top = out.height() - grid.height();
    // The grid is copied unchanged to the bottom right.
    assert_eq!(*out.get_pixel(left, top), Rgb([9, 9, 9]));
    // Ink in the title band and in the label band.
    let dark = |x0: u32, x1: u32, y0: u32, y1: u32| {
        (y0..y1).any(|y| (x0..x1).any(|x| out.get_pixel(x, y).0[0] < 100))
    };
    assert!(dark(left, out.width(), 0, top));
    assert!(dark(0, left, top, out.height()));
    // No lists, no bands.
    let same = render::annotate(&grid, &[], &[], 32, 32, &opts);
    assert_eq!(same.dimensions(), grid.dimensions());
}

#[test]
fn sign_modes_colour_maps_and_overlays() {
    use allcnn_viz::render::{overlay, sign_map, Colormap, OverlayOptions, Sign};
    let dev = candle_core::Device::Cpu;
    // Two pixels, three channels summing to 2 and -1.
    let map = candle_core::Tensor::from_vec(vec![1f32, -1.0, 1.0, 0.0, 0.0, 0.0], (3, 1, 2), &dev)
        .unwrap();
    let px = |img: &image::RgbImage, x: u32| img.get_pixel(x, 0).0;
    let opts = |sign| OverlayOptions {
        sign,
        colormap: Colormap::Heat,
        alpha: 1.0,
        percentile: 100.0,
    };
    // Positive: 2 saturates (white), -1 is hidden (black).
    let img = sign_map(&map, &opts(Sign::Positive)).unwrap();
    assert_eq!((px(&img, 0), px(&img, 1)), ([255, 255, 255], [0, 0, 0]));
    // Negative: the other way round (1 is the largest shown magnitude).
    let img = sign_map(&map, &opts(Sign::Negative)).unwrap();
    assert_eq!((px(&img, 0), px(&img, 1)), ([0, 0, 0], [255, 255, 255]));
    // Absolute: 2 -> 1 (white), 1 -> 0.5 on black-red-yellow-white.
    let img = sign_map(&map, &opts(Sign::Absolute)).unwrap();
    assert_eq!((px(&img, 0), px(&img, 1)), ([255, 255, 255], [255, 128, 0]));
    // All: diverging (RdBu), +2 -> the red end, -1 -> half-way to blue.
    let img = sign_map(&map, &opts(Sign::All)).unwrap();
    let (pos, neg) = (px(&img, 0), px(&img, 1));
    assert_eq!(pos, Colormap::Diverging.colour(1.0).0);
    assert_eq!(neg, Colormap::Diverging.colour(-0.5).0);
    assert!(pos[0] > 2 * pos[2] && neg[2] > neg[0], "{pos:?} {neg:?}");
    let zero = Colormap::Diverging.colour(0.0).0;
    assert!(
        zero.iter().all(|&c| c > 235),
        "zero is near white: {zero:?}"
    );
    // Viridis runs from dark purple to yellow.
    assert_eq!(Colormap::Viridis.colour(0.0).0, [68, 1, 84]);
    assert_eq!(Colormap::Viridis.colour(1.0).0, [253, 231, 37]);
    // Every sequential map darkest at 0, lightest at 1, and NaN-safe.
    let luma = |c: [u8; 3]| 299 * u32::from(c[0]) + 587 * u32::from(c[1]) + 114 * u32::from(c[2]);
    for m in Colormap::ALL
        .into_iter()
        .filter(|m| *m != Colormap::Diverging)
    {
        let (lo, mid, hi) = (m.colour(0.0).0, m.colour(0.5).0, m.colour(1.0).0);
        assert!(luma(lo) < luma(mid) && luma(mid) < luma(hi), "{m:?}");
        assert_eq!(m.colour(f32::NAN), m.colour(0.0), "{m:?}");
    }
    // Overlay: alpha 1 at the strongest pixel shows its colour; where the
    // map is zero (or alpha is 0) the image shows, in grey.
    let image = candle_core::Tensor::from_vec(vec![0f32, 1.0, 0.0, 1.0, 0.0, 1.0], (3, 1, 2), &dev)
        .unwrap();
    let o = overlay(&image, &map, &opts(Sign::Positive)).unwrap();
    assert_eq!(px(&o, 0), [255, 255, 255]);
    assert_eq!(
        px(&o, 1),
        [255, 255, 255],
        "pixel 1 is white in the image and hidden in the map"
    );
    let none = overlay(
        &image,
        &map,
        &OverlayOptions {
            alpha: 0.0,
            ..opts(Sign::All)
        },
    )
    .unwrap();
    assert_eq!((px(&none, 0), px(&none, 1)), ([0, 0, 0], [255, 255, 255]));
    let wrong = candle_core::Tensor::zeros((3, 2, 2), candle_core::DType::F32, &dev).unwrap();
    assert!(overlay(&image, &wrong, &opts(Sign::All)).is_err());
}

#[test]
fn patch_outside_its_image_is_neutral_grey_whatever_the_padding_value() {
    use allcnn_viz::Window;
    // A 3x3 patch whose window starts one row above and one column left of
    // a 4x4 image: its first row and first column lie outside. The values
    // there (1000, as a preprocessing could make of zero padding) must
    // neither show nor stretch the inside, which runs from -1 to 1.
    let v: Vec<f32> = vec![
        1000.0, 1000.0, 1000.0, //
        1000.0, -1.0, 0.0, //
        1000.0, 0.5, 1.0,
    ];
    let patch = Tensor::from_vec(v, (1, 3, 3), &Device::Cpu).unwrap();
    let window = Window {
        y0: -1,
        x0: -1,
        size: 3,
    };
    let img = render::patch_rgb(&patch, window, (4, 4)).unwrap();
    for (x, y) in [(0, 0), (1, 0), (2, 0), (0, 1), (0, 2)] {
        assert_eq!(*img.get_pixel(x, y), render::OUTSIDE, "({x}, {y})");
    }
    assert_eq!(
        img.get_pixel(1, 1).0,
        [0, 0, 0],
        "the inside minimum is black"
    );
    assert_eq!(img.get_pixel(2, 2).0, [255, 255, 255], "its maximum white");
    assert!(
        (126..=129).contains(&img.get_pixel(2, 1).0[0]),
        "0 is mid-way"
    );
    // A window inside the image draws no grey.
    let inside = Window {
        y0: 0,
        x0: 0,
        size: 3,
    };
    let img = render::patch_rgb(&patch, inside, (4, 4)).unwrap();
    assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
}

#[test]
fn upscale_repeats_each_pixel_and_grid_cells_clip() {
    let img = image::RgbImage::from_fn(2, 1, |x, _| Rgb([100 * x as u8, 7, 9]));
    let big = render::upscale(&img, 3);
    assert_eq!(big.dimensions(), (6, 3));
    for (x, y, p) in big.enumerate_pixels() {
        assert_eq!(*p, *img.get_pixel(x / 3, y / 3), "({x}, {y})");
    }
    // A picture larger than its cell is clipped to the cell.
    let mut grid = Grid::new(1, 2, 2, 2, 1, [0, 0, 0]).unwrap();
    grid.put(0, 0, &big).unwrap();
    let out = grid.into_image();
    assert_eq!(*out.get_pixel(1, 1), *big.get_pixel(0, 0));
    assert_eq!(*out.get_pixel(3, 1), Rgb([0, 0, 0]), "the spacing stays");
    assert_eq!(*out.get_pixel(4, 1), Rgb([0, 0, 0]), "the next cell stays");
}

#[test]
fn curves_svg_has_titled_panels_axes_and_one_legend() {
    let series = |shift: f32| {
        vec![
            (
                "gradient (AUC 0.600)".to_string(),
                vec![1.0, 0.5 + shift, 0.1],
            ),
            ("occlusion (AUC 0.200)".to_string(), vec![1.0, 0.2, 0.0]),
        ]
    };
    let svg = render::curves_svg(
        "all-cnn-c: deletion and insertion",
        "fraction of pixels",
        &[
            ("deletion".to_string(), series(0.0)),
            ("insertion".to_string(), series(0.1)),
        ],
    )
    .unwrap();
    assert!(svg.starts_with("<svg"));
    let count = |t: &str| svg.matches(t).count();
    for t in ["all-cnn-c: deletion and insertion", "deletion", "insertion"] {
        assert!(count(t) >= 1, "no `{t}`");
    }
    assert_eq!(count("fraction of pixels"), 2, "an x label per panel");
    assert_eq!(count("class probability"), 2, "a y label per panel");
    assert_eq!(
        count("gradient (AUC 0.600)"),
        1,
        "one legend for both panels"
    );
    assert_eq!(count("occlusion (AUC 0.200)"), 1);
}
