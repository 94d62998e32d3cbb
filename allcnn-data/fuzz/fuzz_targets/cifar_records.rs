//! The CIFAR record parser must never panic, whatever the bytes: it either
//! returns records whose counts add up, or an error.
#![no_main]

use allcnn_data::{cifar::parse_cifar_records, CifarKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [CifarKind::Cifar10, CifarKind::Cifar100] {
        if let Ok(records) = parse_cifar_records(data, kind, std::path::Path::new("fuzz.bin")) {
            assert_eq!(records.len() * kind.record_len(), data.len());
        }
    }
});
