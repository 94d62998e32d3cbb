//! Borrowing the data of a contiguous CPU tensor: the one place kernels turn
//! a `(CpuStorage, Layout)` into a slice.

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};

/// Where the elements of a contiguous tensor laid out by `l` lie in its
/// storage; `what` (the op's name) goes into the error for a strided one.
fn span(l: &Layout, what: &str) -> candle_core::Result<Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(a..b),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// The elements of a contiguous tensor laid out by `l` in `data`; `what`
/// (the op's name) goes into the error for a strided one.
pub(crate) fn contiguous<'a, T>(
    data: &'a [T],
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    Ok(&data[span(l, what)?])
}

/// As [`contiguous`], for f32 storage (an error naming `what` and the dtype
/// for any other).
pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32, got {:?}", s.dtype());
    };
    contiguous(v, l, what)
}

/// The mutable form of [`f32_slice`], for in-place ops.
pub(crate) fn f32_slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let dtype = s.dtype();
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32, got {dtype:?}");
    };
    Ok(&mut v[span(l, what)?])
}
