//! The model: initialisation, forward options, dropout, and weights files
//! (round trip, metadata, strict loading, bad files).

use std::collections::HashMap;

use allcnn_models::{
    AllCnn, ArchSpec, DropoutRng, Init, LayerName, ModelError, TrainingRecord, WeightsFile,
    WeightsMeta, KEY_CLASS_NAMES, KEY_TRAIN_EPOCH, KEY_TRAIN_STEP,
};
use candle_core::{DType, Device, Tensor};

fn small_input(n: usize, side: usize) -> Tensor {
    let v: Vec<f32> = (0..n * 3 * side * side)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (n, 3, side, side), &Device::Cpu).unwrap()
}

fn model(name: &str, seed: u64) -> AllCnn {
    AllCnn::init(
        ArchSpec::by_name(name, 10).unwrap(),
        Init::HeNormal,
        seed,
        &Device::Cpu,
    )
    .unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn init_is_seeded_and_scaled() {
    let a = model("all-cnn-c", 7);
    let b = model("all-cnn-c", 7);
    let c = model("all-cnn-c", 8);
    let (pa, pb, pc) = (a.parameters(), b.parameters(), c.parameters());
    assert_eq!(values(&pa[0].1), values(&pb[0].1));
    assert_ne!(values(&pa[0].1), values(&pc[0].1));
    // He normal: std sqrt(2 / fan_in) for conv5 (fan_in 192*9).
    let w = values(&pa[8].1);
    assert_eq!(pa[8].0, "conv5.weight");
    let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    let want = (2.0f32 / (192.0 * 9.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.02, "std {std} vs {want}");
    assert!(
        values(&pa[9].1).iter().all(|&b| b == 0.0),
        "bias starts at 0"
    );
    // Xavier uniform: bounded by sqrt(6 / (fan_in + fan_out)).
    let x = AllCnn::init(
        ArchSpec::by_name("model-a", 10).unwrap(),
        Init::XavierUniform,
        1,
        &Device::Cpu,
    )
    .unwrap();
    let w = values(&x.parameters()[2].1);
    let a = (6.0f32 / ((96 * 25 + 192 * 25) as f32)).sqrt();
    assert!(w.iter().all(|v| v.abs() <= a) && w.iter().any(|v| v.abs() > 0.9 * a));
    // LeCun uniform (Caffe's `xavier`): bounded by sqrt(3 / fan_in), so
    // All-CNN-C's first layer (fan-in 3*9 = 27) is 4x wider than under
    // Xavier uniform (fan-out 96*9 = 864), and uniform: variance a^2 / 3.
    let l = AllCnn::init(
        ArchSpec::by_name("all-cnn-c", 10).unwrap(),
        "caffe-xavier".parse::<Init>().unwrap(),
        1,
        &Device::Cpu,
    )
    .unwrap();
    let w = values(&l.parameters()[0].1);
    let a = (3.0f32 / 27.0).sqrt();
    assert!(w.iter().all(|v| v.abs() <= a) && w.iter().any(|v| v.abs() > 0.95 * a));
    let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
    assert!((var / (a * a / 3.0) - 1.0).abs() < 0.1, "variance {var}");
    let x = values(
        &AllCnn::init(l.spec().clone(), Init::XavierUniform, 1, &Device::Cpu)
            .unwrap()
            .parameters()[0]
            .1,
    );
    let xa = (6.0f32 / (27.0 + 864.0)).sqrt();
    assert!(x.iter().all(|v| v.abs() <= xa) && (a / xa - 4.0).abs() < 0.1);
    assert!("lecun"
        .parse::<Init>()
        .unwrap_err()
        .contains("lecun-uniform"));
}

#[test]
fn forward_shapes_capture_and_stop() {
    let m = model("model-c", 0);
    let x = small_input(2, 32);
    assert_eq!(m.forward(&x).unwrap().dims(), &[2, 10]);
    let acts = m
        .pass()
        .capture(LayerName::Pool(1))
        .capture(LayerName::Conv(5))
        .stop_at(LayerName::Conv(5))
        .run(&x)
        .unwrap();
    assert!(acts.logits.is_none());
    assert_eq!(
        acts.get(LayerName::Pool(1)).unwrap().dims(),
        &[2, 96, 16, 16]
    );
    assert_eq!(
        acts.get(LayerName::Conv(5)).unwrap().dims(),
        &[2, 192, 6, 6]
    );
    // Activations are after the ReLU.
    assert!(values(acts.get(LayerName::Conv(5)).unwrap())
        .iter()
        .all(|&v| v >= 0.0));
    // Logits are the mean of the last (ReLU'd) map.
    let acts = m.pass().capture(LayerName::Conv(7)).run(&x).unwrap();
    let mean = acts.get(LayerName::Conv(7)).unwrap().mean((2, 3)).unwrap();
    assert_eq!(values(&mean), values(acts.logits.as_ref().unwrap()));
    // Any input size that leaves a map works; batch 1 too.
    assert_eq!(m.forward(&small_input(1, 20)).unwrap().dims(), &[1, 10]);
}

#[test]
fn forward_errors_name_the_problem() {
    let m = model("all-cnn-c", 0);
    let err = m
        .pass()
        .capture(LayerName::Pool(1))
        .run(&small_input(1, 32))
        .unwrap_err();
    assert!(matches!(err, ModelError::NoSuchLayer { .. }), "{err}");
    assert!(err.to_string().contains("conv1..conv9"), "{err}");
    let gray = Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        m.forward(&gray).unwrap_err(),
        ModelError::BadInput { .. }
    ));
    let tiny = small_input(1, 8);
    assert!(matches!(
        m.forward(&tiny).unwrap_err(),
        ModelError::InputTooSmall { .. }
    ));
}

#[test]
fn dropout_is_train_only_seeded_and_at_its_rate() {
    let m = model("all-cnn-c", 0);
    let x = small_input(2, 32);
    let eval1 = values(&m.forward(&x).unwrap());
    let eval2 = values(&m.forward(&x).unwrap());
    assert_eq!(eval1, eval2);
    let t1 = values(&m.forward_train(&x, &mut DropoutRng::new(5, 0)).unwrap());
    let t2 = values(&m.forward_train(&x, &mut DropoutRng::new(5, 0)).unwrap());
    let t3 = values(&m.forward_train(&x, &mut DropoutRng::new(5, 1)).unwrap());
    assert_eq!(t1, t2, "same seed and stream, same masks");
    assert_ne!(t1, t3, "another stream, other masks");
    assert_ne!(t1, eval1);
    let mask = DropoutRng::new(1, 0).mask(100_000, 0.2);
    let zeros = mask.iter().filter(|&&v| v == 0.0).count() as f64 / 1e5;
    assert!((zeros - 0.2).abs() < 0.01, "dropped fraction {zeros}");
    assert!(mask.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6));
}

#[test]
fn weights_round_trip_with_metadata_and_attachments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let m = AllCnn::init(
        ArchSpec::by_name("strided-cnn-a", 100).unwrap(),
        Init::XavierNormal,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let mut meta = WeightsMeta {
        preprocessing: Some(r#"{"kind":"gcn-zca"}"#.to_string()),
        ..Default::default()
    };
    meta.extra.insert("allcnn.train.lr".into(), "0.05".into());
    let names: Vec<String> = (0..100).map(|i| format!("class {i}")).collect();
    meta.set_class_names(&names);
    let record = TrainingRecord {
        step: Some(1234),
        epoch: Some(7),
        val_accuracy: None,
        test_accuracy: Some(0.8125),
    };
    meta.set_training(&record);
    let zca = Tensor::eye(4, DType::F32, &Device::Cpu).unwrap();
    m.save(&path, &meta, &[("preprocess.zca".to_string(), zca)])
        .unwrap();

    assert_eq!(WeightsFile::read_spec(&path).unwrap(), *m.spec());
    let loaded = WeightsFile::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.model.spec(), m.spec());
    assert_eq!(loaded.model.classes(), 100);
    assert_eq!(loaded.meta.preprocessing, meta.preprocessing);
    assert_eq!(loaded.meta.input_size, Some(32));
    assert_eq!(
        loaded.meta.extra.get("allcnn.train.lr").map(String::as_str),
        Some("0.05")
    );
    assert_eq!(loaded.attachments["preprocess.zca"].dims(), &[4, 4]);
    // The typed accessors read back what they wrote, under their keys.
    assert_eq!(loaded.meta.class_names().unwrap(), Some(names));
    assert_eq!(loaded.meta.training(), record);
    assert_eq!(loaded.meta.extra[KEY_TRAIN_STEP], "1234");
    let mut broken = loaded.meta.clone();
    broken
        .extra
        .insert(KEY_CLASS_NAMES.into(), "not json".into());
    broken.extra.insert(KEY_TRAIN_EPOCH.into(), "seven".into());
    assert!(broken.class_names().is_err());
    assert_eq!(broken.training().epoch, None);
    assert_eq!(WeightsMeta::default().class_names().unwrap(), None);
    for ((n1, t1), (n2, t2)) in m.parameters().iter().zip(loaded.model.parameters().iter()) {
        assert_eq!(n1, n2);
        assert_eq!(values(t1), values(t2), "{n1}");
    }
    // Attachments must carry the prefix.
    let bad = m.save(
        dir.path().join("x.safetensors"),
        &meta,
        &[(
            "zca".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        )],
    );
    assert!(bad.is_err());

    // An input size nobody could run (D4 of issue 15) is refused on load,
    // naming the key, before anything is allocated for it.
    let huge = dir.path().join("huge.safetensors");
    let meta = WeightsMeta {
        input_size: Some(100_000),
        ..Default::default()
    };
    m.save(&huge, &meta, &[]).unwrap();
    let e = WeightsFile::load(&huge, &Device::Cpu).unwrap_err();
    assert!(matches!(e, ModelError::BadMetadata { .. }), "{e:?}");
    assert!(e.to_string().contains("allcnn.input_size"), "{e}");
}

/// A copy of the safetensors file `from` at `to` with metadata `key` set
/// to `value`: the edited files the loader must refuse.
fn edit_metadata(from: &std::path::Path, to: &std::path::Path, key: &str, value: &str) {
    let bytes = std::fs::read(from).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header["__metadata__"][key] = serde_json::Value::String(value.to_string());
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + len..]);
    std::fs::write(to, out).unwrap();
}

/// Metadata that contradicts the file's architecture, or describes one
/// that cannot run, is refused naming the key at fault (not another key,
/// not the user's images), and not silently overruled by the spec.
#[test]
fn contradictory_metadata_is_refused_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("w.safetensors");
    let m = AllCnn::init(
        ArchSpec::by_name("strided-cnn-a", 100).unwrap(),
        Init::XavierNormal,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let mut meta = WeightsMeta::default();
    meta.set_class_names(&(0..100).map(|i| format!("c{i}")).collect::<Vec<_>>());
    m.save(&good, &meta, &[]).unwrap();
    WeightsFile::load(&good, &Device::Cpu).unwrap();
    let small = ArchSpec {
        input_size: 8,
        ..m.spec().clone()
    };
    let small = serde_json::to_string(&small).unwrap();
    let cases = [
        ("allcnn.spec", small.as_str(), "conv"),
        (
            "allcnn.model",
            "model-a",
            "the file's `allcnn.spec` is `strided-cnn-a`",
        ),
        ("allcnn.classes", "abc", "invalid digit"),
        ("allcnn.classes", "10", "has 100 classes"),
        (
            KEY_CLASS_NAMES,
            r#"["a","b","c"]"#,
            "3 names for the 100 classes of `strided-cnn-a`",
        ),
        (KEY_CLASS_NAMES, "not json", "not a JSON list of strings"),
    ];
    for (key, value, why) in cases {
        let edited = dir.path().join("edited.safetensors");
        edit_metadata(&good, &edited, key, value);
        let e = WeightsFile::load(&edited, &Device::Cpu).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, ModelError::BadMetadata { key: k, .. } if k == key),
            "{key}: {e:?}"
        );
        assert!(
            text.contains("edited.safetensors") && text.contains(why),
            "{key}: {text}"
        );
    }
}

fn write_raw(path: &std::path::Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

#[test]
fn strict_loading_names_tensor_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let m = model("model-a", 0);
    let spec = m.spec().clone();
    let good: HashMap<String, Tensor> = m.parameters().into_iter().collect();

    // Wrong shape.
    let mut t = good.clone();
    t.insert(
        "conv2.weight".into(),
        Tensor::zeros((192, 96, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("shape.safetensors");
    write_raw(&p, &t);
    let e = WeightsFile::load_as(&p, spec.clone(), &Device::Cpu).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ModelError::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("conv2.weight")
            && msg.contains("[192, 96, 3, 3]")
            && msg.contains("[192, 96, 5, 5]"),
        "{msg}"
    );
    assert!(msg.contains("shape.safetensors"), "{msg}");

    // Missing tensor.
    let mut t = good.clone();
    t.remove("conv4.bias");
    let p = dir.path().join("missing.safetensors");
    write_raw(&p, &t);
    let e = WeightsFile::load_as(&p, spec.clone(), &Device::Cpu).unwrap_err();
    assert!(
        matches!(e, ModelError::MissingTensor { .. }) && e.to_string().contains("conv4.bias"),
        "{e}"
    );

    // Extra tensor.
    let mut t = good.clone();
    t.insert(
        "fc.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("extra.safetensors");
    write_raw(&p, &t);
    let e = WeightsFile::load_as(&p, spec.clone(), &Device::Cpu).unwrap_err();
    assert!(
        matches!(e, ModelError::UnexpectedTensor { .. }) && e.to_string().contains("fc.weight"),
        "{e}"
    );

    // Unusable values (D20 of issue 15): integer weights, a NaN, an inf.
    let shape = good["conv3.bias"].dims().to_vec();
    let n: usize = shape.iter().product();
    let mut nan = vec![0.5f32; n];
    nan[1] = f32::NAN;
    let mut inf = vec![0.5f32; n];
    inf[0] = f32::INFINITY;
    for (label, tensor, expected) in [
        (
            "int",
            Tensor::zeros(shape.clone(), DType::U8, &Device::Cpu).unwrap(),
            "dtype is U8",
        ),
        (
            "nan",
            Tensor::from_vec(nan, shape.clone(), &Device::Cpu).unwrap(),
            "1 of its",
        ),
        (
            "inf",
            Tensor::from_vec(inf, shape.clone(), &Device::Cpu).unwrap(),
            "NaN or infinite",
        ),
    ] {
        let mut t = good.clone();
        t.insert("conv3.bias".into(), tensor);
        let p = dir.path().join(format!("{label}.safetensors"));
        write_raw(&p, &t);
        let e = WeightsFile::load_as(&p, spec.clone(), &Device::Cpu).unwrap_err();
        assert!(matches!(e, ModelError::BadTensor { .. }), "{label}: {e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("conv3.bias") && msg.contains(expected),
            "{msg}"
        );
    }
    // Other float types load (converted to f32).
    let mut t = good.clone();
    let half = t["conv3.bias"].to_dtype(DType::F16).unwrap();
    t.insert("conv3.bias".into(), half);
    let p = dir.path().join("f16.safetensors");
    write_raw(&p, &t);
    WeightsFile::load_as(&p, spec.clone(), &Device::Cpu).unwrap();

    // No metadata: not self-describing, but loads with an explicit spec.
    let p = dir.path().join("plain.safetensors");
    write_raw(&p, &good);
    let e = WeightsFile::load(&p, &Device::Cpu).unwrap_err();
    assert!(matches!(e, ModelError::NotSelfDescribing { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("name its architecture and class count"),
        "{e}"
    );
    WeightsFile::load_as(&p, spec.clone(), &Device::Cpu).unwrap();

    // Truncated file and a file that is not safetensors at all.
    let bytes = std::fs::read(&p).unwrap();
    let p = dir.path().join("truncated.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = WeightsFile::load_as(&p, spec.clone(), &Device::Cpu).unwrap_err();
    assert!(matches!(e, ModelError::NotSafetensors { .. }), "{e}");
    assert!(e.to_string().contains("truncated.safetensors"), "{e}");
    let p = dir.path().join("image.png");
    std::fs::write(&p, b"\x89PNG\r\n\x1a\n not weights at all").unwrap();
    let e = WeightsFile::load_as(&p, spec.clone(), &Device::Cpu).unwrap_err();
    assert!(matches!(e, ModelError::NotSafetensors { .. }), "{e}");
    let e = WeightsFile::load(dir.path().join("nope.safetensors"), &Device::Cpu).unwrap_err();
    assert!(
        matches!(e, ModelError::Io { .. }) && e.to_string().contains("nope.safetensors"),
        "{e}"
    );
}

#[test]
fn parameters_saved_as_f16_load_back_as_their_rounded_f32() {
    let dir = tempfile::tempdir().unwrap();
    let m = model("all-cnn-c", 4);
    let (full, half) = (
        dir.path().join("f32.safetensors"),
        dir.path().join("f16.safetensors"),
    );
    m.save(&full, &WeightsMeta::default(), &[]).unwrap();
    m.save_as(&half, &WeightsMeta::default(), &[], DType::F16)
        .unwrap();
    let (a, b) = (
        std::fs::metadata(&full).unwrap().len(),
        std::fs::metadata(&half).unwrap().len(),
    );
    assert!(b * 10 < a * 6, "f16 file {b} bytes, f32 {a}");
    let loaded = WeightsFile::load(&half, &Device::Cpu).unwrap();
    for ((name, orig), (_, back)) in m.parameters().iter().zip(loaded.model.parameters()) {
        assert_eq!(back.dtype(), DType::F32, "{name}");
        let rounded = orig
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(values(&rounded), values(&back), "{name}");
    }
}

/// `AllCnn::forward` on a CPU with AMX hands activations between direct
/// convolutions as packed bf16 planes; it must give `ForwardPass::logits`'
/// values (one layer at a time, f32 between layers) bit for bit: on
/// All-CNN-C, and on a network with a max-pool, a valid convolution and a
/// 1 x 1 one between the direct layers. Elsewhere both run the same path
/// (said loudly).
#[test]
fn eval_forward_with_planes_handed_on_equals_the_layer_by_layer_pass() {
    use allcnn_models::kernels::conv::{amx_status, AmxStatus};
    use allcnn_models::{ConvBackend, Layer};
    if amx_status() != AmxStatus::Active {
        eprintln!(
            "SKIPPED (in effect): no active AMX tiles ({:?}), so no planes are handed on",
            amx_status()
        );
    }
    let mixed = ArchSpec {
        name: "mixed".into(),
        in_channels: 3,
        input_size: 16,
        layers: vec![
            Layer::Dropout { rate: 0.2 },
            Layer::conv(3, 16, 1),
            Layer::conv(3, 32, 1),
            Layer::conv(3, 33, 2),
            Layer::Dropout { rate: 0.5 },
            Layer::conv(3, 32, 1),
            Layer::MaxPool,
            Layer::conv(3, 24, 1),
            Layer::conv_valid(3, 32, 1),
            Layer::conv(1, 16, 1),
            Layer::conv(1, 7, 1),
        ],
    };
    let all_cnn_c = ArchSpec::by_name("all-cnn-c", 10).unwrap();
    for (spec, side, n) in [(mixed, 16, 3), (all_cnn_c, 32, 2)] {
        let name = spec.name.clone();
        let mut m = AllCnn::init(spec, Init::XavierUniform, 9, &Device::Cpu).unwrap();
        m.set_conv_backend(ConvBackend::WinogradBf16);
        let x = small_input(n, side);
        let fast: Vec<f32> = m
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = m
            .pass()
            .logits(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(fast.len(), want.len(), "{name}");
        assert!(
            want.iter().any(|&v| v != 0.0),
            "{name}: every logit is 0, a vacuous test"
        );
        for (i, (a, b)) in fast.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{name}: logit {i}: {a} against {b}"
            );
        }
        // With trainable parameters autograd must see the pass.
        m.make_trainable().unwrap();
        let y = m.forward(&x).unwrap();
        assert!(
            y.track_op(),
            "{name}: a trainable model's logits lost the graph"
        );
        let again: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(again, want, "{name}: trainable");
        // Detached, the same parameters take the inference path again,
        // record no graph and give the same values.
        let d = m.detach().forward(&x).unwrap();
        assert!(!d.track_op(), "{name}: the detached model recorded a graph");
        let detached: Vec<f32> = d.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(detached, want, "{name}: detached");
    }
}

#[test]
fn a_header_is_read_without_the_data_and_a_cut_file_is_refused() {
    use allcnn_models::SafetensorsHeader;
    let dir = tempfile::tempdir().unwrap();
    // A file written by hand: one 2x2 f32 tensor (16 bytes) and metadata.
    let json = br#"{"__metadata__":{"allcnn.model":"x"},"b":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"a":{"dtype":"F32","shape":[0],"data_offsets":[16,16]}}"#;
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json);
    bytes.extend_from_slice(&[0u8; 16]);
    let path = dir.path().join("t.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let h = SafetensorsHeader::read(&path).unwrap();
    assert_eq!(h.tensors, ["a", "b"]);
    assert_eq!(h.metadata.len(), 1);
    assert_eq!(h.metadata["allcnn.model"], "x");

    // As a saved model's: the same names and metadata as the safetensors
    // crate's parse of the whole file.
    let w = dir.path().join("w.safetensors");
    let mut meta = WeightsMeta::default();
    meta.extra
        .insert(KEY_CLASS_NAMES.into(), r#"["cat","dog"]"#.into());
    model("all-cnn-a", 3).save(&w, &meta, &[]).unwrap();
    let h = SafetensorsHeader::read(&w).unwrap();
    let whole = std::fs::read(&w).unwrap();
    let (_, parsed) = safetensors::SafeTensors::read_metadata(&whole).unwrap();
    assert_eq!(&h.metadata, parsed.metadata().as_ref().unwrap());
    let mut names: Vec<String> = parsed.tensors().into_keys().collect();
    names.sort();
    assert_eq!(h.tensors, names);
    assert_eq!(h.metadata[KEY_CLASS_NAMES], r#"["cat","dog"]"#);

    // Cut short by one byte, a header length past the end, and not a
    // safetensors file at all: refused, naming the file.
    for (name, bytes) in [
        ("cut", bytes[..bytes.len() - 1].to_vec()),
        (
            "long",
            [u64::MAX.to_le_bytes().to_vec(), b"{}".to_vec()].concat(),
        ),
        ("text", b"hello, world".to_vec()),
        ("tiny", b"abc".to_vec()),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        match SafetensorsHeader::read(&p) {
            Err(e @ ModelError::NotSafetensors { .. }) => {
                assert!(e.to_string().contains(&p.display().to_string()), "{e}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(matches!(
        SafetensorsHeader::read(&dir.path().join("missing")),
        Err(ModelError::Io { .. })
    ));
}
