//! Every registered architecture against the paper-spec table: parameter
//! counts, map sizes, class heads, layer lists.

use allcnn_models::{registry, ArchSpec, Layer, LayerName, ModelError};

const TABLE: &[(&str, usize)] = &[
    ("model-a", 839_242),
    ("strided-cnn-a", 839_242),
    ("convpool-cnn-a", 1_254_250),
    ("all-cnn-a", 1_254_250),
    ("model-b", 885_610),
    ("strided-cnn-b", 885_610),
    ("convpool-cnn-b", 1_300_618),
    ("all-cnn-b", 1_300_618),
    ("model-c", 954_730),
    ("strided-cnn-c", 954_730),
    ("convpool-cnn-c", 1_369_738),
    ("all-cnn-c", 1_369_738),
];

#[test]
fn registry_holds_the_twelve_cifar_models_and_imagenet() {
    let names: Vec<&str> = registry().iter().map(|m| m.name).collect();
    let mut want: Vec<&str> = TABLE.iter().map(|(n, _)| *n).collect();
    want.push("all-cnn-imagenet");
    assert_eq!(names, want);
}

#[test]
fn cifar_param_counts_match_the_paper_table() {
    for &(name, params) in TABLE {
        let spec = ArchSpec::by_name(name, 10).unwrap();
        assert_eq!(spec.param_count(), params, "{name}");
        // 100 classes add 192*90 weights + 90 biases.
        let spec100 = ArchSpec::by_name(name, 100).unwrap();
        assert_eq!(
            spec100.param_count(),
            params + 17_370,
            "{name} with 100 classes"
        );
    }
    assert_eq!(
        ArchSpec::by_name("all-cnn-c", 100).unwrap().param_count(),
        1_387_108
    );
}

#[test]
fn imagenet_param_count_and_map_sizes() {
    let spec = ArchSpec::by_name("all-cnn-imagenet", 1000).unwrap();
    assert_eq!(spec.param_count(), 9_372_840);
    assert_eq!(spec.input_size, 224);
    let sizes: Vec<usize> = spec
        .map_sizes(224)
        .unwrap()
        .iter()
        .map(|(_, s)| s.1)
        .collect();
    assert_eq!(sizes, [54, 54, 27, 27, 27, 13, 13, 13, 6, 6, 6, 6]);
    assert_eq!(spec.final_map(224).unwrap(), (1000, 6, 6));
    // Dropout only after conv9.
    let drop_at = spec
        .layers
        .iter()
        .position(|l| matches!(l, Layer::Dropout { .. }))
        .unwrap();
    let convs_before = spec.layers[..drop_at]
        .iter()
        .filter(|l| matches!(l, Layer::Conv { .. }))
        .count();
    assert_eq!(convs_before, 9);
}

#[test]
fn every_cifar_model_maps_32_to_6() {
    for &(name, _) in TABLE {
        for classes in [10, 100] {
            let spec = ArchSpec::by_name(name, classes).unwrap();
            assert_eq!(spec.final_map(32).unwrap(), (classes, 6, 6), "{name}");
        }
        // The stages go 32 -> 16 -> 8 -> 6.
        let spec = ArchSpec::by_name(name, 10).unwrap();
        let sides: Vec<usize> = spec
            .map_sizes(32)
            .unwrap()
            .iter()
            .map(|(_, s)| s.1)
            .collect();
        assert!(
            sides.contains(&16) && sides.contains(&8),
            "{name}: {sides:?}"
        );
    }
}

#[test]
fn dropout_is_20_percent_on_input_and_50_after_each_downsampling() {
    for &(name, _) in TABLE {
        let spec = ArchSpec::by_name(name, 10).unwrap();
        assert_eq!(spec.layers[0], Layer::Dropout { rate: 0.2 }, "{name}");
        let rates: Vec<f32> = spec
            .layers
            .iter()
            .filter_map(|l| match l {
                Layer::Dropout { rate } => Some(*rate),
                _ => None,
            })
            .collect();
        assert_eq!(rates, [0.2, 0.5, 0.5], "{name}");
        // Each 0.5 dropout follows a pool or a stride-2 conv.
        for (i, l) in spec.layers.iter().enumerate() {
            if *l == (Layer::Dropout { rate: 0.5 }) {
                let prev = spec.layers[i - 1];
                let downsamples = matches!(prev, Layer::MaxPool | Layer::Conv { stride: 2, .. });
                assert!(downsamples, "{name}: dropout after {prev:?}");
            }
        }
    }
}

#[test]
fn all_cnn_c_layers_are_the_papers_table_2() {
    let spec = ArchSpec::by_name("all-cnn-c", 10).unwrap();
    let convs: Vec<(usize, usize, usize, usize, usize)> = spec
        .convs()
        .iter()
        .map(|c| (c.in_channels, c.kernel, c.out_channels, c.stride, c.padding))
        .collect();
    assert_eq!(
        convs,
        [
            (3, 3, 96, 1, 1),
            (96, 3, 96, 1, 1),
            (96, 3, 96, 2, 1),
            (96, 3, 192, 1, 1),
            (192, 3, 192, 1, 1),
            (192, 3, 192, 2, 1),
            (192, 3, 192, 1, 0),
            (192, 1, 192, 1, 0),
            (192, 1, 10, 1, 0),
        ]
    );
    // Strided-CNN-B: the 1x1 conv before each removed pool gets stride 2.
    let s = ArchSpec::by_name("strided-cnn-b", 10).unwrap();
    let strided: Vec<(usize, usize)> = s
        .convs()
        .iter()
        .filter(|c| c.stride == 2)
        .map(|c| (c.index, c.kernel))
        .collect();
    assert_eq!(strided, [(2, 1), (4, 1)]);
    assert!(!s.layers.contains(&Layer::MaxPool));
}

#[test]
fn fully_convolutional_any_input_size() {
    let spec = ArchSpec::by_name("all-cnn-c", 10).unwrap();
    assert_eq!(spec.final_map(64).unwrap(), (10, 14, 14));
    // 32 -> 16 -> 8 -> 6 needs at least 3x3 before the valid conv: the
    // smallest input is 17 (17 -> 9 -> 5 -> 3).
    assert_eq!(spec.final_map(17).unwrap(), (10, 3, 3));
    assert_eq!(spec.final_map(9).unwrap(), (10, 1, 1));
    match spec.final_map(8) {
        Err(ModelError::InputTooSmall { layer, .. }) => assert_eq!(layer, "conv7"),
        other => panic!("expected InputTooSmall, got {other:?}"),
    }
}

#[test]
fn unknown_names_and_bad_specs_are_errors() {
    let err = ArchSpec::by_name("all-cnn-d", 10).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("all-cnn-d") && msg.contains("all-cnn-c"),
        "{msg}"
    );
    assert!(ArchSpec::by_name("all-cnn-c", 0).is_err());
    // A class count past the limits, which would overflow the parameter
    // count, is refused by name (usize::MAX once gave fewer parameters).
    for name in ["all-cnn-c", "all-cnn-imagenet"] {
        let err = ArchSpec::by_name(name, usize::MAX).unwrap_err().to_string();
        assert!(err.contains(&usize::MAX.to_string()), "{name}: {err}");
    }
    let mut spec = ArchSpec::by_name("model-a", 10).unwrap();
    spec.layers[0] = Layer::Dropout { rate: 1.0 };
    assert!(spec.validate().unwrap_err().to_string().contains("rate 1"));
}

#[test]
fn layer_names_parse_and_print() {
    assert_eq!("conv7".parse::<LayerName>().unwrap(), LayerName::Conv(7));
    assert_eq!("pool2".parse::<LayerName>().unwrap(), LayerName::Pool(2));
    assert_eq!(LayerName::Conv(3).to_string(), "conv3");
    for bad in ["conv0", "fc1", "conv", "pool-1"] {
        assert!(bad.parse::<LayerName>().is_err(), "{bad}");
    }
}

#[test]
fn spec_round_trips_through_json() {
    let spec = ArchSpec::by_name("convpool-cnn-b", 100).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let back: ArchSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn absurd_sizes_are_refused_before_any_allocation() {
    // D4 of issue 15: sizes from a weights file drove 30 GB and 384 TB
    // allocations. Every registered model is well inside the bounds.
    for info in allcnn_models::registry() {
        let spec = ArchSpec::by_name(info.name, 1000).unwrap();
        spec.validate().unwrap();
    }
    let base = ArchSpec::by_name("all-cnn-c", 10).unwrap();
    let cases: Vec<(ArchSpec, &str)> = vec![
        (
            ArchSpec {
                input_size: 100_000,
                ..base.clone()
            },
            "input_size is 100000",
        ),
        (
            ArchSpec {
                in_channels: 1 << 40,
                ..base.clone()
            },
            "in_channels",
        ),
        (
            ArchSpec {
                layers: vec![Layer::conv(1, 10, 1); 1000],
                ..base.clone()
            },
            "1000 layers",
        ),
        (
            {
                let mut s = base.clone();
                s.layers[1] = Layer::Conv {
                    kernel: 3,
                    out: 96,
                    stride: 1,
                    padding: 1_000_000,
                };
                s
            },
            "padding 1000000",
        ),
        (
            {
                let mut s = base.clone();
                s.layers[1] = Layer::conv(3, 1 << 40, 1);
                s
            },
            "out 1099511627776",
        ),
        (
            // Each layer within bounds, the whole too large.
            ArchSpec {
                input_size: 4096,
                ..base.clone()
            },
            "feature map",
        ),
    ];
    for (spec, expected) in cases {
        let msg = spec.validate().unwrap_err().to_string();
        assert!(msg.contains(expected), "{expected}: {msg}");
    }
}

#[test]
fn spatial_layers_name_and_measure_every_conv_and_pool() {
    use allcnn_models::{LayerName, SpatialLayer};
    // Model C: conv1, conv2, pool1 (keeps 96 channels), ..., conv7 (10).
    let spec = ArchSpec::by_name("model-c", 10).unwrap();
    let layers = spec.spatial_layers();
    assert_eq!(layers.len(), 7 + 2);
    assert_eq!(
        layers[2],
        SpatialLayer {
            name: LayerName::Pool(1),
            kernel: 3,
            stride: 2,
            padding: 1,
            channels: 96,
        }
    );
    assert_eq!(layers.last().unwrap().name, LayerName::Conv(7));
    assert_eq!(layers.last().unwrap().channels, 10);
    // The map sizes follow the same walk, name for name.
    let sizes = spec.map_sizes(32).unwrap();
    let names: Vec<LayerName> = layers.iter().map(|l| l.name).collect();
    assert_eq!(sizes.iter().map(|(n, _)| *n).collect::<Vec<_>>(), names);
    // All-CNN-C has no pool: its strided convolutions take their place.
    let c = ArchSpec::by_name("all-cnn-c", 10).unwrap().spatial_layers();
    assert!(c.iter().all(|l| matches!(l.name, LayerName::Conv(_))));
    assert_eq!((c[2].kernel, c[2].stride, c[2].padding), (3, 2, 1));
}
