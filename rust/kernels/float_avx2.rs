//! AVX2 products of F32, F16 and BF16 weight rows with activations: `portable_dot`'s sixteen lanes held as two eight-lane registers, so its bits exactly.
//!
//! Without AVX-512 every float weight used to take the scalar portable loop: at the default
//! dtype an F16 file of Llama 3.2 1B's shape read a 41-token prompt in two minutes on a
//! 2-core Zen 3 guest, where llama.cpp took two seconds. Here lane l of the portable
//! accumulator is lane l of a low register (l < 8) or lane l - 8 of a high one; each lane
//! takes the same fused multiply-adds in the same order (F32 and F16: inputs 16c + l; BF16:
//! the pairs 32c + 2l, 32c + 2l + 1, odd first, subnormals flushed as `vdpbf16ps` does), the
//! last chunk zero-padded, then the same reduction tree. A register tile of RM weight rows by
//! RN activation rows shares each load; the shape depends on the call's rows, never the
//! result. Prompts walk a block of weight rows (a quarter of L2) once per group of activation
//! rows, so weights come from memory once per block, not once per group.

#![cfg(target_arch = "x86_64")]
// Index loops over rows and tokens read closer to the register layout than iterator chains.
#![allow(clippy::needless_range_loop)]

use super::activations::Activations;
use super::ggml::{BlockWeight, GgmlType};
use std::arch::x86_64::*;
use std::ops::Range;

/// Weight bytes of one block of rows, reused from L2 by every group of activation rows.
const BLOCK_BYTES: usize = 128 * 1024;

/// Whether this CPU runs these kernels (AVX2, FMA and F16C; checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// Output rows `rows` of a float weight for every activation row, into `out` [acts.rows, n_out].
///
/// # Safety
/// `available()`; `w` is F32, F16 or BF16 with `acts` rounded for it; `out` points to
/// acts.rows · w.n_out writable values that nothing else writes in `rows`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile(w: &BlockWeight, rows: Range<usize>, acts: &Activations, out: *mut f32) {
    unsafe {
        match w.ty {
            GgmlType::F32 => blocked::<F32Row>(w, rows, acts, out),
            GgmlType::F16 => blocked::<F16Row>(w, rows, acts, out),
            GgmlType::Bf16 => blocked::<Bf16Row>(w, rows, &flushed_bf16(acts), out),
            other => unreachable!("{} is not a float format", other.name()),
        }
    }
}

/// One weight format's register tile: RM rows from `r0` by RN activation rows from `t0`.
trait Kernel {
    /// Rows and activation rows per tile for a call with `tokens` activation rows.
    fn shape(tokens: usize) -> (usize, usize);

    /// # Safety
    /// As `tile`, with r0 + RM and t0 + RN inside the call.
    unsafe fn micro<const RM: usize, const RN: usize>(
        w: &BlockWeight,
        r0: usize,
        acts: &Activations,
        t0: usize,
        out: *mut f32,
    );
}

/// Blocks of rows (for the caches), then groups of activation rows, then tiles of rows.
#[inline(always)]
unsafe fn blocked<K: Kernel>(
    w: &BlockWeight,
    rows: Range<usize>,
    acts: &Activations,
    out: *mut f32,
) {
    let (rm, rn) = K::shape(acts.rows);
    let block_rows = (BLOCK_BYTES / w.row_bytes).max(rm) / rm * rm;
    let mut block = rows.start;
    while block < rows.end {
        let block_end = (block + block_rows).min(rows.end);
        let mut t = 0;
        while t < acts.rows {
            let nt = rn.min(acts.rows - t);
            let mut r = block;
            while r < block_end {
                let nr = rm.min(block_end - r);
                // SAFETY: r + nr <= rows.end and t + nt <= acts.rows; the caller vouches for the rest.
                unsafe { dispatch::<K>(nr, nt, w, r, acts, t, out) };
                r += nr;
            }
            t += nt;
        }
        block = block_end;
    }
}

/// `K::micro` for a tile of `nr` rows by `nt` activation rows (each at most 4 by 3).
#[inline(always)]
unsafe fn dispatch<K: Kernel>(
    nr: usize,
    nt: usize,
    w: &BlockWeight,
    r: usize,
    acts: &Activations,
    t: usize,
    out: *mut f32,
) {
    macro_rules! shapes {
        ($(($m:literal, $n:literal)),*) => {
            match (nr, nt) {
                $(($m, $n) => unsafe { K::micro::<$m, $n>(w, r, acts, t, out) },)*
                _ => unreachable!("no {nr} x {nt} tile"),
            }
        };
    }
    shapes!(
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
        (2, 2),
        (2, 3),
        (3, 1),
        (3, 2),
        (3, 3),
        (4, 1),
        (4, 2),
        (4, 3)
    )
}

/// The portable reduction: (l, l + 8), then (l, l + 4), (l, l + 2), (0, 1).
#[inline(always)]
unsafe fn reduce(lo: __m256, hi: __m256) -> f32 {
    unsafe {
        let s8 = _mm256_add_ps(lo, hi);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
    }
}

/// Each (row, activation row) pair's two registers reduced into out [activation row, n_out].
#[inline(always)]
unsafe fn store<const RM: usize, const RN: usize>(
    lo: &[[__m256; RN]; RM],
    hi: &[[__m256; RN]; RM],
    n_out: usize,
    r0: usize,
    t0: usize,
    out: *mut f32,
) {
    for i in 0..RM {
        for j in 0..RN {
            unsafe { *out.add((t0 + j) * n_out + r0 + i) = reduce(lo[i][j], hi[i][j]) };
        }
    }
}

/// How F32 and F16 rows read as f32: eight values from element `k` of a row.
trait Lanes {
    const BYTES: usize;
    unsafe fn load8(row: *const u8, k: usize) -> __m256;
}

struct F32Row;
struct F16Row;

impl Lanes for F32Row {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(row: *const u8, k: usize) -> __m256 {
        unsafe { _mm256_loadu_ps((row as *const f32).add(k)) }
    }
}

impl Lanes for F16Row {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(row: *const u8, k: usize) -> __m256 {
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128((row as *const u16).add(k) as *const __m128i)) }
    }
}

/// F32 weights meet f32 activations, F16 weights f16-rounded ones (held as f32).
fn float_acts<'a, L: Lanes>(acts: &'a Activations) -> &'a [f32] {
    if L::BYTES == 4 {
        acts.f32
    } else {
        &acts.f16
    }
}

impl<L: Lanes> Kernel for L {
    fn shape(tokens: usize) -> (usize, usize) {
        // Twelve accumulators at most (two per pair), leaving four registers for loads.
        match tokens {
            1 => (4, 1),
            2 => (3, 2),
            _ => (2, 3),
        }
    }

    #[inline(always)]
    unsafe fn micro<const RM: usize, const RN: usize>(
        w: &BlockWeight,
        r0: usize,
        acts: &Activations,
        t0: usize,
        out: *mut f32,
    ) {
        let n = w.n_in;
        let x = float_acts::<L>(acts);
        let wp: [*const u8; RM] = std::array::from_fn(|i| w.row(r0 + i).as_ptr());
        let xp: [*const f32; RN] = std::array::from_fn(|j| x[(t0 + j) * n..].as_ptr());
        let mut lo = [[unsafe { _mm256_setzero_ps() }; RN]; RM];
        let mut hi = lo;
        let full = n / 16 * 16;
        let mut k = 0;
        while k < full {
            for i in 0..RM {
                let (wl, wh) = unsafe { (L::load8(wp[i], k), L::load8(wp[i], k + 8)) };
                for j in 0..RN {
                    unsafe {
                        lo[i][j] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(xp[j].add(k)), lo[i][j]);
                        hi[i][j] = _mm256_fmadd_ps(wh, _mm256_loadu_ps(xp[j].add(k + 8)), hi[i][j]);
                    }
                }
            }
            k += 16;
        }
        if k < n {
            // The last chunk, zero-padded as the portable loop pads it (0 · 0 added too).
            let left = n - k;
            let mut xs = [[0.0f32; 16]; RN];
            for j in 0..RN {
                xs[j][..left].copy_from_slice(&x[(t0 + j) * n + k..(t0 + j) * n + n]);
            }
            for i in 0..RM {
                let mut ws = [0u8; 64];
                ws[..left * L::BYTES].copy_from_slice(&w.row(r0 + i)[k * L::BYTES..]);
                let (wl, wh) = unsafe { (L::load8(ws.as_ptr(), 0), L::load8(ws.as_ptr(), 8)) };
                for j in 0..RN {
                    unsafe {
                        lo[i][j] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(xs[j].as_ptr()), lo[i][j]);
                        hi[i][j] =
                            _mm256_fmadd_ps(wh, _mm256_loadu_ps(xs[j].as_ptr().add(8)), hi[i][j]);
                    }
                }
            }
        }
        unsafe { store(&lo, &hi, w.n_out, r0, t0, out) };
    }
}

struct Bf16Row;

/// Subnormals to zero of the same sign, as `vdpbf16ps` treats inputs and results.
#[inline(always)]
unsafe fn flush(v: __m256) -> __m256 {
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(
            _mm256_andnot_ps(sign, v),
            _mm256_set1_ps(f32::MIN_POSITIVE),
        );
        _mm256_blendv_ps(v, _mm256_and_ps(v, sign), tiny)
    }
}

/// The call's bf16 activations with subnormals already flushed (`flush` on every load of every
/// activation, once per weight row, was most of a prompt's time); only `bf16` is filled.
fn flushed_bf16<'a>(acts: &Activations) -> Activations<'a> {
    let bf16 = acts
        .bf16
        .iter()
        .map(|&b| if b & 0x7f80 == 0 { b & 0x8000 } else { b })
        .collect();
    Activations {
        rows: acts.rows,
        n_in: acts.n_in,
        f32: &[],
        f16: Vec::new(),
        bf16,
        bf16_f32: Vec::new(),
        q8_0: None,
        q8_1: None,
        q8k: None,
    }
}

/// Sixteen bf16 values from `p` as eight (even, odd) pairs of f32, as stored.
#[inline(always)]
unsafe fn bf16_pairs(p: *const u16) -> (__m256, __m256) {
    unsafe {
        let v = _mm256_loadu_si256(p as *const __m256i);
        let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
        let odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(-65536)));
        (even, odd)
    }
}

/// `bf16_pairs`, flushed (weights; the activations come flushed).
#[inline(always)]
unsafe fn bf16_pairs_flushed(p: *const u16) -> (__m256, __m256) {
    unsafe {
        let (even, odd) = bf16_pairs(p);
        (flush(even), flush(odd))
    }
}

/// One step of `portable_dot::bf16_dot` on eight lanes: the odd product, then the even one. The
/// portable loop also flushes the accumulator before the first; every value it holds was
/// already flushed (zero at first, then each step's result).
#[inline(always)]
unsafe fn bf16_step(acc: __m256, w: (__m256, __m256), x: (__m256, __m256)) -> __m256 {
    unsafe {
        let acc = flush(_mm256_fmadd_ps(w.1, x.1, acc));
        flush(_mm256_fmadd_ps(w.0, x.0, acc))
    }
}

impl Kernel for Bf16Row {
    fn shape(tokens: usize) -> (usize, usize) {
        // Each activation pair is unpacked per row, so tiles run wide along the activation rows.
        match tokens {
            1 => (4, 1),
            2 => (2, 2),
            _ => (1, 3),
        }
    }

    #[inline(always)]
    unsafe fn micro<const RM: usize, const RN: usize>(
        w: &BlockWeight,
        r0: usize,
        acts: &Activations,
        t0: usize,
        out: *mut f32,
    ) {
        let n = w.n_in;
        let wp: [*const u16; RM] = std::array::from_fn(|i| w.row(r0 + i).as_ptr() as *const u16);
        let xp: [*const u16; RN] = std::array::from_fn(|j| acts.bf16[(t0 + j) * n..].as_ptr());
        let mut lo = [[unsafe { _mm256_setzero_ps() }; RN]; RM];
        let mut hi = lo;
        let full = n / 32 * 32;
        let mut k = 0;
        while k < full {
            for i in 0..RM {
                let wl = unsafe { bf16_pairs_flushed(wp[i].add(k)) };
                for j in 0..RN {
                    lo[i][j] = unsafe { bf16_step(lo[i][j], wl, bf16_pairs(xp[j].add(k))) };
                }
                let wh = unsafe { bf16_pairs_flushed(wp[i].add(k + 16)) };
                for j in 0..RN {
                    hi[i][j] = unsafe { bf16_step(hi[i][j], wh, bf16_pairs(xp[j].add(k + 16))) };
                }
            }
            k += 32;
        }
        if k < n {
            let left = n - k;
            let mut xs = [[0u16; 32]; RN];
            for j in 0..RN {
                xs[j][..left].copy_from_slice(&acts.bf16[(t0 + j) * n + k..(t0 + j) * n + n]);
            }
            for i in 0..RM {
                let mut ws = [0u16; 32];
                for (v, bytes) in ws.iter_mut().zip(w.row(r0 + i)[2 * k..].chunks_exact(2)) {
                    *v = u16::from_le_bytes([bytes[0], bytes[1]]);
                }
                let (wl, wh) = unsafe {
                    (
                        bf16_pairs_flushed(ws.as_ptr()),
                        bf16_pairs_flushed(ws.as_ptr().add(16)),
                    )
                };
                for j in 0..RN {
                    unsafe {
                        lo[i][j] = bf16_step(lo[i][j], wl, bf16_pairs(xs[j].as_ptr()));
                        hi[i][j] = bf16_step(hi[i][j], wh, bf16_pairs(xs[j].as_ptr().add(16)));
                    }
                }
            }
        }
        unsafe { store(&lo, &hi, w.n_out, r0, t0, out) };
    }
}

#[cfg(test)]
mod tests {
    use super::super::activations::Activations;
    use super::super::block_tests::{random_weight, Noise};
    use super::super::portable_dot;
    use super::*;

    /// Every output of `tile` over `rows` against the scalar dot, bit for bit; nothing written outside.
    fn check(
        ty: GgmlType,
        data: &[u8],
        x: &[f32],
        n_in: usize,
        n_out: usize,
        tokens: usize,
        rows: Range<usize>,
    ) {
        let w = BlockWeight::new(ty, data, n_in, n_out).unwrap();
        let acts = Activations::portable(&x[..tokens * n_in], tokens, n_in, &[ty.act_format()]);
        let mut out = vec![f32::NAN; tokens * n_out];
        // SAFETY: checked by `available` below; `out` holds tokens · n_out values.
        unsafe { tile(&w, rows.clone(), &acts, out.as_mut_ptr()) };
        for t in 0..tokens {
            for r in 0..n_out {
                let got = out[t * n_out + r];
                if rows.contains(&r) {
                    let want = portable_dot::dot(&w, r, &acts, t);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{} n_in {n_in} tokens {tokens} row {r} token {t}: {got} vs {want}",
                        ty.name()
                    );
                } else {
                    assert!(got.is_nan(), "{} wrote row {r} outside {rows:?}", ty.name());
                }
            }
        }
    }

    #[test]
    fn every_tile_shape_and_width_gives_the_portable_bits() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX2, FMA or F16C");
            return;
        }
        // Widths below, at and across the 16- and 32-input chunks; token counts that take each tile shape and remainder.
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Bf16] {
            for n_in in [1, 7, 16, 31, 32, 33, 47, 200, 1030] {
                let n_out = 23;
                let data = random_weight(ty, n_out, n_in, n_in as u64);
                let x = Noise::new(3).floats(13 * n_in);
                for tokens in [1, 2, 3, 4, 5, 8, 13] {
                    check(ty, &data, &x, n_in, n_out, tokens, 0..n_out);
                    check(ty, &data, &x, n_in, n_out, tokens, 5..18);
                }
            }
        }
    }

    #[test]
    fn bf16_flushes_subnormals_as_the_portable_dot_does() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX2, FMA or F16C");
            return;
        }
        // Subnormal, zero and tiny weights next to ones near 1; activations near the smallest normal (token 0),
        // mixed with subnormal ones (token 1), or ordinary: products and partial sums cross into subnormals.
        let (n_in, n_out, tokens) = (77, 9, 5);
        let mut noise = Noise::new(17);
        let mut data = random_weight(GgmlType::Bf16, n_out, n_in, 2);
        for pair in data.chunks_exact_mut(2) {
            let sign = noise.next_u64() as u16 & 0x8000;
            let bits = match noise.next_u64() % 4 {
                0 => (noise.next_u64() as u16 & 0x007f) | sign, // subnormal or zero
                1 => 0x0080 | sign,                             // the smallest normal
                2 => half::bf16::from_f32(0.5 + noise.float().abs()).to_bits() | sign,
                _ => u16::from_le_bytes([pair[0], pair[1]]),
            };
            pair.copy_from_slice(&bits.to_le_bytes());
        }
        let tiny = |noise: &mut Noise| {
            f32::MIN_POSITIVE * (1.0 + 3.0 * noise.float().abs()) * noise.float().signum()
        };
        let x: Vec<f32> = (0..tokens * n_in)
            .map(|i| match (i / n_in, noise.next_u64() % 2) {
                (0, _) | (1, 0) => tiny(&mut noise),
                (1, _) => f32::MIN_POSITIVE * noise.float(),
                _ => noise.float(),
            })
            .collect();
        for t in 1..=tokens {
            check(GgmlType::Bf16, &data, &x, n_in, n_out, t, 0..n_out);
        }
    }
}
