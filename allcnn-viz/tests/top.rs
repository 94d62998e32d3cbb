//! Receptive fields, the top-activation scan and its figure.

use allcnn_models::{AllCnn, ArchSpec, Init, Layer, LayerName};
use allcnn_viz::render::{self, RenderOptions};
use allcnn_viz::{crop, Gradient, Method, ReceptiveField, Target, TopActivations, Window};
use candle_core::{Device, Tensor};

#[test]
fn receptive_fields_of_the_paper_models() {
    let spec = ArchSpec::by_name("all-cnn-c", 10).unwrap();
    let rf = |l: &str| ReceptiveField::of(&spec, l.parse().unwrap()).unwrap();
    let t = |size, jump, offset| ReceptiveField { size, jump, offset };
    assert_eq!(rf("conv1"), t(3, 1, -1));
    assert_eq!(rf("conv3"), t(7, 2, -3));
    assert_eq!(rf("conv6"), t(19, 4, -9));
    assert_eq!(rf("conv9"), t(27, 4, -9));
    let spec = ArchSpec::by_name("model-c", 10).unwrap();
    let rf = |l: &str| ReceptiveField::of(&spec, l.parse().unwrap()).unwrap();
    assert_eq!(rf("pool1"), t(7, 2, -3));
    assert!(ReceptiveField::of(&spec, LayerName::Pool(3)).is_err());
}

/// With positive weights, biases and inputs every ReLU is active, so the
/// gradient of a unit is non-zero exactly on its receptive field (clipped
/// to the image).
#[test]
fn receptive_field_is_the_gradient_support() {
    let dev = Device::Cpu;
    let spec = ArchSpec {
        name: "rf".into(),
        in_channels: 1,
        input_size: 16,
        layers: vec![
            Layer::conv(3, 2, 1),
            Layer::conv(3, 2, 2),
            Layer::conv_valid(3, 2, 1),
            Layer::conv(1, 2, 1),
        ],
    };
    let mut m = AllCnn::init(spec.clone(), Init::HeNormal, 0, &dev).unwrap();
    let tensors = m
        .parameters()
        .into_iter()
        .map(|(n, t)| (n, t.abs().unwrap().affine(1.0, 0.01).unwrap()))
        .collect();
    m = AllCnn::from_tensors(spec.clone(), tensors, "abs", &dev).unwrap();
    let x = Tensor::rand(0.1f32, 1.0, (1, 1, 16, 16), &dev).unwrap();
    let layer = LayerName::Conv(3);
    let rf = ReceptiveField::of(&spec, layer).unwrap();
    assert_eq!(
        rf,
        ReceptiveField {
            size: 9,
            jump: 2,
            offset: -2
        }
    );
    for (y, xx) in [(0, 0), (2, 3), (5, 5)] {
        let target = Target::Unit {
            layer,
            channel: 1,
            y,
            x: xx,
        };
        let g: Vec<Vec<f32>> = Gradient::new(&m)
            .attribute(&x, &target)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let w = rf.window(y, xx);
        for (r, row) in g.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let inside = (r as isize) >= w.y0
                    && (r as isize) < w.y0 + w.size as isize
                    && (c as isize) >= w.x0
                    && (c as isize) < w.x0 + w.size as isize;
                assert_eq!(v != 0.0, inside, "unit ({y},{xx}) pixel ({r},{c}) {v}");
            }
        }
    }
}

#[test]
fn crop_pads_outside_the_image() {
    let dev = Device::Cpu;
    let img = Tensor::arange(0f32, 16.0, &dev)
        .unwrap()
        .reshape((1, 4, 4))
        .unwrap();
    let c = crop(
        &img,
        Window {
            y0: -1,
            x0: 2,
            size: 3,
        },
    )
    .unwrap();
    assert_eq!(
        c.squeeze(0).unwrap().to_vec2::<f32>().unwrap(),
        vec![
            vec![0.0, 0.0, 0.0],
            vec![2.0, 3.0, 0.0],
            vec![6.0, 7.0, 0.0]
        ]
    );
    let c = crop(
        &img,
        Window {
            y0: 10,
            x0: 0,
            size: 2,
        },
    )
    .unwrap();
    assert_eq!(c.dims(), &[1, 2, 2]);
    assert_eq!(c.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}

fn small_model() -> AllCnn {
    let spec = ArchSpec {
        name: "small".into(),
        in_channels: 3,
        input_size: 8,
        layers: vec![
            Layer::conv(3, 4, 1),
            Layer::MaxPool,
            Layer::conv(3, 5, 1),
            Layer::conv(1, 3, 1),
        ],
    };
    AllCnn::init(spec, Init::HeNormal, 3, &Device::Cpu).unwrap()
}

#[test]
fn top_activations_match_brute_force() {
    let dev = Device::Cpu;
    let m = small_model();
    let layer = LayerName::Conv(2);
    let batches: Vec<Tensor> = (0..3)
        .map(|_| Tensor::randn(0f32, 1.0, (5, 3, 8, 8), &dev).unwrap())
        .collect();
    let channels = vec![0, 3, 4];
    let k = 4;
    let mut top = TopActivations::new(&m, layer, channels.clone(), k).unwrap();
    top.scan(&batches).unwrap();
    assert_eq!(top.seen(), 15);

    // Brute force: the maximum of each channel per image over the whole set.
    let all = Tensor::cat(&batches, 0).unwrap();
    let acts = m.pass().capture(layer).stop_at(layer).run(&all).unwrap();
    let act = acts.get(layer).unwrap();
    for (ch, kept) in top.candidates() {
        let maxes: Vec<f32> = act
            .narrow(1, ch, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .max(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut order: Vec<usize> = (0..maxes.len()).collect();
        order.sort_by(|&a, &b| maxes[b].total_cmp(&maxes[a]).then(a.cmp(&b)));
        let got: Vec<usize> = kept.iter().map(|c| c.image_index).collect();
        assert_eq!(got, order[..k].to_vec(), "channel {ch}");
        for c in kept {
            assert_eq!(c.value, maxes[c.image_index]);
            let img = all.get(c.image_index).unwrap();
            assert_eq!(
                (c.image.clone() - img)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
                0.0
            );
        }
    }

    let fig = top
        .reconstruct(&[Method::GuidedBackprop, Method::Deconvnet])
        .unwrap();
    let rf = ReceptiveField::of(m.spec(), layer).unwrap();
    assert_eq!(fig.receptive_field, rf);
    assert_eq!(fig.rows.len(), 3);
    for row in &fig.rows {
        assert_eq!(row.entries.len(), k);
        for e in &row.entries {
            assert_eq!(e.patch.dims(), &[3, rf.size, rf.size]);
            assert_eq!(e.reconstructions.len(), 2);
            // Each reconstruction is the method's map of that single unit,
            // cropped to the same window.
            let img = all.get(e.image_index).unwrap().unsqueeze(0).unwrap();
            let target = Target::Unit {
                layer,
                channel: row.channel,
                y: e.unit.y,
                x: e.unit.x,
            };
            for (method, rec) in &e.reconstructions {
                let full = method
                    .attribute(&m, &img, &target)
                    .unwrap()
                    .squeeze(0)
                    .unwrap();
                let want = crop(&full, e.window).unwrap();
                let diff = (rec - want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-6, "{method}");
            }
        }
    }
    let opts = RenderOptions {
        scale: 2,
        spacing: 1,
        ..Default::default()
    };
    let png = render::top_activation_grid(&fig, &opts).unwrap();
    // 3 groups of k cells plus 2 separator cells per row, 3 rows.
    let cell = rf.size as u32 * 2;
    let cols = 3 * k as u32 + 2;
    assert_eq!(png.dimensions(), (cols * cell + (cols + 1), 3 * cell + 4));

    // The labelled figure: a title band above and a band of row labels to
    // the left as wide as the longest label ("ch 4" without names, "ch 3
    // hippopotamus" with them; channels past a two-name list fall back).
    let band = |label: &str| render::text_width(label, 1) + 2 * 2;
    let width = |names: Option<&[String]>| {
        render::labelled_top_activation_grid(&fig, names, &opts)
            .unwrap()
            .width()
            - png.width()
    };
    assert_eq!(width(None), band("ch 4"));
    let names: Vec<String> = ["cat", "dog", "bird", "hippopotamus", "elephant"]
        .map(String::from)
        .to_vec();
    assert_eq!(width(Some(&names)), band("ch 3 hippopotamus"));
    assert_eq!(width(Some(&names[..2])), band("ch 0 cat"));
}

#[test]
fn top_activations_reject_bad_arguments() {
    let m = small_model();
    assert!(TopActivations::new(&m, LayerName::Conv(2), vec![5], 3).is_err());
    assert!(TopActivations::new(&m, LayerName::Conv(2), vec![], 3).is_err());
    assert!(TopActivations::new(&m, LayerName::Conv(2), vec![0], 0).is_err());
    assert!(TopActivations::new(&m, LayerName::Conv(9), vec![0], 1).is_err());
    let top = TopActivations::new(&m, LayerName::Conv(2), vec![0], 1).unwrap();
    assert!(top.reconstruct(&[Method::GuidedBackprop]).is_err());
}
