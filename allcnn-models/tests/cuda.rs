//! The CUDA kernels against the CPU kernels, in builds with the `cuda`
//! feature (the pool, bit for bit) and the `cudnn` feature (the
//! convolution block in all three passes, every geometry of the paper's
//! networks). Without a GPU these tests fail: a GPU build is checked on a
//! GPU (`bench/gpu-check.sh`).
#![cfg(feature = "cuda")]

use allcnn_models::kernels::pool::{max_pool, max_pool_with_switches, pooled_size};
use allcnn_testing::{gpu_device, values};
use candle_core::{Device, Tensor, Var};

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Max |a - b| / max |b|.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let s = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
    d / s.max(1e-12)
}

/// The pool on CUDA gives the CPU's values, switches and gradient bit for
/// bit, ties included (values rounded to a coarse grid make many).
#[test]
fn pool_matches_cpu_bit_for_bit() {
    let gpu = gpu_device("cuda");
    for &(n, c, h, w) in &[(2, 3, 32, 32), (3, 5, 7, 9), (1, 2, 1, 1), (2, 4, 8, 8)] {
        let x: Vec<f32> = values(n * c * h * w, 7)
            .into_iter()
            .map(|v| (v * 4.0).round())
            .collect();
        let (ho, wo) = (pooled_size(h), pooled_size(w));
        let up = values(n * c * ho * wo, 8);
        let run = |dev: &Device| {
            let xv = Var::from_vec(x.clone(), (n, c, h, w), dev).unwrap();
            let (y, s) = max_pool_with_switches(xv.as_tensor()).unwrap();
            let up = Tensor::from_vec(up.clone(), (n, c, ho, wo), dev).unwrap();
            let g = max_pool(xv.as_tensor())
                .unwrap()
                .mul(&up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let dx = flat(g.get(xv.as_tensor()).unwrap());
            let s: Vec<u32> = s.flatten_all().unwrap().to_vec1().unwrap();
            (flat(&y), s, dx)
        };
        let (cpu, cuda) = (run(&Device::Cpu), run(&gpu));
        assert_eq!(cpu.0, cuda.0, "pooled values of {:?}", (n, c, h, w));
        assert_eq!(cpu.1, cuda.1, "switches of {:?}", (n, c, h, w));
        assert_eq!(cpu.2, cuda.2, "input gradient of {:?}", (n, c, h, w));
    }
}

/// The cuDNN convolution block (bias, ReLU) against the CPU's im2col
/// block: the output, the input, weight and bias gradients, for every
/// geometry of All-CNN-C and of the paper's other networks (3x3, 3x3 /
/// stride 2, 1x1, 5x5, valid), relu on and off; in f32 (2e-5) and with
/// the bf16 precision's TF32 tensor cores (5e-3).
#[cfg(feature = "cudnn")]
#[test]
fn cudnn_block_matches_cpu_in_all_three_passes() {
    use allcnn_models::kernels::conv::{conv2d_fused, Algorithm};
    let gpu = gpu_device("cuda");
    // (n, cin, side, cout, k, stride, pad)
    let cases = [
        (4, 3, 32, 96, 3, 1, 1),
        (4, 96, 32, 96, 3, 2, 1),
        (2, 192, 8, 192, 3, 1, 0),
        (2, 192, 6, 10, 1, 1, 0),
        (3, 3, 32, 96, 5, 1, 2),
        (2, 7, 9, 5, 3, 2, 1),
    ];
    for (i, &(n, cin, side, cout, k, stride, pad)) in cases.iter().enumerate() {
        for relu in [true, false] {
            let seed = 100 * i as u64;
            let xs = values(n * cin * side * side, seed);
            let ws: Vec<f32> = values(cout * cin * k * k, seed + 1)
                .into_iter()
                .map(|v| v / (cin * k * k) as f32)
                .collect();
            let bs = values(cout, seed + 2);
            let so = (side + 2 * pad - k) / stride + 1;
            let up = values(n * cout * so * so, seed + 3);
            let run = |dev: &Device, algorithm: Algorithm| {
                let x = Var::from_vec(xs.clone(), (n, cin, side, side), dev).unwrap();
                let w = Var::from_vec(ws.clone(), (cout, cin, k, k), dev).unwrap();
                let b = Var::from_vec(bs.clone(), cout, dev).unwrap();
                let y = conv2d_fused(
                    x.as_tensor(),
                    w.as_tensor(),
                    b.as_tensor(),
                    stride,
                    pad,
                    algorithm,
                    relu,
                )
                .unwrap();
                let up = Tensor::from_vec(up.clone(), y.dims(), dev).unwrap();
                let g = y.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
                let grad = |v: &Var| flat(g.get(v.as_tensor()).unwrap());
                [flat(&y), grad(&x), grad(&w), grad(&b)]
            };
            let cpu = run(&Device::Cpu, Algorithm::Im2col);
            // f32 (FMA math), and the bf16 precision (TF32 tensor cores)
            // without the ReLU: TF32 rounding flips its mask where a
            // pre-activation is near 0 (a numpy simulation of case 0: 4
            // flips, weight and bias gradients 1e-2 off), which golden.rs
            // bounds by cosine instead.
            for (algorithm, tol) in [(Algorithm::Im2col, 2e-5), (Algorithm::WinogradBf16, 5e-3)] {
                if relu && matches!(algorithm, Algorithm::WinogradBf16) {
                    continue;
                }
                let cuda = run(&gpu, algorithm);
                for (what, (c, g)) in ["output", "input grad", "weight grad", "bias grad"]
                    .iter()
                    .zip(cpu.iter().zip(&cuda))
                {
                    let r = rel(g, c);
                    assert!(
                        r < tol,
                        "case {i} relu {relu} {algorithm:?}: {what} differs by {r:e} (relative)"
                    );
                }
            }
        }
    }
}

/// Two identical backward passes on cuDNN give the same bits (the
/// algorithms are the deterministic ones), the ground of a bit-identical
/// GPU resume.
#[cfg(feature = "cudnn")]
#[test]
fn cudnn_backward_is_deterministic() {
    use allcnn_models::kernels::conv::{conv2d_fused, Algorithm};
    let gpu = gpu_device("cuda");
    let (n, cin, side, cout) = (16, 96, 16, 192);
    let x = Var::from_vec(values(n * cin * side * side, 1), (n, cin, side, side), &gpu).unwrap();
    let w = Var::from_vec(values(cout * cin * 9, 2), (cout, cin, 3, 3), &gpu).unwrap();
    let b = Var::from_vec(values(cout, 3), cout, &gpu).unwrap();
    let grads = || {
        let y = conv2d_fused(
            x.as_tensor(),
            w.as_tensor(),
            b.as_tensor(),
            1,
            1,
            Algorithm::Winograd,
            true,
        )
        .unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        [&x, &w, &b].map(|v| flat(g.get(v.as_tensor()).unwrap()))
    };
    assert_eq!(grads(), grads());
}

/// The dropout mask drawn on the GPU is the CPU's, bit for bit, over
/// several calls (the generator's position advances alike on both).
#[test]
fn dropout_mask_on_gpu_is_the_cpu_mask() {
    use allcnn_models::DropoutRng;
    use candle_core::Shape;
    let gpu = gpu_device("cuda");
    let (mut cpu_rng, mut gpu_rng) = (DropoutRng::new(11, 4), DropoutRng::new(11, 4));
    for (len, rate) in [
        (3 * 32 * 32 * 8, 0.2f32),
        (96 * 16 * 16 * 8 + 5, 0.5),
        (77, 0.5),
    ] {
        let shape = Shape::from(len);
        let want = flat(&cpu_rng.mask_tensor(&shape, rate, &Device::Cpu).unwrap());
        let got = flat(&gpu_rng.mask_tensor(&shape, rate, &gpu).unwrap());
        assert_eq!(got, want, "len {len}, rate {rate}");
    }
}

/// The in-place momentum-SGD update on CUDA gives the CPU's bits.
#[test]
fn sgd_update_on_gpu_is_the_cpu_update() {
    use allcnn_models::kernels::sgd;
    let gpu = gpu_device("cuda");
    let n = 96 * 3 * 3 * 3 + 7;
    let run = |dev: &Device| {
        let t = |seed| Tensor::from_vec(values(n, seed), n, dev).unwrap();
        let (w, g, v) = (t(1), t(2), t(3));
        assert!(sgd::applies(&w, &g, Some(&v)));
        for _ in 0..3 {
            sgd::velocity_update(&v, &g, &w, 0.9, 1e-3).unwrap();
            sgd::weight_update(&w, &v, 0.05).unwrap();
        }
        (flat(&w), flat(&v))
    };
    assert_eq!(run(&gpu), run(&Device::Cpu));
}
