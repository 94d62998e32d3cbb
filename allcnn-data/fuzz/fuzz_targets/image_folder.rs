//! The image-folder reader must never panic on a file's bytes: decoding
//! returns an image of the size its header claims, or an error naming the
//! file; opening a folder that holds the file (headers read at open time)
//! and reading it back does the same.
#![no_main]

use std::path::Path;

use allcnn_data::{folder::decode_image_bytes, Dataset, FolderOptions, ImageFolder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_image_bytes(data, Path::new("fuzz.png")) {
        assert_eq!(img.as_chw().len(), img.channels() * img.height() * img.width());
    }
    let root = std::env::temp_dir().join(format!("allcnn-fuzz-folder-{}", std::process::id()));
    let class = root.join("only");
    std::fs::create_dir_all(&class).unwrap();
    std::fs::write(class.join("x.png"), data).unwrap();
    if let Ok(folder) = ImageFolder::open(&root, FolderOptions::default()) {
        let _ = folder.get(0);
    }
});
