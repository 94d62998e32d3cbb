//! The GEMM convolution against candle's reference `conv2d` (forward, input
//! gradient and weight gradient) over every geometry the paper's networks use.

use allcnn_models::kernels::conv::conv2d;
use allcnn_testing::values;
use candle_core::{Device, Tensor, Var};

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let s = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / s.max(1e-12)
}

/// A CPU variable of `shape` filled with [`values`] from `seed`.
fn var(shape: &[usize], seed: u64) -> Var {
    let n = shape.iter().product();
    Var::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()
}

/// The gradients of `sum(y * up)`: `up` as the upstream gradient of `y`.
fn backprop(y: &Tensor, up: &Tensor) -> candle_core::backprop::GradStore {
    y.mul(up).unwrap().sum_all().unwrap().backward().unwrap()
}

/// Runs `f` on a fresh rayon pool of `threads` threads.
fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn matches_candle_conv_forward_and_backward() {
    // (n, cin, side, cout, k, stride, pad): 3x3 same, 3x3/2, valid 3x3,
    // 1x1, 1x1/2, 5x5, 11x11/4, odd sizes, batch smaller and larger than
    // the thread count and the weight-gradient chunk.
    let cases = [
        (2, 3, 8, 5, 3, 1, 1),
        (3, 4, 9, 6, 3, 2, 1),
        (1, 4, 7, 3, 3, 1, 0),
        (4, 6, 6, 5, 1, 1, 0),
        (2, 6, 7, 4, 1, 2, 0),
        (2, 3, 10, 4, 5, 1, 2),
        (2, 3, 27, 4, 11, 4, 0),
        (11, 2, 5, 3, 3, 2, 1),
        (9, 3, 6, 2, 3, 2, 0),
        // Padded kernels wider than the map (D34 of issue 15: a panic).
        (2, 3, 1, 4, 3, 1, 1),
        (1, 2, 2, 3, 5, 1, 2),
        (2, 2, 1, 3, 3, 2, 1),
    ];
    for (i, &(n, cin, side, cout, k, stride, pad)) in cases.iter().enumerate() {
        let dev = Device::Cpu;
        let x = var(&[n, cin, side, side], i as u64);
        let w = var(&[cout, cin, k, k], 100 + i as u64);
        let ours = conv2d(&x, &w, stride, pad).unwrap();
        let theirs = x.conv2d(&w, pad, stride, 1, 1).unwrap();
        assert_eq!(ours.dims(), theirs.dims(), "case {i}");
        assert!(
            rel(&ours, &theirs) < 1e-5,
            "case {i} forward: {}",
            rel(&ours, &theirs)
        );
        let up =
            Tensor::from_vec(values(ours.elem_count(), 200 + i as u64), ours.dims(), &dev).unwrap();
        let g1 = backprop(&ours, &up);
        let g2 = backprop(&theirs, &up);
        for (name, v) in [("input", &x), ("weight", &w)] {
            let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(rel(a, b) < 1e-5, "case {i} {name} grad: {}", rel(a, b));
        }
    }
}

#[test]
fn input_gradient_is_skipped_for_a_plain_input() {
    let dev = Device::Cpu;
    let x = Tensor::from_vec(values(2 * 3 * 8 * 8, 1), (2, 3, 8, 8), &dev).unwrap();
    let w = var(&[4, 3, 3, 3], 2);
    let grads = conv2d(&x, &w, 1, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    assert!(grads.get(&w).is_some());
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let x = var(&[20, 4, 8, 8], 3);
    let w = var(&[5, 4, 3, 3], 4);
    let run = |threads: usize| {
        with_threads(threads, || {
            let g = conv2d(&x, &w, 1, 1)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            g.get(&w)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn bias_add_matches_broadcast_add_with_gradients() {
    use allcnn_models::kernels::conv::add_bias;
    let dev = Device::Cpu;
    let y = var(&[3, 5, 4, 6], 7);
    let b = Var::from_vec(values(5, 8), 5, &dev).unwrap();
    let ours = add_bias(&y, &b).unwrap();
    let theirs = y.broadcast_add(&b.reshape((1, 5, 1, 1)).unwrap()).unwrap();
    assert!(rel(&ours, &theirs) < 1e-6);
    let up = Tensor::from_vec(values(ours.elem_count(), 9), ours.dims(), &dev).unwrap();
    let g1 = backprop(&ours, &up);
    let g2 = backprop(&theirs, &up);
    for v in [&y, &b] {
        assert!(rel(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-5);
    }
    assert!(add_bias(
        &y,
        &Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap()
    )
    .is_err());
}

/// Forward output and both gradients of `conv2d_with(.., algorithm)` for a
/// fixed upstream gradient.
fn passes(
    x: &Var,
    w: &Var,
    (stride, pad): (usize, usize),
    algorithm: allcnn_models::kernels::conv::Algorithm,
) -> (Tensor, Tensor, Tensor) {
    let y = allcnn_models::kernels::conv::conv2d_with(x, w, stride, pad, algorithm).unwrap();
    let up = Tensor::from_vec(values(y.elem_count(), 77), y.dims(), x.device()).unwrap();
    let g = backprop(&y, &up);
    let (dx, dw) = (g.get(x).unwrap().clone(), g.get(w).unwrap().clone());
    (y, dx, dw)
}

/// The relative error of each pass of `got` against `want` (outputs of
/// [`passes`] of the same geometry).
fn pass_errors(
    got: &(Tensor, Tensor, Tensor),
    want: &(Tensor, Tensor, Tensor),
) -> [(&'static str, f32); 3] {
    assert_eq!(got.0.dims(), want.0.dims());
    [
        ("forward", rel(&got.0, &want.0)),
        ("input grad", rel(&got.1, &want.1)),
        ("weight grad", rel(&got.2, &want.2)),
    ]
}

#[test]
fn winograd_matches_im2col_in_all_three_passes() {
    use allcnn_models::kernels::conv::Algorithm;
    // (n, cin, side, cout, pad): All-CNN-C's 3x3 stride-1 layers (conv2,
    // conv4/5 at a smaller batch, conv7 unpadded), odd sizes (partial
    // tiles), padding 2, and a batch spanning several image chunks.
    let cases = [
        (2, 96, 32, 96, 1),
        (3, 96, 16, 192, 1),
        (5, 192, 8, 192, 0),
        (2, 16, 7, 20, 1),
        (3, 17, 5, 16, 0),
        (2, 16, 5, 18, 2),
        (70, 16, 8, 16, 1),
        (2, 4, 1, 5, 1),
        (2, 4, 2, 5, 1),
    ];
    for (i, &(n, cin, side, cout, pad)) in cases.iter().enumerate() {
        let x = var(&[n, cin, side, side], 300 + i as u64);
        let w = var(&[cout, cin, 3, 3], 400 + i as u64);
        let want = passes(&x, &w, (1, pad), Algorithm::Im2col);
        // F(4x4, 3x3) rounds more (constants 4, 5, 8, 1/6, 1/24).
        for (algorithm, tol) in [(Algorithm::Winograd, 1e-5), (Algorithm::WinogradF4, 1e-4)] {
            let got = passes(&x, &w, (1, pad), algorithm);
            for (name, e) in pass_errors(&got, &want) {
                assert!(e < tol, "{algorithm:?} case {i} {name}: rel err {e}");
            }
        }
    }
}

#[test]
fn winograd_results_do_not_depend_on_the_thread_count() {
    use allcnn_models::kernels::conv::Algorithm;
    let x = var(&[70, 16, 8, 8], 5);
    let w = var(&[16, 16, 3, 3], 6);
    for algorithm in [Algorithm::Winograd, Algorithm::WinogradF4] {
        let run = |threads: usize| {
            with_threads(threads, || {
                let (y, dx, dw) = passes(&x, &w, (1, 1), algorithm);
                [y, dx, dw].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            })
        };
        assert_eq!(run(1), run(3), "{algorithm:?}");
    }
}

#[test]
fn fused_conv_bias_relu_matches_the_composition() {
    use allcnn_models::kernels::conv::{add_bias, conv2d_fused, conv2d_with, Algorithm};
    let dev = Device::Cpu;
    // A Winograd-eligible and an im2col-only geometry (stride 2).
    for (i, &(n, cin, side, cout, stride)) in
        [(3, 16, 8, 16, 1), (2, 5, 9, 7, 2)].iter().enumerate()
    {
        let x = var(&[n, cin, side, side], 500 + i as u64);
        let w = var(&[cout, cin, 3, 3], 600 + i as u64);
        let b = Var::from_vec(values(cout, 700 + i as u64), cout, &dev).unwrap();
        for algorithm in [
            Algorithm::Im2col,
            Algorithm::Winograd,
            Algorithm::WinogradBf16,
            Algorithm::WinogradF4,
        ] {
            for relu in [false, true] {
                let ours = conv2d_fused(&x, &w, &b, stride, 1, algorithm, relu).unwrap();
                let pre =
                    add_bias(&conv2d_with(&x, &w, stride, 1, algorithm).unwrap(), &b).unwrap();
                let theirs = if relu { pre.relu().unwrap() } else { pre };
                let what = format!("case {i} {algorithm:?} relu={relu}");
                assert!(rel(&ours, &theirs) < 1e-6, "{what}: forward");
                if relu {
                    // The mask matters: about half the outputs are rectified.
                    let zeros = ours.eq(0f64).unwrap().to_dtype(candle_core::DType::F32);
                    let frac = zeros
                        .unwrap()
                        .mean_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!((0.2..0.8).contains(&frac), "{what}: {frac} rectified");
                }
                let up = Tensor::from_vec(values(ours.elem_count(), 9), ours.dims(), &dev).unwrap();
                let (g1, g2) = (backprop(&ours, &up), backprop(&theirs, &up));
                for (name, v) in [("input", &x), ("weight", &w), ("bias", &b)] {
                    let e = rel(g1.get(v).unwrap(), g2.get(v).unwrap());
                    assert!(e < 1e-5, "{what}: {name} grad rel err {e}");
                }
            }
        }
    }
    let bad_bias = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
    let x = Tensor::zeros((1, 2, 4, 4), candle_core::DType::F32, &dev).unwrap();
    let w = Tensor::zeros((4, 2, 3, 3), candle_core::DType::F32, &dev).unwrap();
    let err = conv2d_fused(&x, &w, &bad_bias, 1, 1, Algorithm::Im2col, true).unwrap_err();
    assert!(err.to_string().contains("bias [3]"), "{err}");
}

#[test]
fn winograd_bf16_is_within_bf16_rounding_of_f32_in_all_three_passes() {
    use allcnn_models::kernels::conv::Algorithm;
    // All-CNN-C's Winograd layers, a partial tile, and a batch of many
    // chunks (the GEMMs then run one per thread instead of split 16 ways).
    let cases = [
        (2, 96, 32, 96, 1),
        (3, 96, 16, 192, 1),
        (5, 192, 8, 192, 0),
        (2, 16, 7, 20, 1),
        (70, 16, 8, 16, 1),
    ];
    for (i, &(n, cin, side, cout, pad)) in cases.iter().enumerate() {
        let x = var(&[n, cin, side, side], 800 + i as u64);
        let w = var(&[cout, cin, 3, 3], 900 + i as u64);
        let got = passes(&x, &w, (1, pad), Algorithm::WinogradBf16);
        let want = passes(&x, &w, (1, pad), Algorithm::Im2col);
        for (name, e) in pass_errors(&got, &want) {
            eprintln!("case {i} {name}: rel err {e:.2e}");
            // bf16 operands: visibly not f32, and within the documented 1e-2.
            assert!(e < 1e-2, "case {i} {name}: rel err {e}");
            assert!(e > 1e-6, "case {i} {name}: rel err {e}: bf16 did not run");
        }
    }
}

#[test]
fn bf16_gemms_run_in_every_other_geometry_within_bf16_rounding() {
    use allcnn_models::kernels::conv::Algorithm;
    // (n, cin, side, cout, k, stride, pad): All-CNN-C's first layer (3 input
    // channels: not Winograd-eligible), its strided layers conv3/conv6, its
    // 1x1 layers conv8/conv9, and odd sizes with a chunk boundary (n = 9).
    let cases = [
        (2, 3, 32, 96, 3, 1, 1),
        (2, 96, 32, 96, 3, 2, 1),
        (3, 192, 16, 192, 3, 2, 1),
        (2, 192, 6, 192, 1, 1, 0),
        (2, 192, 6, 10, 1, 1, 0),
        (9, 5, 9, 7, 3, 2, 1),
        (2, 7, 5, 13, 5, 1, 2),
    ];
    for (i, &(n, cin, side, cout, k, stride, pad)) in cases.iter().enumerate() {
        let x = var(&[n, cin, side, side], 1000 + i as u64);
        let w = var(&[cout, cin, k, k], 1100 + i as u64);
        let got = passes(&x, &w, (stride, pad), Algorithm::WinogradBf16);
        let want = passes(&x, &w, (stride, pad), Algorithm::Im2col);
        for (name, e) in pass_errors(&got, &want) {
            eprintln!("case {i} {name}: rel err {e:.2e}");
            assert!(e < 1e-2, "case {i} {name}: rel err {e}");
            assert!(e > 1e-6, "case {i} {name}: rel err {e}: bf16 did not run");
        }
    }
}

#[test]
fn bf16_im2col_results_do_not_depend_on_the_thread_count() {
    use allcnn_models::kernels::conv::Algorithm;
    // 10 images: two weight-gradient chunks; a strided and a 1x1 layer.
    for (k, stride, pad) in [(3, 2, 1), (1, 1, 0)] {
        let x = var(&[10, 24, 8, 8], 7);
        let w = var(&[20, 24, k, k], 8);
        let run = |threads: usize| {
            with_threads(threads, || {
                let (y, dx, dw) = passes(&x, &w, (stride, pad), Algorithm::WinogradBf16);
                [y, dx, dw].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            })
        };
        assert_eq!(run(1), run(3), "k {k} stride {stride}");
    }
}

#[test]
fn winograd_bf16_results_do_not_depend_on_the_thread_count() {
    use allcnn_models::kernels::conv::Algorithm;
    // 6 images of 16x16 (4 per chunk): two chunks, fewer than three threads.
    let x = var(&[6, 32, 16, 16], 5);
    let w = var(&[32, 32, 3, 3], 6);
    let run = |threads: usize| {
        with_threads(threads, || {
            let (y, dx, dw) = passes(&x, &w, (1, 1), Algorithm::WinogradBf16);
            [y, dx, dw].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
    };
    assert_eq!(run(1), run(3));
}

/// The switch CI's second pass sets (`ALLCNN_SIMD=portable`) takes effect:
/// that pass tests the portable code only if no wide path is left on.
#[test]
fn the_portable_switch_turns_every_wide_path_off() {
    use allcnn_models::kernels::{conv, simd_description};
    let portable =
        std::env::var("ALLCNN_SIMD").is_ok_and(|v| v.trim().eq_ignore_ascii_case("portable"));
    if portable {
        assert!(!conv::has_native_bf16());
        assert_eq!(conv::amx_status(), conv::AmxStatus::Disabled);
        assert_eq!(simd_description(), "portable (ALLCNN_SIMD=portable)");
    } else {
        assert!(!simd_description().contains("ALLCNN_SIMD"));
        if std::env::var_os("ALLCNN_AMX").is_none_or(|v| v != "0") {
            assert_ne!(conv::amx_status(), conv::AmxStatus::Disabled);
        }
    }
}
