//! Named random streams derived from one run seed.
//!
//! Every random choice of the allcnn crates (weight initialisation, dropout
//! masks, shuffling, augmentation, splits and samples, SmoothGrad noise,
//! sanity-check randomisation, random pixel orders) comes from
//! [`rng`]`(seed, stream, a, b)`: a ChaCha8 generator whose 32-byte key is
//! the seed, two indices `a` and `b` (e.g. epoch and example, or training
//! step) and the [`Stream`]'s 8-byte tag. Streams are independent by
//! construction: no two of them, and no two index pairs of one, share a
//! key. A stream can be recreated at any position from its indices alone,
//! which is what makes resumed training bit-identical.
//!
//! ```
//! use allcnn_seed::{rng, Stream};
//! use rand_chacha::rand_core::RngCore;
//!
//! let mut a = rng(42, Stream::Dropout, 7, 0);
//! let mut b = rng(42, Stream::Dropout, 7, 0);
//! assert_eq!(a.next_u64(), b.next_u64());
//! assert_ne!(rng(42, Stream::Init, 0, 0).next_u64(), rng(42, Stream::Dropout, 0, 0).next_u64());
//! ```
#![warn(missing_docs)]

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The named streams, one per kind of random choice. The tag is part of the
/// generator's key; changing one changes every number its stream draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stream {
    /// Weight initialisation (`a`, `b` unused).
    Init,
    /// Dropout masks: `a` is the training step.
    Dropout,
    /// The order of an epoch's examples: `a` is the epoch.
    Shuffle,
    /// Augmentation parameters: `a` is the epoch, `b` the example.
    Augment,
    /// A train/validation split.
    Split,
    /// A random sample of a data set: `a` names which (e.g. 0 for training
    /// data, 1 for test data).
    Subset,
    /// Input noise (SmoothGrad): `a` is the batch.
    Noise,
    /// Re-initialised weights of a sanity check: `a` is the layer, `b` the
    /// repetition.
    Randomize,
    /// Random pixel orders (deletion/insertion baselines).
    PixelOrder,
    /// A permutation of the training labels (the data-randomisation sanity
    /// check's model; `a`, `b` unused).
    Labels,
    /// Feature orders of Shapley value sampling: `a` is the image.
    Permutation,
}

impl Stream {
    /// The 8-byte tag of this stream in the generator's key.
    pub const fn tag(self) -> [u8; 8] {
        match self {
            Stream::Init => *b"allcnnIn",
            Stream::Dropout => *b"allcnnDr",
            Stream::Shuffle => *b"allcnnSh",
            Stream::Augment => *b"allcnnAu",
            Stream::Split => *b"allcnnSp",
            Stream::Subset => *b"allcnnSu",
            Stream::Noise => *b"allcnnNo",
            Stream::Randomize => *b"allcnnRa",
            Stream::PixelOrder => *b"allcnnPx",
            Stream::Labels => *b"allcnnLa",
            Stream::Permutation => *b"allcnnPe",
        }
    }
}

/// The generator of `stream` at indices `a` and `b` for the run `seed`.
pub fn rng(seed: u64, stream: Stream, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&a.to_le_bytes());
    key[16..24].copy_from_slice(&b.to_le_bytes());
    key[24..].copy_from_slice(&stream.tag());
    ChaCha8Rng::from_seed(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::RngCore;

    const ALL: [Stream; 11] = [
        Stream::Init,
        Stream::Dropout,
        Stream::Shuffle,
        Stream::Augment,
        Stream::Split,
        Stream::Subset,
        Stream::Noise,
        Stream::Randomize,
        Stream::PixelOrder,
        Stream::Labels,
        Stream::Permutation,
    ];

    fn first(seed: u64, s: Stream, a: u64, b: u64) -> [u64; 2] {
        let mut r = rng(seed, s, a, b);
        [r.next_u64(), r.next_u64()]
    }

    #[test]
    fn tags_are_distinct() {
        let mut tags: Vec<[u8; 8]> = ALL.iter().map(|s| s.tag()).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), ALL.len());
    }

    #[test]
    fn same_key_same_numbers_any_other_key_other_numbers() {
        let mut seen = std::collections::HashSet::new();
        for s in ALL {
            assert_eq!(first(42, s, 3, 5), first(42, s, 3, 5));
            for (seed, a, b) in [(42, 3, 5), (43, 3, 5), (42, 4, 5), (42, 3, 6), (42, 5, 3)] {
                assert!(seen.insert(first(seed, s, a, b)), "{s:?} {seed} {a} {b}");
            }
        }
    }

    #[test]
    fn key_layout_is_seed_indices_tag() {
        // The layout is a format: runs made before this crate existed used
        // it for augmentation and shuffling, and resumed runs rely on it.
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&7u64.to_le_bytes());
        key[8..16].copy_from_slice(&2u64.to_le_bytes());
        key[16..24].copy_from_slice(&9u64.to_le_bytes());
        key[24..].copy_from_slice(b"allcnnAu");
        let mut expected = ChaCha8Rng::from_seed(key);
        let mut got = rng(7, Stream::Augment, 2, 9);
        assert_eq!(got.next_u64(), expected.next_u64());
    }
}
