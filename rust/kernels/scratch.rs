//! Per-thread buffers the tile kernels reuse from call to call, so a prompt's product does not allocate and zero its tile buffers once per piece of work.
//!
//! A prompt's product is cut into pieces that threads claim one at a time, and every piece
//! used to allocate and zero up to a megabyte of decoded tiles: at sixteen to sixty-four
//! rows that cost about as much as the arithmetic. Kernels rewrite these buffers before
//! they read them, so stale contents from an earlier call are never seen; the types kept
//! here are plain integers and floats, for which any bytes are a valid value.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::__m512i;
use std::cell::RefCell;

/// Plain data laid out in whole 64-byte lines: any bit pattern is a valid value.
///
/// # Safety
/// Implementors must have size a multiple of 64, alignment at most 64, and no invalid bit
/// patterns (integers, floats and arrays of them).
pub unsafe trait Plain: Copy {}

/// How many separate buffers a kernel may hold at once.
pub const BUFFERS: usize = 3;

thread_local! {
    static LINES: RefCell<[Vec<__m512i>; BUFFERS]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

fn view<T: Plain>(lines: &mut Vec<__m512i>, len: usize) -> &mut [T] {
    assert!(std::mem::size_of::<T>().is_multiple_of(64) && std::mem::align_of::<T>() <= 64);
    let needed = len * std::mem::size_of::<T>() / 64;
    if lines.len() < needed {
        // SAFETY: an all-zero __m512i is valid; only growth is ever zeroed.
        lines.resize(needed, unsafe { std::mem::zeroed() });
    }
    // SAFETY: the lines hold at least len · size_of::<T>() bytes, 64-byte aligned; `Plain`
    // promises every byte pattern is a valid T.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut T, len) }
}

/// Runs `f` with this thread's three buffers as `a`, `b` and `c` values of their types.
/// Contents are whatever an earlier call left. Not reentrant: `f` must not call `with`.
pub fn with<A: Plain, B: Plain, C: Plain, R>(
    a: usize,
    b: usize,
    c: usize,
    f: impl FnOnce(&mut [A], &mut [B], &mut [C]) -> R,
) -> R {
    LINES.with(|cell| {
        let mut lines = cell.borrow_mut();
        let [la, lb, lc] = &mut *lines;
        f(view(la, a), view(lb, b), view(lc, c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Line([u32; 16]);
    unsafe impl Plain for Line {}

    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Two([u8; 128]);
    unsafe impl Plain for Two {}

    #[test]
    fn buffers_are_separate_sized_and_kept() {
        with::<Line, Two, Line, _>(3, 2, 0, |a, b, c| {
            assert_eq!((a.len(), b.len(), c.len()), (3, 2, 0));
            a[2].0[15] = 7;
            b[1].0[127] = 9;
        });
        // The same thread sees its buffers again, grown where asked, contents kept.
        with::<Line, Two, Line, _>(4, 1, 1, |a, b, c| {
            assert_eq!(a[2].0[15], 7);
            assert_eq!(a[3].0[0], 0);
            assert_eq!((b.len(), c.len()), (1, 1));
        });
        // Another thread has its own.
        std::thread::spawn(|| {
            with::<Line, Two, Line, _>(3, 0, 0, |a, _, _| assert_eq!(a[2].0[15], 0));
        })
        .join()
        .unwrap();
    }
}
