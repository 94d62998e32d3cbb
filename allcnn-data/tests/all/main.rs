//! Integration tests of allcnn-data, one binary (link once).

mod augment;
mod cifar;
mod download;
mod folder;
mod loader;
mod preprocess;
mod real_data;
mod util;
