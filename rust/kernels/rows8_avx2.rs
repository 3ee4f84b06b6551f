//! AVX2 block dots eight output rows at a time: each row's blocks fold into its own lane of one register, in `portable_dot`'s order with its operations, so the results are its bits.
//!
//! On CPUs without AVX-512, `portable_dot::tile` folds a row's blocks one after another, and
//! each fused multiply-add waits for the one before it: decode was bound by that chain, not
//! by memory. Here eight rows advance together. A block's integer dot is exact whichever
//! instructions compute it (`vpmaddubsw` sums two products of at most 63 · 127 or, for Q8_0's
//! signed values, 128 · 127, below the i16 limit; activations stay within ±127). The float
//! steps per lane are the scalar ones: the product of the two scales rounded once, the integer
//! sum converted to f32, one fused multiply-add per term.

#![cfg(target_arch = "x86_64")]
// Index loops over rows and chunks read closer to the register layout than iterator chains.
#![allow(clippy::needless_range_loop)]

use super::activations::{Activations, Q8KRows};
use super::blocks::{decode_block32, decode_superblock};
use super::ggml::{read_u16, BlockWeight, GgmlType, QK32, QK_K};
use std::arch::x86_64::*;

/// Output rows per call.
pub const ROWS: usize = 8;

/// Tokens from which `blocks32` regroups each block by row (`groups_by_row`): the regrouping
/// costs 24 shuffles per block and saves about a dozen operations per token.
const LANES_MIN_TOKENS: usize = 3;

/// Activation rows whose accumulators stay live while a block's eight rows are in registers.
const TOKENS: usize = 32;

/// Whether `rows8` takes this weight type on this CPU (every block format; floats stay portable).
pub fn handles(ty: GgmlType) -> bool {
    static F16C: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !ty.is_float() && *F16C.get_or_init(|| std::is_x86_feature_detected!("f16c"))
}

/// Rows `r0..r0 + 8` of `w` for every activation row, written to `out` [acts.rows, w.n_out].
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `r0 + 8 <= w.n_out`; `out` points to acts.rows · w.n_out
/// writable values that nothing else writes in these rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows8(w: &BlockWeight, r0: usize, acts: &Activations, out: *mut f32) {
    let mut acc = [_mm256_setzero_ps(); TOKENS];
    for first in (0..acts.rows).step_by(TOKENS) {
        let count = TOKENS.min(acts.rows - first);
        let acc = &mut acc[..count];
        acc.fill(_mm256_setzero_ps());
        // Q4_K by lanes from two tokens: a 1B-shaped two-row step took 48.6-48.8 against
        // 50.5-51.8 ms by rows. Q6_K by rows up to two (equal at two tokens).
        let by_row = match w.ty {
            GgmlType::Q4K => count < 2,
            GgmlType::Q6K => count < LANES_MIN_TOKENS,
            _ => false,
        };
        if by_row {
            // The token count is a constant in each copy, so the sums stay in registers.
            unsafe {
                match (w.ty == GgmlType::Q6K, count) {
                    (true, 1) => superblocks_by_row::<true, 1>(w, r0, acts, first, acc),
                    (true, _) => superblocks_by_row::<true, 2>(w, r0, acts, first, acc),
                    (false, _) => superblocks_by_row::<false, 1>(w, r0, acts, first, acc),
                }
            }
        } else if matches!(w.ty, GgmlType::Q4K | GgmlType::Q6K) {
            unsafe {
                if w.ty == GgmlType::Q6K {
                    superblocks_by_lanes::<true>(w, r0, acts, first, acc)
                } else {
                    superblocks_by_lanes::<false>(w, r0, acts, first, acc)
                }
            }
        } else if w.ty == GgmlType::Q5K {
            unsafe { superblocks(w, r0, acts, first, acc) };
        } else {
            // One copy per format: a match on the type per row and block cost as much as
            // the products of one token.
            let lanes = count >= LANES_MIN_TOKENS;
            if !lanes && w.ty == GgmlType::Q8_0 {
                // Q8_0 has the most bytes per product: read in memory order, it ran at
                // 14 GB/s from DRAM against 8.3-8.9 side by side (576-wide rows, one
                // thread); the 4-bit formats ran 12-14% slower that way.
                unsafe {
                    if count == 1 {
                        q8_0_by_row::<1>(w, r0, acts, first, acc)
                    } else {
                        q8_0_by_row::<2>(w, r0, acts, first, acc)
                    }
                }
            } else {
                unsafe {
                    match (w.ty, lanes) {
                        (GgmlType::Q4_0, true) => blocks32::<true, Q4_0>(w, r0, acts, first, acc),
                        (GgmlType::Q4_0, false) => blocks32::<false, Q4_0>(w, r0, acts, first, acc),
                        (GgmlType::Q4_1, true) => blocks32::<true, Q4_1>(w, r0, acts, first, acc),
                        (GgmlType::Q4_1, false) => blocks32::<false, Q4_1>(w, r0, acts, first, acc),
                        (GgmlType::Q8_0, true) => blocks32::<true, Q8_0>(w, r0, acts, first, acc),
                        (GgmlType::Q8_0, false) => blocks32::<false, Q8_0>(w, r0, acts, first, acc),
                        (_, true) => blocks32::<true, Q5>(w, r0, acts, first, acc),
                        (_, false) => blocks32::<false, Q5>(w, r0, acts, first, acc),
                    }
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            // Rows r0..r0 + 8 of one activation row are adjacent in `out`.
            unsafe { _mm256_storeu_ps(out.add((first + t) * w.n_out + r0), *a) };
        }
    }
}

/// Sixteen bytes of packed 4-bit values as 32 bytes: low nibbles first, then high ones.
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    unsafe {
        let v = _mm_loadu_si128(qs as *const __m128i);
        let low = _mm_set1_epi8(0x0f);
        _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16::<4>(v), low),
            _mm_and_si128(v, low),
        )
    }
}

/// `blocks32`'s formats, as constants its copies are made for (Q5: Q5_0 and Q5_1, told
/// apart at run time).
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;
const Q5: u8 = 3;

/// A 32-value block's values in the form `vpmaddubsw` takes (Q8_0: its signed bytes).
#[inline(always)]
unsafe fn block32<const FORMAT: u8>(ty: GgmlType, bytes: &[u8]) -> __m256i {
    let at = |offset: usize| unsafe { bytes.as_ptr().add(offset) };
    unsafe {
        match FORMAT {
            Q4_0 => nibbles(at(2)),
            Q4_1 => nibbles(at(4)),
            Q8_0 => _mm256_loadu_si256(at(2) as *const __m256i),
            _ => {
                // Q5_0 and Q5_1: the fifth bits are spread over a word; the scalar decoder has them.
                let b = decode_block32(ty, bytes);
                _mm256_loadu_si256(b.q.as_ptr() as *const __m256i)
            }
        }
    }
}

/// The two f16 values of the word at `at` in one block of each of eight rows, as f32 [row 0..8]:
/// every 32-value format starts with its scale (bytes 0-1) and minimum (2-3; garbage where the
/// format has none), and K-quants keep theirs at fixed places.
/// Built in registers: eight 2-byte stores read back as one vector would stall on forwarding.
#[inline(always)]
unsafe fn header_pairs(rows: &[&[u8]; ROWS], at: usize) -> (__m256, __m256) {
    let word = |k: usize| i32::from_le_bytes(rows[k][at..at + 4].try_into().unwrap());
    unsafe {
        let words = _mm256_setr_epi32(
            word(0),
            word(1),
            word(2),
            word(3),
            word(4),
            word(5),
            word(6),
            word(7),
        );
        // Per 128-bit half: the four low halves (scales), then the four high ones (minimums).
        let split = _mm256_shuffle_epi8(
            words,
            _mm256_setr_epi8(
                0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2,
                3, 6, 7, 10, 11, 14, 15,
            ),
        );
        let ordered = _mm256_permute4x64_epi64::<0xD8>(split);
        (
            _mm256_cvtph_ps(_mm256_castsi256_si128(ordered)),
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(ordered)),
        )
    }
}

/// A hint to fetch the line holding `at` (a hint only: any address is allowed).
#[inline(always)]
unsafe fn prefetch(at: *const u8) {
    unsafe { _mm_prefetch::<_MM_HINT_T0>(at as *const i8) }
}

/// Eight f16 values as f32 (exact).
#[inline(always)]
unsafe fn f16x8(bits: &[u16; ROWS]) -> __m256 {
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr() as *const __m128i)) }
}

/// Eight vectors of eight i32 partial sums, one per row, summed into one vector [row 0..8].
///
/// A transpose by blends, in-lane shuffles and adds: `vphaddd` costs three micro-ops on the
/// shuffle pipes, and six of them per token and block were the kernel's bottleneck at 8 rows.
#[inline(always)]
unsafe fn row_sums(p: &[__m256i; ROWS]) -> __m256i {
    // Lanes [a0 + a1, b0 + b1, a2 + a3, b2 + b3, ...]: each row's neighbours, interleaved.
    #[inline(always)]
    unsafe fn pair(a: __m256i, b: __m256i) -> __m256i {
        let own = _mm256_blend_epi32::<0xAA>(a, b);
        let swapped = _mm256_shuffle_epi32::<0xB1>(_mm256_blend_epi32::<0xAA>(b, a));
        _mm256_add_epi32(own, swapped)
    }
    // From two pairs' results: per 128-bit half [a, b, c, d], each that half's sum.
    #[inline(always)]
    unsafe fn quad(ab: __m256i, cd: __m256i) -> __m256i {
        let own = _mm256_blend_epi32::<0xCC>(ab, cd);
        let swapped = _mm256_shuffle_epi32::<0x4E>(_mm256_blend_epi32::<0xCC>(cd, ab));
        _mm256_add_epi32(own, swapped)
    }
    unsafe {
        let low = quad(pair(p[0], p[1]), pair(p[2], p[3]));
        let high = quad(pair(p[4], p[5]), pair(p[6], p[7]));
        // [low's first half, high's second] + [low's second half, high's first].
        _mm256_add_epi32(
            _mm256_blend_epi32::<0xF0>(low, high),
            _mm256_permute2x128_si256::<0x21>(low, high),
        )
    }
}

/// Eight rows' 32-value blocks regrouped: register j holds values 4j..4j + 4 of row k in its
/// lane k (an 8 x 8 transpose of 4-byte groups).
#[inline(always)]
unsafe fn groups_by_row(q: &[__m256i; ROWS]) -> [__m256i; ROWS] {
    // Per 128-bit half (groups 0-3 low, 4-7 high): rows a and b's groups interleaved.
    let lo = |a: usize, b: usize| _mm256_unpacklo_epi32(q[a], q[b]);
    let hi = |a: usize, b: usize| _mm256_unpackhi_epi32(q[a], q[b]);
    let (t0, t1, t2, t3) = (lo(0, 1), hi(0, 1), lo(2, 3), hi(2, 3));
    let (t4, t5, t6, t7) = (lo(4, 5), hi(4, 5), lo(6, 7), hi(6, 7));
    // Rows 0-3 (u0..u3) and 4-7 (u4..u7) of groups j (low half) and j + 4 (high half).
    let (u0, u1) = (_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2));
    let (u2, u3) = (_mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3));
    let (u4, u5) = (_mm256_unpacklo_epi64(t4, t6), _mm256_unpackhi_epi64(t4, t6));
    let (u6, u7) = (_mm256_unpacklo_epi64(t5, t7), _mm256_unpackhi_epi64(t5, t7));
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// One token's integer block dots for eight rows regrouped by `groups_by_row` [row 0..8]:
/// each group of four activation values is broadcast and multiplied by every row's group at
/// once. 4-bit values (at most 15) times activations within ±127 make `vpmaddubsw` pairs of at
/// most 3,810, so eight groups add up in i16 (30,480) before one widening; wider values widen
/// each group.
#[inline(always)]
unsafe fn lane_sums(
    q: &[__m256i; ROWS],
    magnitudes: &[__m256i; ROWS],
    x: *const i8,
    signed: bool,
    four_bit: bool,
    ones: __m256i,
) -> __m256i {
    unsafe {
        let group = |j: usize| {
            let x = _mm256_set1_epi32(std::ptr::read_unaligned(x.add(4 * j) as *const i32));
            let x = if signed { _mm256_sign_epi8(x, q[j]) } else { x };
            _mm256_maddubs_epi16(magnitudes[j], x)
        };
        if four_bit {
            let mut pairs = group(0);
            for j in 1..ROWS {
                pairs = _mm256_add_epi16(pairs, group(j));
            }
            _mm256_madd_epi16(pairs, ones)
        } else {
            let mut sums = _mm256_madd_epi16(group(0), ones);
            for j in 1..ROWS {
                sums = _mm256_add_epi32(sums, _mm256_madd_epi16(group(j), ones));
            }
            sums
        }
    }
}

/// Blocks `at` and `at + block_bytes` of eight 4-bit rows (Q4_0, Q4_1) by lanes, as
/// `groups_by_row` of their `nibbles` would give them: the two blocks' 16 packed bytes side by
/// side in one register per row, one transpose for both (24 shuffles per two blocks, not per
/// block), and the nibbles split after it.
#[inline(always)]
unsafe fn nibble_pair_lanes<const FORMAT: u8>(
    rows: &[&[u8]; ROWS],
    at: usize,
    block_bytes: usize,
) -> ([__m256i; ROWS], [__m256i; ROWS]) {
    let offset = if FORMAT == Q4_0 { 2 } else { 4 };
    let mut packed = [_mm256_setzero_si256(); ROWS];
    for k in 0..ROWS {
        assert!(rows[k].len() >= at + block_bytes + offset + 16);
        let bytes = |from: usize| unsafe {
            _mm_loadu_si128(rows[k].as_ptr().add(from + offset) as *const __m128i)
        };
        packed[k] = _mm256_set_m128i(bytes(at + block_bytes), bytes(at));
    }
    // Register j: packed bytes 4j..4j + 4 of each row; j < 4 the first block's, j >= 4 the
    // second's. A byte's low nibble is value i of its block, its high nibble value 16 + i.
    let lanes = unsafe { groups_by_row(&packed) };
    let low4 = _mm256_set1_epi8(0x0f);
    let mut first = [_mm256_setzero_si256(); ROWS];
    let mut second = [_mm256_setzero_si256(); ROWS];
    for j in 0..4 {
        first[j] = _mm256_and_si256(lanes[j], low4);
        first[4 + j] = _mm256_and_si256(_mm256_srli_epi16::<4>(lanes[j]), low4);
        second[j] = _mm256_and_si256(lanes[4 + j], low4);
        second[4 + j] = _mm256_and_si256(_mm256_srli_epi16::<4>(lanes[4 + j]), low4);
    }
    (first, second)
}

/// `BY_LANES`: each block is regrouped once (`groups_by_row`) so that each token's products
/// land in the rows' own lanes, with no sums across lanes per token; worth it from a few tokens.
// Not inlined: each form gets its own registers and layout (inlined side by side into
// `rows8`, the one-token form ran at half speed).
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blocks32<const BY_LANES: bool, const FORMAT: u8>(
    w: &BlockWeight,
    r0: usize,
    acts: &Activations,
    first: usize,
    acc: &mut [__m256],
) {
    debug_assert!(match FORMAT {
        Q4_0 => w.ty == GgmlType::Q4_0,
        Q4_1 => w.ty == GgmlType::Q4_1,
        Q8_0 => w.ty == GgmlType::Q8_0,
        _ => matches!(w.ty, GgmlType::Q5_0 | GgmlType::Q5_1),
    });
    let with_min = FORMAT == Q4_1 || (FORMAT == Q5 && w.ty == GgmlType::Q5_1);
    let signed = FORMAT == Q8_0;
    let four_bit = FORMAT == Q4_0 || FORMAT == Q4_1;
    let q8 = if with_min {
        acts.q8_1.as_ref()
    } else {
        acts.q8_0.as_ref()
    }
    .expect("activations rounded for this weight type");
    // Q8_0's values are read signed below, so its stored zero point of 128 is already applied.
    let zero = match (FORMAT, w.ty) {
        (Q4_0, _) => 8,
        (Q5, GgmlType::Q5_0) => 16,
        _ => 0,
    };
    let (blocks, block_bytes) = (w.n_in / QK32, w.ty.block_bytes());
    let rows: [&[u8]; ROWS] = std::array::from_fn(|k| w.row(r0 + k));
    let ones = _mm256_set1_epi16(1);
    // Every (token, block) the loop reads, checked once here rather than at each read.
    let end = (first + acc.len()) * blocks;
    assert!(q8.qs.len() >= end * QK32 && q8.d.len() >= end && q8.sum.len() >= end);
    assert!(!with_min || q8.s.len() >= end);
    // The 4-bit formats by lanes regroup two blocks' packed bytes at once: the second's
    // values wait here for the next block.
    let mut pending: Option<[__m256i; ROWS]> = None;
    for b in 0..blocks {
        let mut q = [_mm256_setzero_si256(); ROWS];
        let paired = if BY_LANES && four_bit {
            match pending.take() {
                Some(lanes) => Some(lanes),
                None if b + 1 < blocks => {
                    let (first_lanes, second_lanes) =
                        unsafe { nibble_pair_lanes::<FORMAT>(&rows, b * block_bytes, block_bytes) };
                    pending = Some(second_lanes);
                    Some(first_lanes)
                }
                None => None,
            }
        } else {
            None
        };
        for k in 0..ROWS {
            if paired.is_none() {
                q[k] = unsafe {
                    block32::<FORMAT>(w.ty, &rows[k][b * block_bytes..(b + 1) * block_bytes])
                };
            }
            // The same block of the next eight rows: one group ahead, where a tile continues.
            unsafe {
                prefetch(
                    rows[k]
                        .as_ptr()
                        .wrapping_add(b * block_bytes + ROWS * w.row_bytes),
                )
            };
        }
        // Q8_0: |q| and the activations' signs moved onto q's, for the unsigned operand.
        // Loops here, not closures: a closure is not built with this function's target
        // features, so the intrinsics in it would become calls.
        let mut magnitudes = q;
        if signed && !BY_LANES {
            for k in 0..ROWS {
                magnitudes[k] = _mm256_abs_epi8(q[k]);
            }
        }
        let (d, m) = unsafe { header_pairs(&rows, b * block_bytes) };
        let (q_lanes, magnitude_lanes) = if let Some(lanes) = paired {
            (lanes, lanes)
        } else if BY_LANES {
            let lanes = unsafe { groups_by_row(&q) };
            // |q| per byte commutes with the regrouping: eight `vpabsb` where a second
            // regrouping cost 24 shuffles.
            let mut magnitudes = lanes;
            if signed {
                for j in 0..ROWS {
                    magnitudes[j] = _mm256_abs_epi8(lanes[j]);
                }
            }
            (lanes, magnitudes)
        } else {
            (q, magnitudes)
        };
        for (t, a) in acc.iter_mut().enumerate() {
            let i = (first + t) * blocks + b;
            let at = unsafe { q8.qs.as_ptr().add(i * QK32) };
            let sums = if BY_LANES {
                unsafe { lane_sums(&q_lanes, &magnitude_lanes, at, signed, four_bit, ones) }
            } else {
                let x = unsafe { _mm256_loadu_si256(at as *const __m256i) };
                let mut p = [_mm256_setzero_si256(); ROWS];
                for k in 0..ROWS {
                    let x = if signed { _mm256_sign_epi8(x, q[k]) } else { x };
                    p[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitudes[k], x), ones);
                }
                unsafe { row_sums(&p) }
            };
            // SAFETY (the reads): i < end, checked above.
            let isum = if zero != 0 {
                let shift = zero * unsafe { *q8.sum.get_unchecked(i) };
                _mm256_sub_epi32(sums, _mm256_set1_epi32(shift))
            } else {
                sums
            };
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(unsafe { *q8.d.get_unchecked(i) }));
            *a = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum), *a);
            if with_min {
                let s = unsafe { *q8.s.get_unchecked(i) };
                *a = _mm256_fmadd_ps(m, _mm256_set1_ps(s), *a);
            }
        }
    }
}

/// One or two tokens against eight Q8_0 rows, each row read through in memory order (as
/// `superblocks_by_row`), with `blocks32`'s integer sums and float steps. Q8_0 only: the 4-bit
/// formats have fewer bytes per product, and for them a sum across lanes per 32 values cost
/// more than the order of their reads gained.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_by_row<const TOKENS_N: usize>(
    w: &BlockWeight,
    r0: usize,
    acts: &Activations,
    first: usize,
    acc: &mut [__m256],
) {
    debug_assert_eq!(w.ty, GgmlType::Q8_0);
    let q8 = acts.q8_0.as_ref().expect("activations rounded to Q8_0");
    let (blocks, block_bytes) = (w.n_in / QK32, w.ty.block_bytes());
    let ones = _mm256_set1_epi16(1);
    assert!(acc.len() == TOKENS_N);
    let end = (first + TOKENS_N) * blocks;
    assert!(q8.qs.len() >= end * QK32 && q8.d.len() >= end);
    let mut out = [[0f32; ROWS]; TOKENS_N];
    for k in 0..ROWS {
        let row = w.row(r0 + k);
        assert!(row.len() >= blocks * block_bytes);
        let mut a = [0f32; TOKENS_N];
        for b in 0..blocks {
            let bytes = &row[b * block_bytes..(b + 1) * block_bytes];
            let q = unsafe { block32::<Q8_0>(w.ty, bytes) };
            // |q| and the activations' signs moved onto q's, for the unsigned operand.
            let magnitude = _mm256_abs_epi8(q);
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([
                bytes[0], bytes[1],
            ]) as i32)));
            for (t, a) in a.iter_mut().enumerate() {
                let i = (first + t) * blocks + b;
                let x =
                    unsafe { _mm256_loadu_si256(q8.qs.as_ptr().add(i * QK32) as *const __m256i) };
                let p = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(x, q)),
                    ones,
                );
                let halves =
                    _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
                let pairs = _mm_hadd_epi32(halves, halves);
                let sum = _mm_cvtsi128_si32(_mm_hadd_epi32(pairs, pairs));
                *a = (d * unsafe { *q8.d.get_unchecked(i) }).mul_add(sum as f32, *a);
            }
        }
        for t in 0..TOKENS_N {
            out[t][k] = a[t];
        }
    }
    for (t, a) in acc.iter_mut().enumerate() {
        *a = unsafe { _mm256_loadu_ps(out[t].as_ptr()) };
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn superblocks(
    w: &BlockWeight,
    r0: usize,
    acts: &Activations,
    first: usize,
    acc: &mut [__m256],
) {
    let q8 = acts.q8k.as_ref().expect("activations rounded to Q8_K");
    let q6 = w.ty == GgmlType::Q6K;
    let (blocks, block_bytes) = (w.n_in / QK_K, w.ty.block_bytes());
    let rows: [&[u8]; ROWS] = std::array::from_fn(|k| w.row(r0 + k));
    let mut q = [[0u8; QK_K]; ROWS];
    let mut sc = [[0i32; 16]; ROWS];
    let mut mins = [[0i32; 8]; ROWS];
    for b in 0..blocks {
        let (mut d, mut dmin) = ([0u16; ROWS], [0u16; ROWS]);
        for k in 0..ROWS {
            let bytes = &rows[k][b * block_bytes..(b + 1) * block_bytes];
            (d[k], dmin[k]) =
                unsafe { superblock(w.ty, bytes, &mut q[k], &mut sc[k], &mut mins[k]) };
            // A super-block spans up to four cache lines: ask for each of them.
            let ahead = rows[k]
                .as_ptr()
                .wrapping_add(b * block_bytes + ROWS * w.row_bytes);
            for line in [0, 64, 128, block_bytes - 1] {
                unsafe { prefetch(ahead.wrapping_add(line)) };
            }
        }
        // The i16 multipliers of each 32 values: one scale for both halves (Q4_K, Q5_K) or
        // one per 16 (Q6_K, whose 256-bit `vpmaddubsw` pairs split 8 + 8 the same way).
        let mut scales = [[_mm256_setzero_si256(); 8]; ROWS];
        for k in 0..ROWS {
            for c in 0..8 {
                scales[k][c] = if q6 {
                    _mm256_set_m128i(
                        _mm_set1_epi16(sc[k][2 * c + 1] as i16),
                        _mm_set1_epi16(sc[k][2 * c] as i16),
                    )
                } else {
                    _mm256_set1_epi16(sc[k][2 * c] as i16)
                };
            }
        }
        let shift_scales = if q6 {
            unsafe { shift_scales(&rows, b * block_bytes) }
        } else {
            [_mm256_setzero_si256(); ROWS]
        };
        let (d, dmin) = unsafe { (f16x8(&d), f16x8(&dmin)) };
        for (t, a) in acc.iter_mut().enumerate() {
            let i = (first + t) * blocks + b;
            let x = unsafe { q8.qs.as_ptr().add(i * QK_K) };
            let mut p = [_mm256_setzero_si256(); ROWS];
            for c in 0..8 {
                let xc = unsafe { _mm256_loadu_si256(x.add(32 * c) as *const __m256i) };
                for k in 0..ROWS {
                    let qc =
                        unsafe { _mm256_loadu_si256(q[k].as_ptr().add(32 * c) as *const __m256i) };
                    let pairs = _mm256_maddubs_epi16(qc, xc);
                    p[k] = _mm256_add_epi32(p[k], _mm256_madd_epi16(pairs, scales[k][c]));
                }
            }
            if q6 {
                // Σ_j sc_j · (s_j - 32 · bsum16_j): the zero point's share, by `shift_scales`.
                let bsum = unsafe { bsum16_pairs(q8, i) };
                for k in 0..ROWS {
                    p[k] = _mm256_add_epi32(p[k], _mm256_madd_epi16(shift_scales[k], bsum));
                }
            }
            let sumi = unsafe { row_sums(&p) };
            unsafe { finish_superblock(a, q6, sumi, &mins, None, q8, i, d, dmin) };
        }
    }
}

/// Several tokens (prompts, batched decode; Q4_K from two, Q6_K from three) against eight
/// Q4_K or Q6_K rows: each super-block's values are regrouped once by row (`groups_by_row`),
/// so that each token's four activation bytes, broadcast, meet all eight rows in one
/// `vpmaddubsw` and every sum lands in its row's lane. Side by side (`superblocks`), each token
/// paid two multiplies per row and 32 values, a sum across lanes, and its minimums' sums in
/// scalar code; here it pays about one multiply per row and 32 values. The integer sums are exact, so they are `superblocks`' values, and
/// the float steps are `finish_superblock`'s.
///
/// i16 bounds: Q4_K's values (at most 15) times activations within ±127 make pairs of at most
/// 3,810, so a chunk's eight groups add up in i16 (30,480); Q6_K's (at most 63) make 16,002,
/// so two groups add up before each widening multiply by their scale.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn superblocks_by_lanes<const Q6: bool>(
    w: &BlockWeight,
    r0: usize,
    acts: &Activations,
    first: usize,
    acc: &mut [__m256],
) {
    debug_assert_eq!(Q6, w.ty == GgmlType::Q6K);
    let q8 = acts.q8k.as_ref().expect("activations rounded to Q8_K");
    let (blocks, block_bytes) = (w.n_in / QK_K, w.ty.block_bytes());
    let tokens = acc.len();
    assert!(tokens <= TOKENS);
    let end = (first + tokens) * blocks;
    assert!(q8.qs.len() >= end * QK_K && q8.d.len() >= end);
    assert!(q8.bsum32_pairs.len() >= end * 4 && q8.bsum16.len() >= end * 16);
    let rows: [&[u8]; ROWS] = std::array::from_fn(|k| w.row(r0 + k));
    for k in 0..ROWS {
        assert!(rows[k].len() >= blocks * block_bytes);
    }
    let low4 = _mm256_set1_epi8(0x0f);
    let mut sumi = [_mm256_setzero_si256(); TOKENS];
    let sumi = &mut sumi[..tokens];
    for b in 0..blocks {
        let at = b * block_bytes;
        let load = |k: usize, offset: usize| unsafe {
            _mm256_loadu_si256(rows[k].as_ptr().add(at + offset) as *const __m256i)
        };
        // The next eight rows, where a tile continues, lie in one span after these: ask for
        // an eighth of it per super-block, in the order memory holds it, into L2 (the span
        // and the activations together outgrow L1). Against one super-block of each row,
        // into L1: 2.8 against 3.4 ms for 2,048 x 8,192 Q6_K with 8 tokens from DRAM.
        let next = rows[0].as_ptr().wrapping_add(ROWS * w.row_bytes);
        let span = ROWS * block_bytes;
        for line in (b * span..(b + 1) * span).step_by(64) {
            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(line) as *const i8);
        }
        // The token rows' activations of this super-block.
        let x = |t: usize| unsafe { q8.qs.as_ptr().add(((first + t) * blocks + b) * QK_K) };
        sumi.fill(_mm256_setzero_si256());
        // Q4_K: the minimums as i16 pairs (2p, 2p + 1) per row; Q6_K: -32 · its scales, the
        // same pairs of the sixteen, for the zero point.
        let mut offset_pairs = [_mm256_setzero_si256(); 8];
        let d;
        let mut dmin = _mm256_setzero_ps();
        // Each chunk's values go straight from their regrouping into every token's products,
        // never stored: eight rows' 256 values were 64 stores per super-block.
        if Q6 {
            let mut raw = [_mm_setzero_si128(); ROWS];
            for k in 0..ROWS {
                raw[k] =
                    unsafe { _mm_loadu_si128(rows[k].as_ptr().add(at + 192) as *const __m128i) };
            }
            let by_index = bytes_by_row(&raw);
            for p in 0..8 {
                offset_pairs[p] = _mm256_mullo_epi16(
                    neighbour_pairs::<true>(by_index[p]),
                    _mm256_set1_epi16(-32),
                );
            }
            let mut bits = [0u16; ROWS];
            for k in 0..ROWS {
                bits[k] = read_u16(rows[k], at + 208);
            }
            d = unsafe { f16x8(&bits) };
            let bits45 = _mm256_set1_epi8(0x30);
            for half in 0..2 {
                let low = unsafe { groups_by_row(&std::array::from_fn(|k| load(k, 64 * half))) };
                let next =
                    unsafe { groups_by_row(&std::array::from_fn(|k| load(k, 64 * half + 32))) };
                let high =
                    unsafe { groups_by_row(&std::array::from_fn(|k| load(k, 128 + 32 * half))) };
                for m in 0..4 {
                    let c = 4 * half + m;
                    let mut qc = [_mm256_setzero_si256(); 8];
                    for j in 0..8 {
                        // Four bits from `low` or `next` (low nibbles, then high ones), two
                        // from `high` (bits 2m, 2m + 1), shifted straight to bits 4-5: the
                        // mask after the 16-bit shift keeps each byte's own bits.
                        let v = if m.is_multiple_of(2) { low[j] } else { next[j] };
                        let v = if m < 2 { v } else { _mm256_srli_epi16::<4>(v) };
                        let h = match m {
                            0 => _mm256_slli_epi16::<4>(high[j]),
                            1 => _mm256_slli_epi16::<2>(high[j]),
                            2 => high[j],
                            _ => _mm256_srli_epi16::<2>(high[j]),
                        };
                        qc[j] =
                            _mm256_or_si256(_mm256_and_si256(v, low4), _mm256_and_si256(h, bits45));
                    }
                    let scales = [
                        column_pairs::<true>(&by_index, 2 * c),
                        column_pairs::<true>(&by_index, 2 * c + 1),
                    ];
                    unsafe { chunk_products::<true>(&qc, scales, c, &x, sumi) };
                }
            }
        } else {
            let mut unpacked = [_mm_setzero_si128(); ROWS];
            for k in 0..ROWS {
                unpacked[k] = unsafe { k4_scales_vector(&rows[k][at..at + 16]) };
            }
            let by_index = bytes_by_row(&unpacked);
            for p in 0..4 {
                offset_pairs[p] = neighbour_pairs::<false>(by_index[4 + p]);
            }
            (d, dmin) = unsafe { header_pairs(&rows, at) };
            for pair in 0..4 {
                let packed =
                    unsafe { groups_by_row(&std::array::from_fn(|k| load(k, 16 + 32 * pair))) };
                for half in 0..2 {
                    let c = 2 * pair + half;
                    let mut qc = [_mm256_setzero_si256(); 8];
                    for j in 0..8 {
                        let v = if half == 0 {
                            packed[j]
                        } else {
                            _mm256_srli_epi16::<4>(packed[j])
                        };
                        qc[j] = _mm256_and_si256(v, low4);
                    }
                    let s = column_pairs::<false>(&by_index, c);
                    unsafe { chunk_products::<false>(&qc, [s, s], c, &x, sumi) };
                }
            }
        }
        for (t, a) in acc.iter_mut().enumerate() {
            let i = (first + t) * blocks + b;
            let offsets = if Q6 {
                // Σ_j sc_j · -32 · bsum16_j: the zero point's share.
                let sums = unsafe { bsum16_pairs(q8, i) };
                let mut total = _mm256_setzero_si256();
                for p in 0..8 {
                    let spread = _mm256_permutevar8x32_epi32(sums, _mm256_set1_epi32(p as i32));
                    total = _mm256_add_epi32(total, _mm256_madd_epi16(offset_pairs[p], spread));
                }
                total
            } else {
                // Σ_j min_j · bsum32_j, each pair of activation sums broadcast from memory.
                let mut total = _mm256_setzero_si256();
                for p in 0..4 {
                    let spread = unsafe { broadcast_from_memory(&q8.bsum32_pairs[i * 4 + p]) };
                    total = _mm256_add_epi32(total, _mm256_madd_epi16(offset_pairs[p], spread));
                }
                total
            };
            let (sums, mins_sums) = if Q6 {
                (_mm256_add_epi32(sumi[t], offsets), None)
            } else {
                (sumi[t], Some(offsets))
            };
            unsafe { finish_superblock(a, Q6, sums, &[[0; 8]; ROWS], mins_sums, q8, i, d, dmin) };
        }
    }
}

/// One chunk's products for every token row, added to `sumi` [token]: `qc` holds its 32
/// values by group (4 values) with row k in lane k; `scales` the multipliers of its first and
/// second 16 values (Q4_K: the same); `x(t)` token t's super-block of activations.
#[inline(always)]
unsafe fn chunk_products<const Q6: bool>(
    qc: &[__m256i; 8],
    scales: [__m256i; 2],
    c: usize,
    x: &impl Fn(usize) -> *const i8,
    sumi: &mut [__m256i],
) {
    for (t, sum) in sumi.iter_mut().enumerate() {
        let x = unsafe { x(t).add(32 * c) };
        let group = |j: usize| unsafe {
            let x = _mm256_set1_epi32(std::ptr::read_unaligned(x.add(4 * j) as *const i32));
            _mm256_maddubs_epi16(qc[j], x)
        };
        let products = if Q6 {
            let halves = [
                _mm256_add_epi16(group(0), group(1)),
                _mm256_add_epi16(group(2), group(3)),
                _mm256_add_epi16(group(4), group(5)),
                _mm256_add_epi16(group(6), group(7)),
            ];
            _mm256_add_epi32(
                _mm256_add_epi32(
                    _mm256_madd_epi16(halves[0], scales[0]),
                    _mm256_madd_epi16(halves[1], scales[0]),
                ),
                _mm256_add_epi32(
                    _mm256_madd_epi16(halves[2], scales[1]),
                    _mm256_madd_epi16(halves[3], scales[1]),
                ),
            )
        } else {
            let mut pairs = group(0);
            for j in 1..8 {
                pairs = _mm256_add_epi16(pairs, group(j));
            }
            _mm256_madd_epi16(pairs, scales[0])
        };
        *sum = _mm256_add_epi32(*sum, products);
    }
}

/// Sixteen bytes of each of eight rows, transposed: register p holds byte 2p of rows 0..8,
/// then byte 2p + 1 of rows 0..8.
#[inline(always)]
fn bytes_by_row(r: &[__m128i; ROWS]) -> [__m128i; 8] {
    unsafe {
        // Rows a and b interleaved byte by byte: bytes 0-7, then 8-15.
        let lo = |a: usize, b: usize| _mm_unpacklo_epi8(r[a], r[b]);
        let hi = |a: usize, b: usize| _mm_unpackhi_epi8(r[a], r[b]);
        let (a01, b01, a23, b23) = (lo(0, 1), hi(0, 1), lo(2, 3), hi(2, 3));
        let (a45, b45, a67, b67) = (lo(4, 5), hi(4, 5), lo(6, 7), hi(6, 7));
        // Four rows per byte index: indices 0-3, 4-7, 8-11, 12-15.
        let quads = |x: __m128i, y: __m128i| (_mm_unpacklo_epi16(x, y), _mm_unpackhi_epi16(x, y));
        let (f0, f1) = quads(a01, a23);
        let (f2, f3) = quads(b01, b23);
        let (g0, g1) = quads(a45, a67);
        let (g2, g3) = quads(b45, b67);
        let eight = |x: __m128i, y: __m128i| (_mm_unpacklo_epi32(x, y), _mm_unpackhi_epi32(x, y));
        let (o0, o1) = eight(f0, g0);
        let (o2, o3) = eight(f1, g1);
        let (o4, o5) = eight(f2, g2);
        let (o6, o7) = eight(f3, g3);
        [o0, o1, o2, o3, o4, o5, o6, o7]
    }
}

/// Byte `j` of eight rows (`bytes_by_row`'s) as an i16 pair of it in each row's lane, signed
/// or not: the multiplier `vpmaddwd` takes for a chunk's two i16 sums.
#[inline(always)]
fn column_pairs<const SIGNED: bool>(by_index: &[__m128i; 8], j: usize) -> __m256i {
    unsafe {
        let v = by_index[j / 2];
        let eight = if j.is_multiple_of(2) {
            v
        } else {
            _mm_unpackhi_epi64(v, v)
        };
        let doubled = _mm_unpacklo_epi8(eight, eight);
        if SIGNED {
            _mm256_cvtepi8_epi16(doubled)
        } else {
            _mm256_cvtepu8_epi16(doubled)
        }
    }
}

/// Bytes 2p and 2p + 1 of eight rows (`bytes_by_row`'s register p) as i16 pairs, one row per lane.
#[inline(always)]
fn neighbour_pairs<const SIGNED: bool>(v: __m128i) -> __m256i {
    unsafe {
        let interleaved = _mm_unpacklo_epi8(v, _mm_unpackhi_epi64(v, v));
        if SIGNED {
            _mm256_cvtepi8_epi16(interleaved)
        } else {
            _mm256_cvtepu8_epi16(interleaved)
        }
    }
}

/// The sums per 16 of super-block `i`'s activations (|bsum16| <= 2,032) as i16 in order, each
/// i32 lane a pair j = 2l, 2l + 1, as Q6_K's `shift_scales` has its scales.
#[inline(always)]
unsafe fn bsum16_pairs(q8: &Q8KRows, i: usize) -> __m256i {
    let sums = &q8.bsum16[i * 16..(i + 1) * 16];
    unsafe {
        let at = sums.as_ptr() as *const __m256i;
        let packed = _mm256_packs_epi32(_mm256_loadu_si256(at), _mm256_loadu_si256(at.add(1)));
        _mm256_permute4x64_epi64::<0xD8>(packed)
    }
}

/// Q6_K's zero point of eight rows' super-blocks: -32 · sc_j as i16 (|32 · sc_j| <= 4,096), so
/// that one `vpmaddwd` with `bsum16_pairs` takes its share into each row's sum.
#[inline(always)]
unsafe fn shift_scales(rows: &[&[u8]; ROWS], at: usize) -> [__m256i; ROWS] {
    std::array::from_fn(|k| unsafe {
        let raw = _mm_loadu_si128(rows[k][at + 192..at + 208].as_ptr() as *const __m128i);
        _mm256_mullo_epi16(_mm256_cvtepi8_epi16(raw), _mm256_set1_epi16(-32))
    })
}

/// Adds a super-block's share to a token's eight rows: d · d_x · sumi, and for Q4_K and Q5_K
/// minus dmin · d_x · Σ_j min_j · bsum32_j, each one fused multiply-add, as `portable_dot`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn finish_superblock(
    a: &mut __m256,
    q6: bool,
    sumi: __m256i,
    mins: &[[i32; 8]; ROWS],
    mins_sums: Option<__m256i>,
    q8: &Q8KRows,
    i: usize,
    d: __m256,
    dmin: __m256,
) {
    let dd = _mm256_mul_ps(d, _mm256_set1_ps(q8.d[i]));
    *a = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sumi), *a);
    if !q6 {
        let bsum = &q8.bsum32[i * 8..(i + 1) * 8];
        // Loops, not `from_fn`: its closure would be a call here (see `blocks32`).
        let mut summ = [0i32; ROWS];
        for k in 0..if mins_sums.is_some() { 0 } else { ROWS } {
            for j in 0..8 {
                summ[k] = summ[k].wrapping_add(mins[k][j] * bsum[j]);
            }
        }
        let summ = mins_sums
            .unwrap_or_else(|| unsafe { _mm256_loadu_si256(summ.as_ptr() as *const __m256i) });
        let m = _mm256_xor_ps(
            _mm256_mul_ps(dmin, _mm256_set1_ps(q8.d[i])),
            _mm256_set1_ps(-0.0),
        );
        *a = _mm256_fmadd_ps(m, _mm256_cvtepi32_ps(summ), *a);
    }
}

/// Few tokens (decode): each Q4_K or Q6_K super-block goes straight from its bytes into the
/// products, 32 values at a time (`k_chunk`), where `superblocks` first unpacks eight rows'
/// values and scales for many tokens to reuse. Same integer sums, same float steps.
///
/// One row at a time, from its first super-block to its last: memory is read in the order it
/// lies, which the hardware prefetcher follows. Reading the eight rows side by side, one
/// super-block of each in turn with software prefetches, ran at 65-70% of this speed once the
/// weights came from DRAM rather than cache (one thread, 2,048 x 8,192 Q4_K: 8.0-8.7 against
/// 12.1 GB/s). Each super-block's integer sums are summed across lanes (exact) and its float
/// steps are `finish_superblock`'s, one scalar fused multiply-add each, in the same order.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn superblocks_by_row<const Q6: bool, const TOKENS_N: usize>(
    w: &BlockWeight,
    r0: usize,
    acts: &Activations,
    first: usize,
    acc: &mut [__m256],
) {
    let q8 = acts.q8k.as_ref().expect("activations rounded to Q8_K");
    debug_assert_eq!(Q6, w.ty == GgmlType::Q6K);
    let (blocks, block_bytes) = (w.n_in / QK_K, w.ty.block_bytes());
    let tokens = TOKENS_N;
    assert!(acc.len() == tokens && tokens <= 2);
    let end = (first + tokens) * blocks;
    assert!(q8.qs.len() >= end * QK_K && q8.d.len() >= end);
    assert!(q8.bsum32_pairs.len() >= end * 4 && q8.bsum16.len() >= end * 16);
    let mut out = [[0f32; ROWS]; TOKENS_N];
    // Each Q4_K scale as an i16 pair in one i32, which `vpbroadcastd` spreads straight from
    // memory: a shuffle per 32 values from a register kept the shuffle port the busiest.
    let mut k4_scale_pairs = [0i32; 8];
    for k in 0..ROWS {
        let row = w.row(r0 + k);
        assert!(row.len() >= blocks * block_bytes);
        let mut a = [0f32; TOKENS_N];
        for b in 0..blocks {
            let bytes = &row[b * block_bytes..(b + 1) * block_bytes];
            let mut shift = _mm256_setzero_si256();
            let mut k4_mins = _mm_setzero_si128();
            // Q6_K's sixteen i8 scales as i16, the first eight in both halves, then the rest.
            let mut q6_scales = [_mm256_setzero_si256(); 2];
            if Q6 {
                let all = _mm256_cvtepi8_epi16(unsafe {
                    _mm_loadu_si128(bytes[192..208].as_ptr() as *const __m128i)
                });
                // The zero point: -32 · sc_j as i16 (|32 · sc_j| <= 4,096), for one `vpmaddwd`
                // with the activations' sums per 16.
                shift = _mm256_mullo_epi16(all, _mm256_set1_epi16(-32));
                q6_scales = [
                    _mm256_permute2x128_si256::<0x00>(all, all),
                    _mm256_permute2x128_si256::<0x11>(all, all),
                ];
            } else {
                let both = unsafe { k4_scales_vector(bytes) };
                let s32 = _mm256_cvtepu8_epi32(both);
                let pairs = _mm256_or_si256(s32, _mm256_slli_epi32::<16>(s32));
                unsafe { _mm256_storeu_si256(k4_scale_pairs.as_mut_ptr() as *mut __m256i, pairs) };
                k4_mins = _mm_unpackhi_epi8(both, _mm_setzero_si128());
            }
            // d (and Q4_K's dmin) as f32: Q4_K leads with them, Q6_K ends with its d.
            let header = if Q6 {
                u16::from_le_bytes([bytes[208], bytes[209]]) as u32
            } else {
                u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
            };
            let scales = _mm_cvtph_ps(_mm_cvtsi32_si128(header as i32));
            let (d, dmin) = (
                _mm_cvtss_f32(scales),
                _mm_cvtss_f32(_mm_movehdup_ps(scales)),
            );
            for (t, a) in a.iter_mut().enumerate() {
                let i = (first + t) * blocks + b;
                let x = unsafe { q8.qs.as_ptr().add(i * QK_K) };
                let mut sum = [_mm256_setzero_si256(); 2];
                if Q6 {
                    sum[0] = _mm256_madd_epi16(shift, unsafe { bsum16_pairs(q8, i) });
                }
                for c in 0..8 {
                    let v = unsafe { k_chunk(Q6, bytes, c) };
                    let xc = unsafe { _mm256_loadu_si256(x.add(32 * c) as *const __m256i) };
                    let scale = if Q6 {
                        // One scale per 16 values, as the 256-bit pairs split 8 + 8: scale 2c
                        // spread over the low half, 2c + 1 over the high one. The bytes of i16
                        // lane `lane` of a half, as a `vpshufb` index pair.
                        let pick = |lane: i16| (2 * lane) | ((2 * lane + 1) << 8);
                        let l = (2 * (c % 4)) as i16;
                        let spread =
                            _mm256_set_m128i(_mm_set1_epi16(pick(l + 1)), _mm_set1_epi16(pick(l)));
                        _mm256_shuffle_epi8(q6_scales[c / 4], spread)
                    } else {
                        unsafe { broadcast_from_memory(&k4_scale_pairs[c]) }
                    };
                    let products = _mm256_madd_epi16(_mm256_maddubs_epi16(v, xc), scale);
                    sum[c % 2] = _mm256_add_epi32(sum[c % 2], products);
                }
                let sum = _mm256_add_epi32(sum[0], sum[1]);
                // Q4_K: Σ_j min_j · bsum32_j, one `vpmaddwd` of the eight minimums with the
                // activations' sums per 32 packed as i16 pairs (|bsum32| <= 4,064).
                let mins = if Q6 {
                    _mm_setzero_si128()
                } else {
                    let bsum = unsafe {
                        _mm_loadu_si128(q8.bsum32_pairs.as_ptr().add(i * 4) as *const __m128i)
                    };
                    _mm_madd_epi16(k4_mins, bsum)
                };
                // Both sums across lanes at once: lane 0 the products', lane 1 the minimums'.
                let halves = _mm_add_epi32(
                    _mm256_castsi256_si128(sum),
                    _mm256_extracti128_si256::<1>(sum),
                );
                let pairs = _mm_hadd_epi32(halves, mins);
                let totals = _mm_hadd_epi32(pairs, pairs);
                let dx = q8.d[i];
                *a = (d * dx).mul_add(_mm_cvtsi128_si32(totals) as f32, *a);
                if !Q6 {
                    *a = (-(dmin * dx)).mul_add(_mm_extract_epi32::<1>(totals) as f32, *a);
                }
            }
        }
        for t in 0..tokens {
            out[t][k] = a[t];
        }
    }
    for (t, a) in acc.iter_mut().enumerate() {
        *a = unsafe { _mm256_loadu_ps(out[t].as_ptr()) };
    }
}

/// `value` in every i32 lane, loaded by `vpbroadcastd` from memory: a load port, no shuffle.
/// Written out because the compiler, seeing the stored vector, would otherwise spread it from
/// a register with one or two shuffles per lane.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn broadcast_from_memory(value: &i32) -> __m256i {
    let spread: __m256i;
    unsafe {
        std::arch::asm!(
            "vpbroadcastd {spread}, dword ptr [{at}]",
            spread = out(ymm_reg) spread,
            at = in(reg) value as *const i32,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    spread
}

/// Values 32·c..32·c + 32 of a Q4_K or Q6_K super-block, unsigned, in `superblock`'s order.
#[inline(always)]
unsafe fn k_chunk(q6: bool, bytes: &[u8], c: usize) -> __m256i {
    let load =
        |at: usize| unsafe { _mm256_loadu_si256(bytes[at..at + 32].as_ptr() as *const __m256i) };
    let low4 = _mm256_set1_epi8(0x0f);
    if !q6 {
        let v = load(16 + 32 * (c / 2));
        return if c & 1 == 0 {
            _mm256_and_si256(v, low4)
        } else {
            _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4)
        };
    }
    // Q6_K: four 32-value chunks per half; low 4 bits from the nibbles of 64 bytes, the two
    // high bits from one 32-byte word, two bits per chunk, moved to bits 4-5.
    let (half, m) = (c / 4, c % 4);
    let h = load(128 + 32 * half);
    let h = match m {
        0 => h,
        1 => _mm256_srli_epi16::<2>(h),
        2 => _mm256_srli_epi16::<4>(h),
        _ => _mm256_srli_epi16::<6>(h),
    };
    let high = _mm256_slli_epi16::<4>(_mm256_and_si256(h, _mm256_set1_epi8(3)));
    let v = load(64 * half + 32 * (m % 2));
    let low = if m < 2 {
        _mm256_and_si256(v, low4)
    } else {
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4)
    };
    _mm256_or_si256(low, high)
}

/// Decodes one K-quant super-block into `q` (unsigned values), `sc` (the integer scale of
/// each 16 values), `mins` (of each 32; Q6_K: none), as `blocks::decode_superblock` does;
/// returns the f16 bits of d and dmin.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn superblock(
    ty: GgmlType,
    bytes: &[u8],
    q: &mut [u8; QK_K],
    sc: &mut [i32; 16],
    mins: &mut [i32; 8],
) -> (u16, u16) {
    let load = |at: usize| unsafe { _mm256_loadu_si256(bytes.as_ptr().add(at) as *const __m256i) };
    let store = |q: &mut [u8; QK_K], at: usize, v: __m256i| unsafe {
        _mm256_storeu_si256(q.as_mut_ptr().add(at) as *mut __m256i, v)
    };
    let low4 = _mm256_set1_epi8(0x0f);
    match ty {
        GgmlType::Q4K => {
            let (scales, minimums) = k4_scales(&bytes[4..16]);
            for j in 0..8 {
                (sc[2 * j], sc[2 * j + 1]) = (scales[j] as i32, scales[j] as i32);
                mins[j] = minimums[j] as i32;
            }
            for c in 0..4 {
                let v = load(16 + 32 * c);
                store(q, 64 * c, _mm256_and_si256(v, low4));
                store(
                    q,
                    64 * c + 32,
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4),
                );
            }
            (read_u16(bytes, 0), read_u16(bytes, 2))
        }
        GgmlType::Q6K => {
            for (j, s) in sc.iter_mut().enumerate() {
                *s = bytes[192 + j] as i8 as i32;
            }
            let low2 = _mm256_set1_epi8(3);
            // Two high bits, moved to bits 4-5 of each byte (no byte crosses into the next).
            let high = |h: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(h, low2));
            for half in 0..2 {
                let (a, b, h) = (load(64 * half), load(64 * half + 32), load(128 + 32 * half));
                let v = 128 * half;
                let nib = |x: __m256i| _mm256_and_si256(x, low4);
                let top = |x: __m256i| _mm256_and_si256(_mm256_srli_epi16::<4>(x), low4);
                store(q, v, _mm256_or_si256(nib(a), high(h)));
                store(
                    q,
                    v + 32,
                    _mm256_or_si256(nib(b), high(_mm256_srli_epi16::<2>(h))),
                );
                store(
                    q,
                    v + 64,
                    _mm256_or_si256(top(a), high(_mm256_srli_epi16::<4>(h))),
                );
                store(
                    q,
                    v + 96,
                    _mm256_or_si256(top(b), high(_mm256_srli_epi16::<6>(h))),
                );
            }
            (read_u16(bytes, 208), 0)
        }
        _ => {
            // Q5_K: its fifth bits are spread over 32 bytes; the scalar decoder has them.
            let b = decode_superblock(ty, bytes);
            (*q, *sc, *mins) = (b.q, b.scales, b.mins);
            (read_u16(bytes, 0), read_u16(bytes, 2))
        }
    }
}

/// The eight 6-bit scales and minimums packed in Q4_K/Q5_K's 12 bytes, as `scale_min_k4`
/// gives them one by one, unpacked with word-wide masks (each byte's bits stay in that byte).
#[inline(always)]
fn k4_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let (low6, low4, low2) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
    let scales_hi = (w2 & low4) | (((w0 >> 6) & low2) << 4);
    let mins_hi = ((w2 >> 4) & low4) | (((w1 >> 6) & low2) << 4);
    let join = |a: u32, b: u32| {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&a.to_le_bytes());
        out[4..].copy_from_slice(&b.to_le_bytes());
        out
    };
    (join(w0 & low6, scales_hi), join(w1 & low6, mins_hi))
}

/// `k4_scales` of the Q4_K super-block `block` in one register, by shuffles and masks: its
/// eight scales in bytes 0-7, its eight minimums in bytes 8-15. The scalar form cost more
/// instructions per row and super-block than the products of one token.
#[inline(always)]
unsafe fn k4_scales_vector(block: &[u8]) -> __m128i {
    assert!(block.len() >= 16);
    // Bytes 0-3 are d and dmin; s = bytes 4..16.
    let x = unsafe { _mm_loadu_si128(block.as_ptr() as *const __m128i) };
    unsafe {
        // [s0..4, s8..12, s4..8, s8..12]: the low six bits of pairs 0-3, the four low bits of
        // pairs 4-7 (scales from the low nibbles, minimums from the high ones).
        let low = _mm_shuffle_epi8(
            x,
            _mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15),
        );
        let low = _mm_blend_epi32::<0b1000>(low, _mm_srli_epi16::<4>(low));
        let low = _mm_and_si128(
            low,
            _mm_setr_epi8(
                63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15,
            ),
        );
        // Pairs 4-7's two high bits: the top bits of s0..4 (scales) and s4..8 (minimums),
        // moved to bits 4-5.
        let high = _mm_shuffle_epi8(
            x,
            _mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11),
        );
        let high = _mm_and_si128(_mm_srli_epi16::<2>(high), _mm_set1_epi8(0x30));
        _mm_or_si128(low, high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocks::scale_min_k4;

    #[test]
    fn k4_scales_unpacks_every_pair_as_scale_min_k4() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let bytes: [u8; 12] = std::array::from_fn(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            });
            let (scales, mins) = k4_scales(&bytes);
            let mut block = [0u8; 16];
            block[4..].copy_from_slice(&bytes);
            let mut vector = [0u8; 16];
            // SAFETY: SSSE3 and SSE4.1 come with the AVX2 this module's kernels need.
            if std::is_x86_feature_detected!("avx2") {
                unsafe {
                    _mm_storeu_si128(
                        vector.as_mut_ptr() as *mut __m128i,
                        k4_scales_vector(&block),
                    )
                };
                assert_eq!(vector[..8], scales, "{bytes:?}");
                assert_eq!(vector[8..], mins, "{bytes:?}");
            }
            for j in 0..8 {
                let want = scale_min_k4(j, &bytes);
                assert_eq!(
                    (scales[j] as i32, mins[j] as i32),
                    want,
                    "{bytes:?} pair {j}"
                );
            }
        }
    }
}
