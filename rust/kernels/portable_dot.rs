//! Plain-Rust dot products of one GGUF row with one row of rounded activations, in the summation order every path shares.
//!
//! This file defines the arithmetic; the AVX-512 kernels reproduce it bit for bit (except
//! BF16, whose `vdpbf16ps` rounding the portable code only approximates), so a row's result
//! does not depend on which kernel ran, how many rows shared the call, or the thread count.
//!
//! - Block formats: the integer dot of each block is exact; blocks are then folded into one
//!   f32 accumulator in order with fused multiply-adds:
//!   Q4_0/Q5_0/Q8_0: acc = fma(d·dx, Σ(q - zero)·a, acc);
//!   Q4_1/Q5_1: that, then acc = fma(m, s, acc);
//!   Q4_K/Q5_K: acc = fma(d·dx, Σ_j sc_j·Σ q·a, acc), then acc = fma(-(dmin·dx), Σ_j m_j·bsum_j, acc);
//!   Q6_K: acc = fma(d·dx, Σ_j sc_j·Σ (q - 32)·a, acc).
//! - Float formats: sixteen lanes, lane l summing inputs 16c + l (F32, F16) or the pairs
//!   32c + 2l, 32c + 2l + 1 (BF16, odd one first, as `vdpbf16ps` does), zero-padded at the end,
//!   then added as (l, l + 8), (l, l + 4), (l, l + 2), (0, 1).

use super::activations::Activations;
use super::blocks::{decode_block32, decode_superblock};
use super::ggml::{BlockWeight, GgmlType, QK32, QK_K};
use std::ops::Range;

pub const LANES: usize = 16;

/// Output `row` of `w` times activation row `token`.
pub fn dot(w: &BlockWeight, row: usize, acts: &Activations, token: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features.
        return unsafe { dot_avx2(w, row, acts, token) };
    }
    dot_body(w, row, acts, token)
}

/// The same arithmetic built for AVX2 and FMA: without them every `mul_add` is a call to the C
/// library's software `fmaf`, ten times slower than llama.cpp on CPUs without AVX-512. Fused
/// multiply-adds round once either way, so the results are the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(w: &BlockWeight, row: usize, acts: &Activations, token: usize) -> f32 {
    dot_body(w, row, acts, token)
}

/// Activation rows a tile takes at a time: each block is decoded once per this many rows, and
/// their Q8 values (64 KiB at 2,048 inputs) stay in L2 while the tile's rows pass over them.
const TOKEN_CHUNK: usize = 32;

/// Output rows `rows` of `w` for every activation row, written to `out` [acts.rows, n_out]:
/// `dot`'s results bit for bit, but each block is decoded once for many activation rows, where
/// calling `dot` per row and token decodes it once per token (prompts ran at 18 tok/s).
///
/// # Safety
/// `out` must point to acts.rows · w.n_out writable values that nothing else writes in `rows`.
pub unsafe fn tile(w: &BlockWeight, rows: Range<usize>, acts: &Activations, out: *mut f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features; the caller vouches for `out`.
        return unsafe { tile_avx2(w, rows, acts, out) };
    }
    unsafe { tile_body::<false>(w, rows, acts, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(w: &BlockWeight, rows: Range<usize>, acts: &Activations, out: *mut f32) {
    use super::rows8_avx2::{self, ROWS};
    if w.ty.is_float() && super::float_avx2::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C; the caller vouches for `out`.
        return unsafe { super::float_avx2::tile(w, rows, acts, out) };
    }
    let mut r = rows.start;
    if rows8_avx2::handles(w.ty) {
        while r + ROWS <= rows.end {
            // SAFETY: AVX2 and FMA are enabled here; the rows fit in `out`.
            unsafe { rows8_avx2::rows8(w, r, acts, out) };
            r += ROWS;
        }
    }
    unsafe { tile_body::<true>(w, r..rows.end, acts, out) }
}

/// `SIMD`: the integer dots use AVX2 intrinsics (only inlined into `tile_avx2`).
#[inline(always)]
unsafe fn tile_body<const SIMD: bool>(
    w: &BlockWeight,
    rows: Range<usize>,
    acts: &Activations,
    out: *mut f32,
) {
    let mut acc = [0.0f32; TOKEN_CHUNK];
    for first in (0..acts.rows).step_by(TOKEN_CHUNK) {
        let tokens = first..(first + TOKEN_CHUNK).min(acts.rows);
        for r in rows.clone() {
            let acc = &mut acc[..tokens.len()];
            match w.ty {
                GgmlType::Q4_0
                | GgmlType::Q5_0
                | GgmlType::Q8_0
                | GgmlType::Q4_1
                | GgmlType::Q5_1 => blocks32_into::<SIMD>(w, r, acts, tokens.clone(), acc),
                GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
                    superblocks_into::<SIMD>(w, r, acts, tokens.clone(), acc)
                }
                _ => {
                    for (a, t) in acc.iter_mut().zip(tokens.clone()) {
                        *a = dot_body(w, r, acts, t);
                    }
                }
            }
            for (a, t) in acc.iter().zip(tokens.clone()) {
                unsafe { *out.add(t * w.n_out + r) = *a };
            }
        }
    }
}

/// The exact integer dot of unsigned weight values with int8 activations. `SIMD` takes AVX2
/// (the caller has it); `SMALL` says every value is below 128, so two products fit an i16.
#[inline(always)]
fn int_dot<const N: usize, const SIMD: bool, const SMALL: bool>(q: &[u8; N], a: &[i8]) -> i32 {
    let a: &[i8; N] = a.try_into().expect("N activation values");
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: `SIMD` is only set inside `tile_avx2`; both arrays hold N values.
        unsafe {
            return match (N, SMALL) {
                (32, true) => avx2::dot32_small(q.as_ptr(), a.as_ptr()),
                (32, false) => avx2::dot32_wide(q.as_ptr(), a.as_ptr()),
                (16, true) => avx2::dot16_small(q.as_ptr(), a.as_ptr()),
                _ => unreachable!("no AVX2 dot for {N} values"),
            };
        }
    }
    q.iter().zip(a).map(|(&q, &a)| q as i32 * a as i32).sum()
}

/// Integer dots of 16 or 32 values; exact, so they give `dot`'s sums whatever their order.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Values below 128: `vpmaddubsw` adds two products of at most 127 · 127 without saturating.
    #[inline(always)]
    pub unsafe fn dot32_small(q: *const u8, a: *const i8) -> i32 {
        unsafe {
            let pairs = _mm256_maddubs_epi16(
                _mm256_loadu_si256(q as *const __m256i),
                _mm256_loadu_si256(a as *const __m256i),
            );
            sum8(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }

    /// Any byte values (Q8_0's are stored + 128): widened to i16 first.
    #[inline(always)]
    pub unsafe fn dot32_wide(q: *const u8, a: *const i8) -> i32 {
        unsafe {
            let half = |at: usize| {
                let q16 = _mm256_cvtepu8_epi16(_mm_loadu_si128(q.add(at) as *const __m128i));
                let a16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(a.add(at) as *const __m128i));
                _mm256_madd_epi16(q16, a16)
            };
            sum8(_mm256_add_epi32(half(0), half(16)))
        }
    }

    #[inline(always)]
    pub unsafe fn dot16_small(q: *const u8, a: *const i8) -> i32 {
        unsafe {
            let pairs = _mm_maddubs_epi16(
                _mm_loadu_si128(q as *const __m128i),
                _mm_loadu_si128(a as *const __m128i),
            );
            sum4(_mm_madd_epi16(pairs, _mm_set1_epi16(1)))
        }
    }

    #[inline(always)]
    unsafe fn sum8(v: __m256i) -> i32 {
        unsafe {
            sum4(_mm_add_epi32(
                _mm256_castsi256_si128(v),
                _mm256_extracti128_si256::<1>(v),
            ))
        }
    }

    #[inline(always)]
    unsafe fn sum4(v: __m128i) -> i32 {
        unsafe {
            let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
            let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
            _mm_cvtsi128_si32(v)
        }
    }
}

/// Row `r` of a 32-value-block weight against activation rows `tokens`, into `acc`.
#[inline(always)]
fn blocks32_into<const SIMD: bool>(
    w: &BlockWeight,
    r: usize,
    acts: &Activations,
    tokens: Range<usize>,
    acc: &mut [f32],
) {
    let with_min = matches!(w.ty, GgmlType::Q4_1 | GgmlType::Q5_1);
    let q8 = if with_min {
        acts.q8_1.as_ref()
    } else {
        acts.q8_0.as_ref()
    }
    .expect("activations rounded for this weight type");
    let blocks = w.n_in / QK32;
    acc.fill(0.0);
    for (b, block) in w.row(r).chunks_exact(w.ty.block_bytes()).enumerate() {
        let blk = decode_block32(w.ty, block);
        for (a, t) in acc.iter_mut().zip(tokens.clone()) {
            let i = t * blocks + b;
            let x = &q8.qs[i * QK32..(i + 1) * QK32];
            let isum = if w.ty == GgmlType::Q8_0 {
                int_dot::<32, SIMD, false>(&blk.q, x)
            } else {
                int_dot::<32, SIMD, true>(&blk.q, x)
            } - blk.zero * q8.sum[i];
            *a = (blk.d * q8.d[i]).mul_add(isum as f32, *a);
            if with_min {
                *a = blk.m.mul_add(q8.s[i], *a);
            }
        }
    }
}

/// Row `r` of a K-quant weight against activation rows `tokens`, into `acc`.
#[inline(always)]
fn superblocks_into<const SIMD: bool>(
    w: &BlockWeight,
    r: usize,
    acts: &Activations,
    tokens: Range<usize>,
    acc: &mut [f32],
) {
    let q8 = acts.q8k.as_ref().expect("activations rounded to Q8_K");
    let blocks = w.n_in / QK_K;
    acc.fill(0.0);
    for (b, block) in w.row(r).chunks_exact(w.ty.block_bytes()).enumerate() {
        let blk = decode_superblock(w.ty, block);
        for (a, t) in acc.iter_mut().zip(tokens.clone()) {
            let i = t * blocks + b;
            let x = &q8.qs[i * QK_K..(i + 1) * QK_K];
            let dd = blk.d * q8.d[i];
            if w.ty == GgmlType::Q6K {
                let mut sumi = 0i32;
                for j in 0..16 {
                    let q: &[u8; 16] = blk.q[16 * j..16 * j + 16].try_into().unwrap();
                    let s = int_dot::<16, SIMD, true>(q, &x[16 * j..16 * j + 16]);
                    sumi += blk.scales[j] * (s - 32 * q8.bsum16[i * 16 + j]);
                }
                *a = dd.mul_add(sumi as f32, *a);
            } else {
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..8 {
                    let q: &[u8; 32] = blk.q[32 * j..32 * j + 32].try_into().unwrap();
                    sumi +=
                        blk.scales[2 * j] * int_dot::<32, SIMD, true>(q, &x[32 * j..32 * j + 32]);
                    summ += blk.mins[j] * q8.bsum32[i * 8 + j];
                }
                *a = dd.mul_add(sumi as f32, *a);
                *a = (-(blk.dmin * q8.d[i])).mul_add(summ as f32, *a);
            }
        }
    }
}

#[inline(always)]
fn dot_body(w: &BlockWeight, row: usize, acts: &Activations, token: usize) -> f32 {
    let bytes = w.row(row);
    let n = w.n_in;
    match w.ty {
        GgmlType::F32 => {
            let x = &acts.f32[token * n..(token + 1) * n];
            lanes_dot(n, |k| f32_at(bytes, k), |k| x[k])
        }
        GgmlType::F16 => {
            let x = &acts.f16[token * n..(token + 1) * n];
            lanes_dot(n, |k| f16_at(bytes, k), |k| x[k])
        }
        GgmlType::Bf16 => bf16_dot(bytes, &acts.bf16[token * n..(token + 1) * n]),
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let q8 = if matches!(w.ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                acts.q8_1.as_ref()
            } else {
                acts.q8_0.as_ref()
            }
            .expect("activations rounded for this weight type");
            let blocks = n / QK32;
            let mut acc = 0.0f32;
            for (b, block) in bytes.chunks_exact(w.ty.block_bytes()).enumerate() {
                let blk = decode_block32(w.ty, block);
                let i = token * blocks + b;
                let a = &q8.qs[i * QK32..(i + 1) * QK32];
                let isum: i32 = blk
                    .q
                    .iter()
                    .zip(a)
                    .map(|(&q, &a)| q as i32 * a as i32)
                    .sum::<i32>()
                    - blk.zero * q8.sum[i];
                acc = (blk.d * q8.d[i]).mul_add(isum as f32, acc);
                if matches!(w.ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                    acc = blk.m.mul_add(q8.s[i], acc);
                }
            }
            acc
        }
        GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
            let q8 = acts.q8k.as_ref().expect("activations rounded to Q8_K");
            let blocks = n / QK_K;
            let mut acc = 0.0f32;
            for (b, block) in bytes.chunks_exact(w.ty.block_bytes()).enumerate() {
                let blk = decode_superblock(w.ty, block);
                let i = token * blocks + b;
                let a = &q8.qs[i * QK_K..(i + 1) * QK_K];
                let dd = blk.d * q8.d[i];
                if w.ty == GgmlType::Q6K {
                    let mut sumi = 0i32;
                    for j in 0..16 {
                        let s: i32 = (16 * j..16 * j + 16)
                            .map(|v| blk.q[v] as i32 * a[v] as i32)
                            .sum();
                        sumi += blk.scales[j] * (s - 32 * q8.bsum16[i * 16 + j]);
                    }
                    acc = dd.mul_add(sumi as f32, acc);
                } else {
                    let mut sumi = 0i32;
                    let mut summ = 0i32;
                    for j in 0..8 {
                        let s: i32 = (32 * j..32 * j + 32)
                            .map(|v| blk.q[v] as i32 * a[v] as i32)
                            .sum();
                        sumi += blk.scales[2 * j] * s;
                        summ += blk.mins[j] * q8.bsum32[i * 8 + j];
                    }
                    acc = dd.mul_add(sumi as f32, acc);
                    acc = (-(blk.dmin * q8.d[i])).mul_add(summ as f32, acc);
                }
            }
            acc
        }
    }
}

#[inline(always)]
fn f32_at(bytes: &[u8], k: usize) -> f32 {
    f32::from_le_bytes([
        bytes[4 * k],
        bytes[4 * k + 1],
        bytes[4 * k + 2],
        bytes[4 * k + 3],
    ])
}

#[inline(always)]
fn f16_at(bytes: &[u8], k: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[2 * k], bytes[2 * k + 1]])).to_f32()
}

/// Sixteen lanes of fused multiply-adds over the inputs, then the fixed reduction tree.
#[inline(always)]
fn lanes_dot(n: usize, w: impl Fn(usize) -> f32, x: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    for chunk in (0..n).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            let k = chunk + l;
            let (wk, xk) = if k < n { (w(k), x(k)) } else { (0.0, 0.0) };
            *a = wk.mul_add(xk, *a);
        }
    }
    reduce_lanes(acc)
}

/// The reduction every float path ends with: halves added pairwise until one value is left.
#[inline(always)]
pub fn reduce_lanes(v: [f32; LANES]) -> f32 {
    let t8: [f32; 8] = std::array::from_fn(|i| v[i] + v[i + 8]);
    let t4: [f32; 4] = std::array::from_fn(|i| t8[i] + t8[i + 4]);
    let t2: [f32; 2] = std::array::from_fn(|i| t4[i] + t4[i + 2]);
    t2[0] + t2[1]
}

/// `vdpbf16ps` semantics: subnormal inputs and results flushed to zero, the odd product first.
#[inline(always)]
fn bf16_dot(bytes: &[u8], x: &[u16]) -> f32 {
    let n = x.len();
    let flush = |v: f32| {
        if v.is_subnormal() {
            0.0f32.copysign(v)
        } else {
            v
        }
    };
    let bf = |bits: u16| flush(f32::from_bits((bits as u32) << 16));
    let w = |k: usize| {
        if k < n {
            bf(u16::from_le_bytes([bytes[2 * k], bytes[2 * k + 1]]))
        } else {
            0.0
        }
    };
    let xv = |k: usize| if k < n { bf(x[k]) } else { 0.0 };
    let mut acc = [0.0f32; LANES];
    for chunk in (0..n).step_by(2 * LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            let k = chunk + 2 * l;
            *a = flush(w(k + 1).mul_add(xv(k + 1), flush(*a)));
            *a = flush(w(k).mul_add(xv(k), *a));
        }
    }
    reduce_lanes(acc)
}
