//! Per-thread scratch buffers kept from one call to the next.
//!
//! A training step runs every convolution three times (forward, input and
//! weight gradient), each on rayon's threads with a few MB of buffers per
//! thread: im2col columns, packed GEMM panels, Winograd tiles. Made afresh
//! in every call (`for_each_init`, once per rayon split), each costs an
//! allocation and zero-filling on every step; kept in a per-thread pool, a
//! buffer is allocated once per thread and only grows to the largest layer.
//! The pools live as long as their threads (rayon's workers: the process).
//!
//! Buffers are taken out of the pool for the duration of a call, not
//! borrowed, so a call nested in another on the same thread (rayon work
//! stealing inside a parallel GEMM) simply gets a second buffer.

use std::cell::RefCell;
use std::thread::LocalKey;

/// A thread's spare buffers of one kind.
pub(super) type Pool<T> = RefCell<Vec<T>>;

/// The most spare buffers a pool keeps: one per level of nesting that rayon
/// produces in practice; more are dropped on return.
const KEEP: usize = 4;

/// Runs `f` with a buffer from this thread's `pool` (a default one when the
/// pool is empty: the thread's first call, or a call nested in another)
/// and puts the buffer back afterwards.
pub(super) fn with<T: Default + 'static, R>(
    pool: &'static LocalKey<Pool<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut item = pool.with_borrow_mut(Vec::pop).unwrap_or_default();
    let out = f(&mut item);
    pool.with_borrow_mut(|spare| {
        if spare.len() < KEEP {
            spare.push(item);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static TEST: Pool<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer comes back with its allocation from the previous call on
    /// the same thread; a nested call gets a different buffer, and both
    /// are kept.
    #[test]
    fn buffers_are_reused_and_nested_calls_get_their_own() {
        let first = with(&TEST, |v: &mut Vec<f32>| {
            v.resize(1000, 1.0);
            v.as_ptr()
        });
        let (outer, inner) = with(&TEST, |v| {
            assert!(v.capacity() >= 1000, "the allocation was not kept");
            let inner = with(&TEST, |w| {
                assert_eq!(w.capacity(), 0, "a nested call got a used buffer");
                w.resize(10, 2.0);
                w.as_ptr()
            });
            (v.as_ptr(), inner)
        });
        assert_eq!(first, outer);
        assert_ne!(outer, inner);
        assert_eq!(TEST.with_borrow(Vec::len), 2);
        // No more than KEEP spares survive deep nesting.
        fn nest(depth: usize) {
            if depth > 0 {
                with(&TEST, |_| nest(depth - 1));
            }
        }
        nest(2 * KEEP);
        assert_eq!(TEST.with_borrow(Vec::len), KEEP);
    }
}
