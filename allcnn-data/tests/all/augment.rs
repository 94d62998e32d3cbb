//! Hand-computed 4x4 cases and reproducibility of the augmentation.

use allcnn_data::{
    augment::crop_u8, augment::flip_translate, augment::flip_u8, augment::resize_u8,
    augment::AugmentParams, Augmentation, Image,
};

/// 1 channel, 4x4, values 0..16 row-major.
fn grid() -> Vec<f32> {
    (0..16).map(|v| v as f32).collect()
}

fn run(flip: bool, dx: i32, dy: i32) -> Vec<f32> {
    let mut out = vec![-1.0; 16];
    flip_translate(&grid(), 1, 4, 4, flip, dx, dy, &mut out);
    out
}

#[test]
fn flip_4x4() {
    #[rustfmt::skip]
    let want = [3., 2., 1., 0., 7., 6., 5., 4., 11., 10., 9., 8., 15., 14., 13., 12.];
    assert_eq!(run(true, 0, 0), want);
    assert_eq!(run(false, 0, 0), grid());
}

#[test]
fn translate_4x4_zero_fill() {
    // Content moves right by 1: first column filled with 0.
    #[rustfmt::skip]
    let right = [0., 0., 1., 2., 0., 4., 5., 6., 0., 8., 9., 10., 0., 12., 13., 14.];
    assert_eq!(run(false, 1, 0), right);
    // Left by 1 and down by 2.
    #[rustfmt::skip]
    let left_down = [0., 0., 0., 0., 0., 0., 0., 0., 1., 2., 3., 0., 5., 6., 7., 0.];
    assert_eq!(run(false, -1, 2), left_down);
    // Flip, then move right by 1.
    #[rustfmt::skip]
    let flip_right = [0., 3., 2., 1., 0., 7., 6., 5., 0., 11., 10., 9., 0., 15., 14., 13.];
    assert_eq!(run(true, 1, 0), flip_right);
    // Shifts of the whole side leave nothing.
    assert!(run(false, 4, 0).iter().all(|&v| v == 0.0));
    assert!(run(true, 0, -5).iter().all(|&v| v == 0.0));
}

#[test]
fn translate_per_channel() {
    let src: Vec<f32> = (0..32).map(|v| v as f32).collect(); // 2 channels of 4x4
    let mut out = vec![0.0; 32];
    flip_translate(&src, 2, 4, 4, false, 0, 1, &mut out);
    assert_eq!(&out[16..20], &[0.0; 4]);
    assert_eq!(&out[20..24], &[16., 17., 18., 19.]);
}

#[test]
fn u8_flip_crop_resize() {
    let img = Image::from_chw(3, 4, 4, (0..48).collect()).unwrap();
    let f = flip_u8(&img);
    assert_eq!(&f.as_chw()[..4], &[3, 2, 1, 0]);
    assert_eq!(&f.as_chw()[44..], &[47, 46, 45, 44]);
    let c = crop_u8(&img, 1, 2, 2, 2).unwrap();
    assert_eq!(c.as_chw(), &[6, 7, 10, 11, 22, 23, 26, 27, 38, 39, 42, 43]);
    assert!(crop_u8(&img, 3, 3, 2, 2).is_err());
    let r = resize_u8(&img, 8, 6).unwrap();
    assert_eq!((r.channels(), r.height(), r.width()), (3, 8, 6));
    // A constant image stays constant.
    let flat = Image::from_chw(3, 5, 7, vec![77; 105]).unwrap();
    assert!(resize_u8(&flat, 3, 4)
        .unwrap()
        .as_chw()
        .iter()
        .all(|&v| v == 77));
}

#[test]
fn imagenet_policies() {
    let train = Augmentation::imagenet_train();
    let p = train.sample(1, 0, 5, 300, 400);
    assert_eq!(p.resize_to, Some((256, 341)));
    let (y, x, side) = p.crop.unwrap();
    assert_eq!(side, 224);
    assert!(y <= 32 && x <= 117);
    let img = Image::from_chw(3, 300, 400, vec![9; 3 * 300 * 400]).unwrap();
    let out = train.apply_u8(&p, img.clone()).unwrap();
    assert_eq!((out.height(), out.width()), (224, 224));

    let eval = Augmentation::imagenet_eval();
    let p = eval.sample(1, 0, 5, 300, 400);
    assert_eq!(p.crop, Some((16, 58, 224)));
    assert_eq!(
        p,
        eval.sample(2, 9, 7, 300, 400),
        "centre crop is deterministic"
    );
    assert!(Augmentation::CenterCrop {
        resize: 100,
        crop: 224
    }
    .validate()
    .is_err());
}

#[test]
fn sampling_is_keyed_by_seed_epoch_index() {
    let a = Augmentation::paper_cifar();
    let draw = |s, e, i| a.sample(s, e, i, 32, 32);
    assert_eq!(draw(1, 2, 3), draw(1, 2, 3));
    let all: Vec<AugmentParams> = (0..200).map(|i| draw(1, 0, i)).collect();
    assert!(all.iter().any(|p| p.flip) && all.iter().any(|p| !p.flip));
    assert!(all.iter().all(|p| p.dx.abs() <= 5 && p.dy.abs() <= 5));
    assert!(all.iter().any(|p| p.dx == 5) && all.iter().any(|p| p.dy == -5));
    // Another epoch or seed draws other parameters.
    let other: Vec<AugmentParams> = (0..200).map(|i| draw(1, 1, i)).collect();
    assert_ne!(all, other);
    assert_eq!(
        Augmentation::None.sample(1, 2, 3, 32, 32),
        AugmentParams::default()
    );
}
