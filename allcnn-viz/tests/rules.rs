//! Tiny hand-computed cases for every rule, and the promise that an
//! attribution leaves the model as it was.

mod common;

use allcnn_models::{AllCnn, ArchSpec, Init, Layer, LayerName};
use allcnn_viz::{
    Attribute, BackwardRule, Deconvnet, Gradient, GuidedBackprop, Method, Saliency, Target,
};
use candle_core::{Device, Tensor, Var};

fn model(layers: Vec<Layer>, params: Vec<(&str, Vec<f32>, Vec<usize>)>) -> AllCnn {
    common::model_from(1, 4, layers, params)
}

fn image(v: [[f32; 4]; 4]) -> Tensor {
    Tensor::from_vec(v.concat(), (1, 1, 4, 4), &Device::Cpu).unwrap()
}

fn grid(t: &Tensor) -> Vec<Vec<f32>> {
    t.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
}

fn run(m: &dyn Attribute, x: &Tensor, target: &Target) -> Vec<Vec<f32>> {
    grid(&m.attribute(x, target).unwrap())
}

/// One conv: 2x2 kernel w, stride 2, no padding, one class; each input
/// pixel feeds exactly one unit. Blocks (2x2 each) are A = top-left
/// (f = 1 > 0), B = top-right (f = -2 < 0), C = bottom-left (f = 0 exactly)
/// and D = bottom-right (f = 3 > 0). The logit is the mean of the four
/// rectified units, so the signal at the ReLU is R = 1/4 > 0 everywhere.
fn one_conv() -> (AllCnn, Tensor) {
    let m = model(
        vec![Layer::conv_valid(2, 1, 2)],
        vec![
            ("conv1.weight", vec![1.0, -2.0, 3.0, 0.5], vec![1, 1, 2, 2]),
            ("conv1.bias", vec![0.0], vec![1]),
        ],
    );
    let x = image([
        [1.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
    ]);
    (m, x)
}

const Q: f32 = 0.25;

#[test]
fn one_conv_class_target() {
    let (m, x) = one_conv();
    let t = Target::Class(0);
    // Gradient: R * [f > 0] -> w / 4 in A and D; B (f < 0) and C (f = 0,
    // strict mask) get nothing.
    let grad = vec![
        vec![Q, -2.0 * Q, 0.0, 0.0],
        vec![3.0 * Q, 0.5 * Q, 0.0, 0.0],
        vec![0.0, 0.0, Q, -2.0 * Q],
        vec![0.0, 0.0, 3.0 * Q, 0.5 * Q],
    ];
    assert_eq!(run(&Gradient::new(&m), &x, &t), grad);
    let abs: Vec<Vec<f32>> = grad
        .iter()
        .map(|r| r.iter().map(|v| v.abs()).collect())
        .collect();
    assert_eq!(run(&Saliency::new(&m), &x, &t), abs);
    // Guided: R > 0 everywhere, so the same as the gradient.
    assert_eq!(run(&GuidedBackprop::new(&m), &x, &t), grad);
    // Deconvnet: f ignored, R > 0: w / 4 in every block.
    let all = vec![
        vec![Q, -2.0 * Q, Q, -2.0 * Q],
        vec![3.0 * Q, 0.5 * Q, 3.0 * Q, 0.5 * Q],
        vec![Q, -2.0 * Q, Q, -2.0 * Q],
        vec![3.0 * Q, 0.5 * Q, 3.0 * Q, 0.5 * Q],
    ];
    assert_eq!(run(&Deconvnet::new(&m), &x, &t), all);
}

#[test]
fn one_conv_unit_targets() {
    let (m, x) = one_conv();
    let unit = |y, x| Target::Unit {
        layer: LayerName::Conv(1),
        channel: 0,
        y,
        x,
    };
    let zero = vec![vec![0.0f32; 4]; 4];
    // Unit B (f = -2): only the deconvnet passes anything, w in block B.
    let b = unit(0, 1);
    assert_eq!(run(&Gradient::new(&m), &x, &b), zero);
    assert_eq!(run(&GuidedBackprop::new(&m), &x, &b), zero);
    assert_eq!(
        run(&Deconvnet::new(&m), &x, &b),
        vec![
            vec![0.0, 0.0, 1.0, -2.0],
            vec![0.0, 0.0, 3.0, 0.5],
            vec![0.0; 4],
            vec![0.0; 4],
        ]
    );
    // Unit D (f = 3): all three give w in block D.
    let d = vec![
        vec![0.0; 4],
        vec![0.0; 4],
        vec![0.0, 0.0, 1.0, -2.0],
        vec![0.0, 0.0, 3.0, 0.5],
    ];
    for method in [Method::Gradient, Method::GuidedBackprop, Method::Deconvnet] {
        let got = grid(&method.attribute(&m, &x, &unit(1, 1)).unwrap());
        assert_eq!(got, d, "{method}");
    }
    // The strongest unit of channel 0 is D.
    let strongest = Target::StrongestInChannel {
        layer: LayerName::Conv(1),
        channel: 0,
    };
    assert_eq!(run(&GuidedBackprop::new(&m), &x, &strongest), d);
}

/// Two convs, so the signal reaching the first ReLU can be negative. conv1:
/// 2x2 stride 2 with two channels, ch0 reading the top-left pixel of each
/// block and ch1 the top-right one; conv2: 1x1 with weights [+1, -1] and
/// bias 10 (always active). R at conv1's ReLU is +1/4 for ch0, -1/4 for ch1.
/// Blocks A, B, C hold [[1, 2], [0, 0]] (both channels active); block D
/// holds [[0, 2], [0, 0]] (ch0 exactly 0).
#[test]
fn two_convs_separate_the_three_rules() {
    let m = model(
        vec![Layer::conv_valid(2, 2, 2), Layer::conv(1, 1, 1)],
        vec![
            (
                "conv1.weight",
                vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
                vec![2, 1, 2, 2],
            ),
            ("conv1.bias", vec![0.0, 0.0], vec![2]),
            ("conv2.weight", vec![1.0, -1.0], vec![1, 2, 1, 1]),
            ("conv2.bias", vec![10.0], vec![1]),
        ],
    );
    let x = image([
        [1.0, 2.0, 1.0, 2.0],
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 2.0, 0.0, 2.0],
        [0.0, 0.0, 0.0, 0.0],
    ]);
    let t = Target::Class(0);
    // Gradient: ch0 gives +1/4 at top-left where h0 > 0 (not in D), ch1
    // gives -1/4 at top-right everywhere.
    assert_eq!(
        run(&Gradient::new(&m), &x, &t),
        vec![
            vec![Q, -Q, Q, -Q],
            vec![0.0; 4],
            vec![Q, -Q, 0.0, -Q],
            vec![0.0; 4],
        ]
    );
    // Guided: the negative ch1 signal is cut, and ch0 still needs h0 > 0.
    assert_eq!(
        run(&GuidedBackprop::new(&m), &x, &t),
        vec![
            vec![Q, 0.0, Q, 0.0],
            vec![0.0; 4],
            vec![Q, 0.0, 0.0, 0.0],
            vec![0.0; 4],
        ]
    );
    // Deconvnet: the negative ch1 signal is cut, ch0 passes even in D.
    assert_eq!(
        run(&Deconvnet::new(&m), &x, &t),
        vec![
            vec![Q, 0.0, Q, 0.0],
            vec![0.0; 4],
            vec![Q, 0.0, Q, 0.0],
            vec![0.0; 4],
        ]
    );
}

/// conv1 (1x1, weight 1) -> the 3x3/2/1 max-pool (4x4 -> 2x2) -> conv2 (1x1,
/// weight 1): every rule routes each window's 1/4 to its switch.
#[test]
fn max_pool_routes_through_switches() {
    let m = model(
        vec![Layer::conv(1, 1, 1), Layer::MaxPool, Layer::conv(1, 1, 1)],
        vec![
            ("conv1.weight", vec![1.0], vec![1, 1, 1, 1]),
            ("conv1.bias", vec![0.0], vec![1]),
            ("conv2.weight", vec![1.0], vec![1, 1, 1, 1]),
            ("conv2.bias", vec![0.0], vec![1]),
        ],
    );
    // x = 1..16 row-major: windows (rows 0-1|1-3, cols 0-1|1-3) peak at
    // (1,1), (1,3), (3,1), (3,3).
    let mut v = [[0f32; 4]; 4];
    for (y, row) in v.iter_mut().enumerate() {
        for (xx, p) in row.iter_mut().enumerate() {
            *p = (4 * y + xx + 1) as f32;
        }
    }
    let want = vec![
        vec![0.0; 4],
        vec![0.0, Q, 0.0, Q],
        vec![0.0; 4],
        vec![0.0, Q, 0.0, Q],
    ];
    for method in [Method::Gradient, Method::GuidedBackprop, Method::Deconvnet] {
        let got = grid(&method.attribute(&m, &image(v), &Target::Class(0)).unwrap());
        assert_eq!(got, want, "{method}");
    }
    // One pixel winning all four windows collects all four shares.
    v[1][1] = 100.0;
    let got = run(&GuidedBackprop::new(&m), &image(v), &Target::Class(0));
    let mut want = vec![vec![0.0; 4]; 4];
    want[1][1] = 1.0;
    assert_eq!(got, want);
}

#[test]
fn backward_rule_masks_are_strict() {
    let dev = Device::Cpu;
    let f = Tensor::new(&[-1f32, 0.0, 2.0, 3.0, 4.0], &dev).unwrap();
    let r = Tensor::new(&[1f32, 1.0, -1.0, 0.0, 2.0], &dev).unwrap();
    let apply = |rule: BackwardRule| rule.apply(&f, &r).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(apply(BackwardRule::Gradient), [0.0, 0.0, -1.0, 0.0, 2.0]);
    assert_eq!(apply(BackwardRule::Deconvnet), [1.0, 1.0, 0.0, 0.0, 2.0]);
    assert_eq!(
        apply(BackwardRule::GuidedBackprop),
        [0.0, 0.0, 0.0, 0.0, 2.0]
    );
}

/// The gradient of the summed logits and the model's outputs, through a
/// normal forward/backward pass.
fn plain_pass(m: &AllCnn, x: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let var = Var::from_tensor(x).unwrap();
    let logits = m.forward(var.as_tensor()).unwrap();
    let grads = logits.sum_all().unwrap().backward().unwrap();
    let g = grads.get(var.as_tensor()).unwrap();
    (
        g.flatten_all().unwrap().to_vec1().unwrap(),
        logits.flatten_all().unwrap().to_vec1().unwrap(),
    )
}

#[test]
fn attribution_leaves_the_model_unchanged() {
    let dev = Device::Cpu;
    let spec = ArchSpec {
        name: "small".into(),
        in_channels: 3,
        input_size: 8,
        layers: vec![
            Layer::conv(3, 6, 1),
            Layer::MaxPool,
            Layer::conv(3, 6, 2),
            Layer::conv_valid(2, 4, 1),
        ],
    };
    let m = AllCnn::init(spec, Init::HeNormal, 7, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (3, 3, 8, 8), &dev).unwrap();
    let params_before: Vec<Vec<f32>> = m
        .parameters()
        .iter()
        .map(|(_, t)| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let before = plain_pass(&m, &x);
    for method in Method::ALL {
        method.attribute(&m, &x, &Target::Class(1)).unwrap();
        method
            .attribute(
                &m,
                &x,
                &Target::StrongestInChannel {
                    layer: LayerName::Conv(2),
                    channel: 3,
                },
            )
            .unwrap();
    }
    let after = plain_pass(&m, &x);
    assert_eq!(before, after);
    // The plain gradient is the Gradient method's map for the summed logits.
    let sum_of_classes: Vec<f32> = (0..4)
        .map(|k| Gradient::new(&m).attribute(&x, &Target::Class(k)).unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in sum_of_classes.iter().zip(&after.0) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let params_after: Vec<Vec<f32>> = m
        .parameters()
        .iter()
        .map(|(_, t)| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(params_before, params_after);
    // No parameter became a variable.
    assert!(m.parameters().iter().all(|(_, t)| !t.is_variable()));
}
