//! Classifying image files with trained weights (`allcnn_train::classify`).

use allcnn_models::pretrained::AllCnnC;
use allcnn_models::{AllCnn, ArchSpec, Init, WeightsFile, WeightsMeta};
use allcnn_train::classify::{top_guesses, Classifier};
use allcnn_train::TrainError;
use candle_core::{Device, Tensor};

fn samples() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/samples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Softmax by hand: logits (0, ln 2, ln 2, ln 4) give 1/9, 2/9, 2/9, 4/9;
/// the tie goes to the lower class, names come from the list.
#[test]
fn top_guesses_are_sorted_softmax_probabilities() {
    let l = [0f32, 2f32.ln(), 2f32.ln(), 4f32.ln()];
    let logits = Tensor::new(&[l, [0.0; 4]], &Device::Cpu).unwrap();
    let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    let g = top_guesses(&logits, 3, Some(&names)).unwrap();
    assert_eq!(g.len(), 2);
    let classes: Vec<usize> = g[0].iter().map(|x| x.class).collect();
    assert_eq!(classes, [3, 1, 2]);
    assert_eq!(g[0][0].name.as_deref(), Some("d"));
    for (x, want) in g[0].iter().zip([4.0 / 9.0, 2.0 / 9.0, 2.0 / 9.0]) {
        assert!((x.probability - want).abs() < 1e-6, "{x:?}");
    }
    // Equal logits: uniform, in class order; no names without a list.
    let g = top_guesses(&logits, 10, None).unwrap();
    assert_eq!(g[1].len(), 4);
    assert!(g[1]
        .iter()
        .all(|x| (x.probability - 0.25).abs() < 1e-6 && x.name.is_none()));
    assert_eq!(g[1][0].class, 0);
}

/// The shipped model names the sample images (one clear CIFAR-10 test
/// image per class, named after it) through the classifier, which applies
/// the file's own GCN + ZCA: at least nine of ten, as any of the shipped
/// models (84-90% on the test set) does.
#[test]
fn the_shipped_model_classifies_the_sample_images() {
    let c = Classifier::new(AllCnnC::Cifar10.load(&Device::Cpu).unwrap()).unwrap();
    assert_eq!(c.input_size(), 32);
    assert_eq!(c.class_names().unwrap().len(), 10);
    let files = samples();
    assert_eq!(files.len(), 10);
    let guesses = c.classify(&files, 2).unwrap();
    let right = files
        .iter()
        .zip(&guesses)
        .filter(|(f, g)| {
            assert_eq!(g.len(), 2);
            assert!(g[0].probability >= g[1].probability);
            g[0].name.as_deref() == f.file_stem().and_then(|s| s.to_str())
        })
        .count();
    assert!(right >= 9, "{right} of 10: {guesses:?}");
    let batch = c.load_images(&files).unwrap();
    assert_eq!(batch.images.dims(), &[10, 3, 32, 32]);
    assert_eq!(batch.resized().count(), 0);
    assert_eq!(c.logits(&batch.images).unwrap().dims(), &[10, 10]);
    // No files, no guesses.
    assert!(c.classify::<&str>(&[], 3).unwrap().is_empty());
}

#[test]
fn weights_without_preprocessing_are_refused_and_other_sizes_are_fitted() {
    let dir = tempfile::tempdir().unwrap();
    let model = AllCnn::init(
        ArchSpec::by_name("all-cnn-a", 3).unwrap(),
        Init::HeNormal,
        1,
        &Device::Cpu,
    )
    .unwrap();
    let w = dir.path().join("w.safetensors");
    model.save(&w, &WeightsMeta::default(), &[]).unwrap();
    let err = Classifier::new(WeightsFile::load(&w, &Device::Cpu).unwrap()).unwrap_err();
    assert!(matches!(err, TrainError::DataMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("with_preprocessing"), "{err}");

    let c = Classifier::with_preprocessing(
        WeightsFile::load(&w, &Device::Cpu).unwrap(),
        allcnn_data::Preprocessing::scale(),
    );
    let img = dir.path().join("wide.png");
    image::RgbImage::from_fn(40, 28, |x, y| image::Rgb([x as u8 * 6, y as u8 * 9, 7]))
        .save(&img)
        .unwrap();
    let batch = c.load_images(&[&img, &samples()[0]]).unwrap();
    assert_eq!(batch.images.dims(), &[2, 3, 32, 32]);
    assert_eq!(batch.original_sizes, [(28, 40), (32, 32)]);
    assert_eq!(batch.resized().collect::<Vec<_>>(), [0]);
    let g = c.classify(&[&img], 5).unwrap();
    assert_eq!(g[0].len(), 3, "at most the class count");
    // A file that is not an image is named.
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let err = c.classify(&[&bad], 1).unwrap_err();
    assert!(err.to_string().contains("bad.png"), "{err}");
}
