//! The weights shipped in the crate: they load, describe themselves, and
//! carry the compact preprocessing and the provenance their card promises.
#![cfg(feature = "pretrained")]

use allcnn_models::pretrained::AllCnnC;
use allcnn_models::WeightsFile;
use candle_core::{DType, Device, Tensor};

#[test]
fn every_shipped_file_loads_with_names_preprocessing_and_provenance() {
    for &v in AllCnnC::ALL {
        assert_eq!(AllCnnC::by_name(v.name()), Some(v));
        let w = v.load(&Device::Cpu).unwrap();
        let info = v.info();
        assert_eq!(w.model.spec().name, info.architecture);
        assert_eq!(w.model.classes(), 10);
        let names = w.class_names().expect("class names recorded");
        assert_eq!(names.len(), 10);
        assert_eq!(names[0], "airplane");
        assert_eq!(names[9], "truck");
        // The compact whitening (version 2) rides along: small enough for
        // crates.io (10 MB) with the f32 network.
        let pre: serde_json::Value =
            serde_json::from_str(w.meta.preprocessing.as_deref().unwrap()).unwrap();
        assert_eq!(pre["kind"], "gcn_zca");
        assert_eq!(pre["version"], 2);
        let basis = &w.attachments["preprocess.zca.basis"];
        assert_eq!(basis.dtype(), DType::F16);
        assert!(info.bytes < 10_500_000, "{} bytes", info.bytes);
        // Results and provenance from config.json, as in the card.
        assert!(info.top1 > 0.1 && info.top1 <= 1.0, "{info:?}");
        assert_eq!(info.test_images, Some(10_000));
        for key in ["commit", "hardware", "wall_time"] {
            assert!(info.provenance.contains_key(key), "{key}: {info:?}");
        }
        assert!(v.card().contains(&format!("{:.2}%", 100.0 * info.top1)));
        // The epoch the card names, and whether it is the run's best.
        let epoch = info.epochs.expect("the epoch is recorded");
        let said = format!("weights (epoch {epoch})");
        assert!(v.card().contains(&said), "{said}: {info:?}");
        assert_eq!(
            info.best_of_run,
            v.card().contains(&format!("**best** {said}")),
            "{info:?}"
        );
        // Every parameter finite, and the logits of an input are finite.
        for (name, t) in w.model.parameters() {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{name}");
        }
        let x = Tensor::ones((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
        let y: Vec<Vec<f32>> = w.model.forward(&x).unwrap().to_vec2().unwrap();
        assert!(y.iter().flatten().all(|v| v.is_finite()));
    }
}

#[test]
fn saved_file_is_the_shipped_file_and_loads_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    AllCnnC::Cifar10.save(&path).unwrap();
    let on_disk = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pretrained/all-cnn-c-cifar10/model.safetensors");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(on_disk).unwrap()
    );
    let a = WeightsFile::load(&path, &Device::Cpu).unwrap();
    let b = AllCnnC::Cifar10.load(&Device::Cpu).unwrap();
    assert_eq!(a.meta, b.meta);
    // A bad file name in errors is the one given.
    let err = WeightsFile::from_bytes(b"not safetensors", "mystery", &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("mystery"), "{err}");
}
