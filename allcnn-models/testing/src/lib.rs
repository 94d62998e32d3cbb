//! Test support shared by the allcnn crates' own tests (not published:
//! `publish = false`, a path-only dev-dependency that `cargo publish`
//! strips): the PyTorch/Captum golden fixtures and tolerance checks, the
//! one locator of every fixture outside the repository, and a mock Hugging
//! Face Hub ([`mock_hub`]).
//!
//! The fixtures live outside the repository, in `../shared` next to the
//! workspace. Where a fixture is absent (a user's clone), [`Golden::load`]
//! and [`cifar10_jpg`] print a loud notice and return `None` so the test can
//! skip; with [`REQUIRE_FIXTURES`] set (CI) they panic instead.
//!
//! [`test_device!`] runs one test body on the CPU and, in a build with the
//! `cuda` or `metal` feature, on that device too, so the suite checks the
//! GPU claims wherever a GPU is present:
//!
//! ```text
//! fn relu_is_strict(dev: &candle_core::Device) { /* ... */ }
//! allcnn_testing::test_device!(relu_is_strict); // relu_is_strict::cpu, ::cuda, ::metal
//! ```

#![warn(missing_docs)]

pub mod mock_hub;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use allcnn_models::{ArchSpec, WeightsFile};

/// The models the golden folder holds.
pub const GOLDEN_MODELS: &[&str] = &["all-cnn-c", "model-c", "strided-cnn-b"];

/// The environment variable that turns a missing fixture from a loud skip
/// into a failure: CI sets it (`.ci/run`), so nothing passes by skipping.
pub const REQUIRE_FIXTURES: &str = "ALLCNN_REQUIRE_FIXTURES";

/// Reports a missing fixture: panics when [`REQUIRE_FIXTURES`] is set,
/// otherwise prints a loud SKIPPED notice (the caller then returns).
///
/// # Panics
/// When [`REQUIRE_FIXTURES`] is set.
pub fn missing_fixture(what: &str, path: &Path, hint: &str) {
    if std::env::var_os(REQUIRE_FIXTURES).is_some() {
        panic!(
            "{what} not found at {} ({hint}), and {REQUIRE_FIXTURES} is set: a test may not pass by skipping",
            path.display()
        );
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: {what} not found at {} ({hint}); this test proves nothing on this machine !!!!!!!!\n",
        path.display()
    );
}

/// Generates `#[test]`s that call `fn NAME(dev: &candle_core::Device)` on
/// each device of the build: `NAME::cpu` always, `NAME::cuda` with the
/// calling crate's `cuda` feature, `NAME::metal` with its `metal` feature.
/// A build with a GPU feature on a machine without that GPU fails those
/// tests ([`gpu_device`]) rather than passing them by skipping.
#[macro_export]
macro_rules! test_device {
    ($name:ident) => {
        mod $name {
            #[test]
            fn cpu() {
                super::$name(&candle_core::Device::Cpu)
            }
            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                super::$name(&$crate::gpu_device("cuda"))
            }
            #[cfg(feature = "metal")]
            #[test]
            fn metal() {
                super::$name(&$crate::gpu_device("metal"))
            }
        }
    };
}

/// Device 0 of `kind` (`"cuda"` or `"metal"`), for [`test_device!`].
///
/// # Panics
/// When the device cannot be opened (no GPU, no driver, or a build without
/// the feature), with what to do about it.
pub fn gpu_device(kind: &str) -> Device {
    let opened = match kind {
        "cuda" => Device::new_cuda(0),
        "metal" => Device::new_metal(0),
        other => panic!("gpu_device: unknown kind `{other}` (cuda or metal)"),
    };
    opened.unwrap_or_else(|e| {
        panic!(
            "this test build has the `{kind}` feature but {kind} device 0 cannot be opened ({e}); \
             run the GPU tests on a machine with one, or build without the feature"
        )
    })
}

/// `<workspace>/../shared`: where the fixtures outside the repository live.
pub fn shared_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// The golden folder: `$ALLCNN_GOLDEN` or `<workspace>/../shared/golden`.
pub fn golden_root() -> PathBuf {
    if let Some(p) = std::env::var_os("ALLCNN_GOLDEN") {
        return PathBuf::from(p);
    }
    shared_root().join("golden")
}

/// The CIFAR-10 image folder (`train/` and `test/`, 60,000 JPEGs):
/// `$ALLCNN_CIFAR10` or `<workspace>/../shared/data/cifar10-jpg`; `None`
/// after a loud notice (a panic under [`REQUIRE_FIXTURES`]) when absent.
pub fn cifar10_jpg() -> Option<PathBuf> {
    let dir = std::env::var_os("ALLCNN_CIFAR10")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared_root().join("data/cifar10-jpg"));
    if dir.join("train").is_dir() && dir.join("test").is_dir() {
        Some(dir)
    } else {
        missing_fixture("the CIFAR-10 image folder", &dir, "set ALLCNN_CIFAR10");
        None
    }
}

/// One model's fixtures.
pub struct Golden {
    /// The model's registry name.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// `weights.safetensors` loaded as the model (on the device it was
    /// loaded for).
    pub weights: WeightsFile,
    /// Every tensor of `expected.safetensors` (on the same device).
    pub expected: HashMap<String, Tensor>,
    /// `meta.json`.
    pub meta: serde_json::Value,
}

impl Golden {
    /// Loads `name`'s fixtures, or prints a loud SKIP notice and returns
    /// `None` when the golden folder is absent.
    ///
    /// # Panics
    /// When the folder exists but its files cannot be read: that is a real
    /// failure, not a reason to skip.
    pub fn load(name: &str) -> Option<Self> {
        Self::load_on(name, &Device::Cpu)
    }

    /// As [`Golden::load`], with the weights and tensors on `device`.
    ///
    /// # Panics
    /// As [`Golden::load`].
    pub fn load_on(name: &str, device: &Device) -> Option<Self> {
        let dir = golden_root().join(name);
        if !dir.is_dir() {
            missing_fixture("golden fixtures", &dir, "set ALLCNN_GOLDEN");
            return None;
        }
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("meta.json")).expect("read meta.json"),
        )
        .expect("parse meta.json");
        let classes = meta["classes"].as_u64().expect("meta.classes") as usize;
        let spec = ArchSpec::by_name(name, classes).expect("registered model");
        let weights = WeightsFile::load_as(dir.join("weights.safetensors"), spec, device)
            .expect("load golden weights");
        let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), device)
            .expect("load expected.safetensors");
        Some(Self {
            name: name.to_string(),
            dir,
            weights,
            expected,
            meta,
        })
    }

    /// The expected tensor `key`.
    ///
    /// # Panics
    /// When the fixture has no such tensor.
    pub fn get(&self, key: &str) -> &Tensor {
        self.expected
            .get(key)
            .unwrap_or_else(|| panic!("{}: no `{key}` in expected.safetensors", self.name))
    }

    /// The `labels` as a `u32` tensor.
    pub fn labels(&self) -> Tensor {
        self.get("labels")
            .to_dtype(DType::U32)
            .expect("labels as u32")
    }
}

/// `n` values in `[-1, 1)` from a xorshift64 stream started at `seed`: test
/// inputs that need no RNG crate and are the same on every platform and
/// device.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// `max |got - want| / max |want|` (0 when both are all zeros).
///
/// # Panics
/// When the shapes differ.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let values = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .expect("tensor values as f64")
    };
    let (g, w) = (values(got), values(want));
    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = g
        .iter()
        .zip(&w)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// Asserts `rel_err(got, want) <= tol`, naming `what`.
///
/// # Panics
/// When the tolerance is exceeded or the shapes differ.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.1e}");
    eprintln!("{what}: rel err {e:.2e}");
}

#[cfg(test)]
mod tests {
    /// A GPU test on a machine without that GPU fails, naming the device
    /// and what to do (Metal never opens off macOS).
    #[cfg(not(target_os = "macos"))]
    #[test]
    #[should_panic(expected = "metal device 0 cannot be opened")]
    fn a_missing_gpu_fails_loudly() {
        super::gpu_device("metal");
    }
}
