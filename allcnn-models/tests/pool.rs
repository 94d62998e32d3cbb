//! The 3x3 / stride 2 / padding 1 max-pool: hand-computed forward, switches
//! and backward (ties, windows touching the padding), and the CPU kernel
//! against the device-generic path. The hand-computed cases run on every
//! device of the build (`test_device!`).

use allcnn_models::kernels::pool::{max_pool, max_pool_generic, max_pool_with_switches, unpool};
use allcnn_testing::test_device;
use candle_core::{DType, Device, Tensor, Var};

fn plane_on(v: &[f32], h: usize, w: usize, dev: &Device) -> Tensor {
    Tensor::from_vec(v.to_vec(), (1, 1, h, w), dev).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[rustfmt::skip]
const X: [f32; 16] = [
    1., 2., 0., 0.,
    3., 3., 1., 0.,
    0., 1., 5., 5.,
    0., 0., 5., 2.,
];

fn forward_switches_and_backward_by_hand(dev: &Device) {
    let x = Var::from_tensor(&plane_on(&X, 4, 4, dev)).unwrap();
    let (y, s) = max_pool_with_switches(x.as_tensor()).unwrap();
    assert_eq!(y.dims(), &[1, 1, 2, 2]);
    assert_eq!(flat(&y), [3., 3., 3., 5.]);
    // Ties go to the first maximum in row-major order: (1,0) before (1,1),
    // (2,2) before (2,3) and (3,2).
    assert_eq!(
        s.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
        [4, 5, 4, 10]
    );

    let up = plane_on(&[1., 10., 100., 1000.], 2, 2, dev);
    let grads = y.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
    let g = flat(grads.get(x.as_tensor()).unwrap());
    let mut want = [0f32; 16];
    want[4] = 101.;
    want[5] = 10.;
    want[10] = 1000.;
    assert_eq!(g, want);
    // unpool through the switches is the same routing.
    assert_eq!(flat(&unpool(&up, &s, 4, 4).unwrap()), want);
}
test_device!(forward_switches_and_backward_by_hand);

fn padding_never_wins(dev: &Device) {
    // All zero (post-ReLU dead map): the first in-bounds cell wins each window.
    let zeros = Var::from_tensor(&plane_on(&[0.; 16], 4, 4, dev)).unwrap();
    let (y, s) = max_pool_with_switches(zeros.as_tensor()).unwrap();
    assert_eq!(flat(&y), [0.; 4]);
    assert_eq!(
        s.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
        [0, 1, 4, 5]
    );
    let grads = y.sum_all().unwrap().backward().unwrap();
    let g = flat(grads.get(zeros.as_tensor()).unwrap());
    assert_eq!(
        g.iter().sum::<f32>(),
        4.0,
        "all four outputs route into the input"
    );
    // Negative inputs: a zero pad would wrongly win; the max is the largest input.
    let neg: Vec<f32> = (0..25).map(|i| -1.0 - i as f32).collect();
    let y = max_pool(&plane_on(&neg, 5, 5, dev)).unwrap();
    assert_eq!(y.dims(), &[1, 1, 3, 3]);
    // Window (0,0) covers rows 0..1, cols 0..1: max is -1 (index 0).
    // Window (1,1) covers rows 1..3, cols 1..3: max is -(1+6) = -7.
    assert_eq!(flat(&y), [-1., -2., -4., -6., -7., -9., -16., -17., -19.]);
}
test_device!(padding_never_wins);

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    // A tiny LCG: enough to get varied values with some exact ties.
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) % 17) as f32 - 4.0
        })
        .collect()
}

#[test]
fn cpu_kernel_matches_generic_path_forward_and_backward() {
    for &(n, c, h, w) in &[(2, 3, 8, 8), (1, 2, 7, 5), (3, 1, 1, 1), (2, 4, 32, 32)] {
        let data = pseudo_random(n * c * h * w, (h * 31 + w) as u64);
        let x = Tensor::from_vec(data, (n, c, h, w), &Device::Cpu).unwrap();
        let up = Tensor::from_vec(
            pseudo_random(n * c * h.div_ceil(2) * w.div_ceil(2), 7),
            (n, c, h.div_ceil(2), w.div_ceil(2)),
            &Device::Cpu,
        )
        .unwrap();
        for dtype in [DType::F32, DType::F64] {
            let xv = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
            let up = up.to_dtype(dtype).unwrap();
            let (y1, s1) = max_pool_with_switches(xv.as_tensor()).unwrap();
            let (y2, s2) = max_pool_generic(xv.as_tensor()).unwrap();
            assert_eq!(
                y1.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                y2.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            );
            assert_eq!(
                s1.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
                s2.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
                "switches {n}x{c}x{h}x{w}"
            );
            let g1 = y1.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = y2.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
            let a = g1
                .get(xv.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let b = g2
                .get(xv.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            assert_eq!(
                a.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f64>().unwrap()
            );
        }
    }
}

#[test]
fn non_contiguous_input_is_handled() {
    let x = Tensor::from_vec(pseudo_random(2 * 3 * 6 * 6, 3), (2, 6, 6, 3), &Device::Cpu).unwrap();
    let x = x.permute((0, 3, 1, 2)).unwrap(); // [2, 3, 6, 6], strided
    let a = max_pool(&x).unwrap();
    let b = max_pool(&x.contiguous().unwrap()).unwrap();
    assert_eq!(flat(&a), flat(&b));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let x3 = Tensor::zeros((3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(max_pool(&x3).is_err());
    let empty = Tensor::zeros((1, 1, 0, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(max_pool(&empty).is_err());
    let ints = Tensor::zeros((1, 1, 4, 4), DType::U8, &Device::Cpu).unwrap();
    assert!(max_pool(&ints).is_err());
}

fn standard_relu_backward_is_strict_at_zero(dev: &Device) {
    use allcnn_models::{LayerName, ReluRule, StandardRelu};
    // Metal has no f64.
    let dtypes: &[DType] = if dev.is_metal() {
        &[DType::F32]
    } else {
        &[DType::F32, DType::F64]
    };
    for &dtype in dtypes {
        let x = Var::from_tensor(
            &plane_on(&[-1., 0., 2., 3.], 2, 2, dev)
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        let y = StandardRelu
            .relu(LayerName::Conv(1), x.as_tensor())
            .unwrap();
        let up = plane_on(&[5., 6., 7., -8.], 2, 2, dev)
            .to_dtype(dtype)
            .unwrap();
        let g = y.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_dtype(DType::F32).unwrap();
        // PyTorch's rule: no gradient where x <= 0.
        assert_eq!(flat(&g), [0., 0., 7., -8.], "{dtype:?}");
        assert_eq!(flat(&y.to_dtype(DType::F32).unwrap()), [0., 0., 2., 3.]);
    }
}
test_device!(standard_relu_backward_is_strict_at_zero);
