//! The weights-file loader must never panic, whatever the bytes (header,
//! metadata, `allcnn.spec`, tensors): it returns a model whose parameters
//! match its spec, or an error.
#![no_main]

use allcnn_models::WeightsFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = WeightsFile::from_bytes(data, "fuzz.safetensors", &candle_core::Device::Cpu) {
        assert_eq!(w.model.parameters().len(), 2 * w.model.spec().convs().len());
    }
});
