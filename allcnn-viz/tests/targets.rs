//! Target parsing, resolution and the errors that list what is valid.

use allcnn_models::{AllCnn, LayerName};
use allcnn_viz::{Method, Saliency, Target, TargetSpec, VizError};
use candle_core::{DType, Device, Tensor};

mod common;

fn model() -> AllCnn {
    common::all_cnn_c(1)
}

#[test]
fn parses_every_form_and_round_trips() {
    let cases = [
        ("class:3", TargetSpec::Class(3)),
        ("labels", TargetSpec::Labels),
        ("predicted", TargetSpec::Predicted),
        (
            "unit:conv7:7:3:3",
            TargetSpec::Unit {
                layer: LayerName::Conv(7),
                channel: 7,
                y: 3,
                x: 3,
            },
        ),
        (
            "strongest:pool1:2",
            TargetSpec::Strongest {
                layer: LayerName::Pool(1),
                channel: 2,
            },
        ),
    ];
    for (text, want) in cases {
        let got: TargetSpec = text.parse().unwrap();
        assert_eq!(got, want);
        assert_eq!(got.to_string(), text);
    }
    for bad in [
        "class",
        "class:-1",
        "unit:conv7:1:2",
        "unit:fc1:0:0:0",
        "best",
        "",
    ] {
        let err = bad.parse::<TargetSpec>().unwrap_err();
        assert!(matches!(err, VizError::BadTarget { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("class:K"), "{err}");
    }
    assert_eq!(
        "guided-backprop".parse::<Method>().unwrap(),
        Method::GuidedBackprop
    );
    assert_eq!("deconvnet".parse::<Method>().unwrap(), Method::Deconvnet);
    let err = "anchors".parse::<Method>().unwrap_err().to_string();
    assert!(
        err.contains("gradient, saliency, deconvnet, guided-backprop, input-x-gradient, grad-cam"),
        "{err}"
    );
}

#[test]
fn resolve_checks_against_model_and_input() {
    let m = model();
    let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[4i64, 9], &Device::Cpu).unwrap();
    let resolve = |t: &str, l: Option<&Tensor>| t.parse::<TargetSpec>().unwrap().resolve(&m, &x, l);

    assert_eq!(
        resolve("labels", Some(&labels)).unwrap(),
        Target::PerImage(vec![4, 9])
    );
    assert!(matches!(
        resolve("labels", None),
        Err(VizError::MissingLabels)
    ));
    let three = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
    assert!(matches!(
        resolve("labels", Some(&three)),
        Err(VizError::CountMismatch {
            got: 3,
            images: 2,
            ..
        })
    ));
    match resolve("predicted", None).unwrap() {
        Target::PerImage(p) => assert_eq!(p.len(), 2),
        other => panic!("{other:?}"),
    }

    let err = resolve("class:10", None).unwrap_err().to_string();
    assert!(err.contains("0..10"), "{err}");
    let err = resolve("unit:conv10:0:0:0", None).unwrap_err().to_string();
    assert!(
        err.contains("conv9 [10, 6, 6]") && err.contains("conv1 [96, 32, 32]"),
        "{err}"
    );
    let err = resolve("unit:pool1:0:0:0", None).unwrap_err().to_string();
    assert!(err.contains("has no layer `pool1`"), "{err}");
    let err = resolve("unit:conv7:192:0:0", None).unwrap_err().to_string();
    assert!(err.contains("channels 0..192"), "{err}");
    let err = resolve("unit:conv7:0:6:0", None).unwrap_err().to_string();
    assert!(err.contains("6x6") && err.contains("y in 0..6"), "{err}");
    assert!(resolve("unit:conv7:191:5:5", None).is_ok());
    assert!(resolve("strongest:conv9:9", None).is_ok());

    // The methods validate too.
    let err = Saliency::new(&m)
        .attribute(&x, &Target::PerImage(vec![1]))
        .unwrap_err();
    assert!(matches!(err, VizError::CountMismatch { .. }), "{err}");
}

#[test]
fn predicted_classes_take_the_first_largest_logit_and_match_predict() {
    let logits = Tensor::new(
        &[[1f32, 3.0, 3.0], [5.0, 0.0, -1.0], [-2.0, -1.0, -3.0]],
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        allcnn_viz::predicted_classes(&logits).unwrap(),
        vec![1, 0, 1]
    );
    // From a model's own logits it is what `predict` (one forward) gives.
    let m = model();
    let x = Tensor::randn(0f32, 1.0, (3, 3, 32, 32), &Device::Cpu).unwrap();
    assert_eq!(
        allcnn_viz::predicted_classes(&m.forward(&x).unwrap()).unwrap(),
        allcnn_viz::predict(&m, &x).unwrap()
    );
    let bad = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    assert!(allcnn_viz::predicted_classes(&bad).is_err());
}
