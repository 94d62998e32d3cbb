//! The training-config parser and its validation must never panic, whatever
//! the text: a config that parses either validates or names the field at
//! fault.
#![no_main]

use allcnn_train::TrainConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = TrainConfig::from_toml(text, "fuzz.toml") {
            let _ = c.validate();
        }
    }
});
