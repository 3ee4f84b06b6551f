//! AVX2 attention for one KV head's group of query heads, over an f32 or f16 cache, for CPUs without AVX-512.
//!
//! Without AVX-512 every row used to take `attention`'s portable loop, and an f16 cache was
//! first widened into an f32 copy of every key and value up to the row's position, once per
//! row: a prompt chunk at position 2,000 widened (and wrote, and read back) 2,000 positions
//! of keys and values per row and group. Here each cache vector is widened as it is loaded
//! (F16C, exact) and shared by the group's heads, as in the AVX-512 kernel. Every sum runs in
//! one fixed order whatever the group's size (eight-lane fused multiply-adds over the inputs,
//! then a fixed tree across lanes), so each head's results are the bits it gets alone and an f16
//! cache gives the bits of its f32 widening.

#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use super::attention::prefetch_run;
use std::arch::x86_64::*;

/// Whether this CPU runs the kernel (AVX2, FMA and F16C; checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// Eight cache values from element `i` of `base` as f32: f16 (HALF) widened exactly, or f32.
#[inline(always)]
unsafe fn load<const HALF: bool>(base: *const u8, i: usize) -> __m256 {
    unsafe {
        if HALF {
            _mm256_cvtph_ps(_mm_loadu_si128(
                (base as *const u16).add(i) as *const __m128i
            ))
        } else {
            _mm256_loadu_ps((base as *const f32).add(i))
        }
    }
}

/// The first `count` (< 8) cache values from element `i`, the rest zero; reads nothing past them.
#[inline(always)]
unsafe fn load_part<const HALF: bool>(base: *const u8, i: usize, count: usize) -> __m256 {
    unsafe {
        if HALF {
            let mut part = [0u16; 8];
            std::ptr::copy_nonoverlapping((base as *const u16).add(i), part.as_mut_ptr(), count);
            _mm256_cvtph_ps(_mm_loadu_si128(part.as_ptr() as *const __m128i))
        } else {
            let mut part = [0f32; 8];
            std::ptr::copy_nonoverlapping((base as *const f32).add(i), part.as_mut_ptr(), count);
            _mm256_loadu_ps(part.as_ptr())
        }
    }
}

/// Lane j of the result is the sum of `v[j]`'s lanes, always added as
/// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), whatever the other vectors hold.
#[inline(always)]
unsafe fn reduce8(v: &[__m256; 8]) -> __m256 {
    unsafe {
        let a = _mm256_hadd_ps(v[0], v[1]);
        let b = _mm256_hadd_ps(v[2], v[3]);
        let c = _mm256_hadd_ps(v[4], v[5]);
        let d = _mm256_hadd_ps(v[6], v[7]);
        let ab = _mm256_hadd_ps(a, b);
        let cd = _mm256_hadd_ps(c, d);
        // ab holds vectors 0-3's low-half sums in its low lane and high-half sums in its high one.
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(ab, cd),
            _mm256_permute2f128_ps::<0x31>(ab, cd),
        )
    }
}

/// One vector's lanes summed in `reduce8`'s order.
#[inline(always)]
unsafe fn reduce1(v: __m256) -> f32 {
    unsafe {
        let mut all = [_mm256_setzero_ps(); 8];
        all[0] = v;
        _mm256_cvtss_f32(reduce8(&all))
    }
}

/// e^x for x <= 0 (shifted scores), within about 2 ulp: x = n ln 2 + r, e^r by its degree-6
/// Taylor polynomial, scaled by 2^n built in the exponent bits. Below -87 (where 2^n would be
/// subnormal) the result is 0: such a weight is under 2^-125 of the row's largest.
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    unsafe {
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.0));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 in two parts (Cody and Waite), so n ln 2 is subtracted without rounding away r.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut e = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(c));
        }
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_andnot_ps(tiny, _mm256_mul_ps(e, two_n))
    }
}

/// A row of scores (zero-padded to whole vectors) into softmax weights, eight at a time.
#[inline(always)]
unsafe fn softmax(row: &mut [f32], len: usize) {
    unsafe {
        let p = row.as_mut_ptr();
        let whole = len - len % 8;
        let mut top = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..whole).step_by(8) {
            top = _mm256_max_ps(top, _mm256_loadu_ps(p.add(i)));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), top);
        let max = lanes
            .iter()
            .chain(&row[whole..len])
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let max = _mm256_set1_ps(max);
        let mut total = _mm256_setzero_ps();
        for i in (0..row.len()).step_by(8) {
            let mut e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), max));
            if i + 8 > len {
                // The padding past `len` weighs nothing.
                let keep = _mm256_cmp_ps::<_CMP_LT_OQ>(
                    _mm256_add_ps(
                        _mm256_set1_ps(i as f32),
                        _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0),
                    ),
                    _mm256_set1_ps(len as f32),
                );
                e = _mm256_and_ps(e, keep);
            }
            _mm256_storeu_ps(p.add(i), e);
            total = _mm256_add_ps(total, e);
        }
        let inv = _mm256_set1_ps(1.0 / reduce1(total));
        for i in (0..row.len()).step_by(8) {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
        }
    }
}

/// Attends R (1..=8) query heads `queries` [R, d] to `len` (> 0) positions of K [t_max, d] at
/// `keys` and V [d, t_max] at `values_t` (f16 when HALF, else f32); writes `out` [R, d].
///
/// # Safety
/// `available()`; d a multiple of 8; the cache pointers hold t_max · d elements, len <= t_max.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend_heads<const HALF: bool, const R: usize>(
    queries: &[f32],
    keys: *const u8,
    values_t: *const u8,
    d: usize,
    t_max: usize,
    len: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    unsafe {
        // Sums per head per reduction: positions (scores) or value rows (outputs).
        let per = 8 / R;
        let scale = 1.0 / (d as f32).sqrt();
        let padded = len.next_multiple_of(8);
        scores.clear();
        scores.resize(R * padded, 0.0);
        let (q, s) = (queries.as_ptr(), scores.as_mut_ptr());
        // V's rows are `d` short runs far apart, which the hardware prefetcher does not follow
        // in time: the first sixteen are requested before the scores, which hide their wait,
        // and each pass below asks for the rows sixteen ahead of it.
        let size = if HALF { 2 } else { 4 };
        for c in 0..d.min(16) {
            prefetch_run(values_t.add(c * t_max * size), len * size);
        }
        // Lanes h * per .. h * per + count of `sums` to `to` + h * stride, for every head h (a
        // macro: a closure would not inherit this function's target features).
        macro_rules! store {
            ($sums:expr, $to:expr, $stride:expr, $count:expr) => {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), $sums);
                for h in 0..R {
                    for j in 0..$count {
                        *$to.add(h * $stride + j) = lanes[h * per + j];
                    }
                }
            };
        }
        // Position sums of `count` positions from t0; a macro so that whole chunks run with a
        // constant count, whose accumulators stay in registers (a count known only at run time
        // kept them in memory).
        macro_rules! score_chunk {
            ($t0:expr, $count:expr) => {
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..d).step_by(8) {
                    let mut qc = [_mm256_setzero_ps(); R];
                    for h in 0..R {
                        qc[h] = _mm256_loadu_ps(q.add(h * d + c));
                    }
                    for p in 0..$count {
                        let key = load::<HALF>(keys, ($t0 + p) * d + c);
                        for h in 0..R {
                            acc[h * per + p] = _mm256_fmadd_ps(qc[h], key, acc[h * per + p]);
                        }
                    }
                }
                let sums = _mm256_mul_ps(reduce8(&acc), _mm256_set1_ps(scale));
                store!(sums, s.add($t0), padded, $count);
            };
        }
        let whole_chunks = len - len % per;
        for t0 in (0..whole_chunks).step_by(per) {
            score_chunk!(t0, per);
        }
        if whole_chunks < len {
            score_chunk!(whole_chunks, len - whole_chunks);
        }
        for h in 0..R {
            softmax(&mut scores[h * padded..(h + 1) * padded], len);
        }
        let s = scores.as_ptr();
        let whole = len - len % 8;
        // d is a multiple of 8, so of `per`: every pass has `per` value rows (a constant count,
        // as for the scores).
        for c0 in (0..d).step_by(per) {
            for c in (c0 + 16)..(c0 + 16 + per).min(d) {
                prefetch_run(values_t.add(c * t_max * size), len * size);
            }
            let mut acc = [_mm256_setzero_ps(); 8];
            for t in (0..whole).step_by(8) {
                let mut weights = [_mm256_setzero_ps(); R];
                for h in 0..R {
                    weights[h] = _mm256_loadu_ps(s.add(h * padded + t));
                }
                for j in 0..per {
                    let values = load::<HALF>(values_t, (c0 + j) * t_max + t);
                    for h in 0..R {
                        acc[h * per + j] = _mm256_fmadd_ps(weights[h], values, acc[h * per + j]);
                    }
                }
            }
            if whole < len {
                // The cache past `len` may hold anything (even NaN): only real positions are read.
                let mut weights = [_mm256_setzero_ps(); R];
                for h in 0..R {
                    weights[h] = _mm256_loadu_ps(s.add(h * padded + whole));
                }
                for j in 0..per {
                    let values = load_part::<HALF>(values_t, (c0 + j) * t_max + whole, len - whole);
                    for h in 0..R {
                        acc[h * per + j] = _mm256_fmadd_ps(weights[h], values, acc[h * per + j]);
                    }
                }
            }
            store!(reduce8(&acc), out.as_mut_ptr().add(c0), d, per);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batched_reduction_adds_each_vector_in_one_fixed_order() {
        if !available() {
            eprintln!("skipped: no AVX2, FMA and F16C on this CPU");
            return;
        }
        // Magnitudes 1e-3..1e4 side by side make the order of additions show in the bits.
        let values: Vec<f32> = (0..64 * 40)
            .map(|i: u32| {
                let x = (i.wrapping_mul(2654435761) % 2001) as f32 / 1000.0 - 1.0;
                x * 10f32.powi((i % 8) as i32 - 3)
            })
            .collect();
        for chunk in values.chunks_exact(64) {
            let lanes = |j: usize| &chunk[8 * j..8 * j + 8];
            let want = |j: usize| {
                let l = lanes(j);
                ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
            };
            // SAFETY: the CPU has AVX2; every load reads 8 values of `chunk`.
            unsafe {
                let v: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(lanes(j).as_ptr()));
                let mut got = [0.0f32; 8];
                _mm256_storeu_ps(got.as_mut_ptr(), reduce8(&v));
                for j in 0..8 {
                    assert_eq!(got[j].to_bits(), want(j).to_bits(), "lane {j}");
                    assert_eq!(reduce1(v[j]).to_bits(), want(j).to_bits(), "alone {j}");
                }
            }
        }
    }

    #[test]
    fn exp_matches_f64_and_is_zero_far_below() {
        if !available() {
            eprintln!("skipped: no AVX2, FMA and F16C on this CPU");
            return;
        }
        let xs: Vec<f32> = (0..=8000).map(|i| -(i as f32) / 90.0).collect();
        for chunk in xs.chunks(8) {
            let mut lanes = [0f32; 8];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 8];
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(lanes.as_ptr()))) };
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = (x as f64).exp();
                if x < -87.0 {
                    assert_eq!(g, 0.0, "e^{x}");
                } else {
                    assert!(
                        (g as f64 - want).abs() <= 4e-7 * want,
                        "e^{x}: {g} vs {want}"
                    );
                }
            }
        }
    }
}
