//! The recorded-preprocessing reader (the `allcnn.preprocessing` metadata of
//! a weights file) must never panic, whatever the JSON: it returns a
//! preprocessing or an error.
#![no_main]

use std::collections::HashMap;

use allcnn_data::Preprocessing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = std::str::from_utf8(data) {
        let _ = Preprocessing::from_parts(json, &HashMap::new());
    }
});
