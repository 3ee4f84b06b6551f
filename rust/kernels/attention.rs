//! Single-token attention over a KV cache: each query head against every cached position up to its own.
//!
//! Decode attends one new query per head to `len` cached keys: a read of the cache, a
//! softmax and a weighted sum of values. Done in one pass per KV head here, it reads each
//! key and value once; XLA:CPU's batched dots transposed a copy of the cache per layer.

/// Query heads per KV head that the vector kernels keep in registers (Llama models use 1 to 8).
const MAX_GROUP: usize = 8;

/// One KV head's group of `r` query heads: `queries` [r, d], `keys` [t_max, d] (row = position),
/// `values_t` [d, t_max] (transposed), attending positions `0..len`; writes `out` [r, d].
///
/// Panics if the slices do not fit these shapes (callers validate them first).
pub fn attend_group(
    queries: &[f32],
    keys: &[f32],
    values_t: &[f32],
    d: usize,
    len: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    if !try_vector::<false, f32>(queries, keys, values_t, d, len, out, scores) {
        attend_body(queries, keys, values_t, d, len, out, scores);
    }
}

/// `attend_group` over an f16 cache. With AVX-512, or AVX2 with F16C, the kernel widens each
/// vector as it loads it (exactly, so the results are those of `attend_group` over the widened
/// cache), reading half the bytes; otherwise the rows are widened into `widened` first.
#[allow(clippy::too_many_arguments)]
pub fn attend_group_f16(
    queries: &[f32],
    keys: &[half::f16],
    values_t: &[half::f16],
    d: usize,
    len: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
    widened: &mut (Vec<f32>, Vec<f32>),
) {
    if try_vector::<true, half::f16>(queries, keys, values_t, d, len, out, scores) {
        return;
    }
    let t_max = keys.len() / d;
    use half::slice::HalfFloatSliceExt;
    let (k, v) = widened;
    k.resize(len * d, 0.0);
    v.resize(d * len, 0.0);
    keys[..len * d].convert_to_f32_slice(k);
    for (c, run) in v.chunks_exact_mut(len.max(1)).enumerate() {
        values_t[c * t_max..c * t_max + len].convert_to_f32_slice(run);
    }
    attend_group(queries, k, v, d, len, out, scores);
}

/// Checks the shapes (panicking if they do not fit), then runs the AVX-512 kernel over elements
/// T (f16 when HALF) if this CPU and these shapes allow it, else the AVX2 one
/// (`attention_avx2`); false if neither ran.
fn try_vector<const HALF: bool, T>(
    queries: &[f32],
    keys: &[T],
    values_t: &[T],
    d: usize,
    len: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) -> bool {
    let t_max = keys.len() / d.max(1);
    assert!(
        d > 0 && queries.len().is_multiple_of(d) && out.len() == queries.len(),
        "query shape"
    );
    assert!(
        keys.len() == t_max * d && values_t.len() == d * t_max && len <= t_max,
        "cache shape"
    );
    #[cfg(target_arch = "x86_64")]
    {
        use super::attention_avx2::{attend_heads as avx2_heads, available as avx2_available};
        let group = queries.len() / d;
        let (k, v) = (keys.as_ptr() as *const u8, values_t.as_ptr() as *const u8);
        // One compiled body per group size, so each keeps its accumulators in registers.
        macro_rules! heads {
            ($kernel:ident; $($r:literal)*) => {
                match group {
                    $($r => $kernel::<HALF, $r>(queries, k, v, d, t_max, len, out, scores),)*
                    _ => unreachable!("checked against MAX_GROUP above"),
                }
            };
        }
        let fits =
            |lanes: usize| group > 0 && group <= MAX_GROUP && d.is_multiple_of(lanes) && len > 0;
        if fits(16)
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has these features; the shapes were checked above.
            unsafe { heads!(attend_heads; 1 2 3 4 5 6 7 8) };
            return true;
        }
        if fits(8) && avx2_available() {
            // SAFETY: the CPU has AVX2, FMA and F16C; the shapes were checked above.
            unsafe { heads!(avx2_heads; 1 2 3 4 5 6 7 8) };
            return true;
        }
    }
    let _ = scores;
    false
}

/// The kernel for a group of R query heads (at most MAX_GROUP) over f32 (HALF false) or f16
/// (HALF true) K [t_max, d] and V [d, t_max] at `keys` and `values_t`. Requires d a multiple
/// of 16 and len > 0; AVX-512 F, BW and VL. Every cache vector is loaded (and widened) once
/// for all R heads, where it was loaded once per head: one layer of the embedded model (3 heads
/// per KV head, f16 cache in L3) at 1,500 positions took 42 against 55 us for one row and 320
/// against 430 us for eight (2-core Xeon). Sixteen sums are formed at a time, R heads by 16 / R
/// positions (scores) or value rows (outputs), and reduced together in `_mm512_reduce_add_ps`'s
/// order; each sum's multiply-adds run in the same order whatever R is, so every result is the
/// same float as one head computed alone.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn attend_heads<const HALF: bool, const R: usize>(
    queries: &[f32],
    keys: *const u8,
    values_t: *const u8,
    d: usize,
    t_max: usize,
    len: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    use std::arch::x86_64::*;
    // Sixteen cache values at element `i` of `base` as f32 (widened exactly from f16).
    macro_rules! load {
        ($base:expr, $i:expr) => {
            if HALF {
                _mm512_cvtph_ps(_mm256_loadu_si256(
                    ($base as *const u16).add($i) as *const __m256i
                ))
            } else {
                _mm512_loadu_ps(($base as *const f32).add($i))
            }
        };
    }
    // Sums per head in one reduction: positions per block (scores), value rows per block (outputs).
    let per: usize = 16 / R;
    let size = if HALF { 2 } else { 4 };
    let scale = _mm512_set1_ps(1.0 / (d as f32).sqrt());
    // Scores [R, len] padded to whole vectors of positions, so the value pass reads whole vectors.
    let padded = len.next_multiple_of(16);
    // The scores pass writes every position below `len`; only the padding, which the value
    // pass multiplies by masked-out zeros, must hold finite values.
    if scores.len() < R * padded {
        scores.resize(R * padded, 0.0);
    }
    for h in 0..R {
        scores[h * padded + len..(h + 1) * padded].fill(0.0);
    }
    let (q, k, s) = (queries.as_ptr(), keys, scores.as_mut_ptr());
    // The value pass reads d short runs of `len` values, t_max apart: too short for the hardware
    // prefetchers to follow, so a batch's cache (past L3) stalled on every run. Each run is
    // requested sixteen runs early, the first ones before the scores, which hide their wait.
    let v = values_t;
    for c in 0..d.min(16) {
        prefetch_run(v.add(c * t_max * size), len * size);
    }
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // Lanes h * per .. h * per + count of `sums` to `to` + h * stride, for every head h.
    macro_rules! scatter {
        ($sums:expr, $to:expr, $stride:expr, $count:expr) => {
            let mask: __mmask16 = ((1u32 << $count) - 1) as __mmask16;
            for h in 0..R {
                let picked = _mm512_permutexvar_ps(
                    _mm512_add_epi32(lanes, _mm512_set1_epi32((h * per) as i32)),
                    $sums,
                );
                _mm512_mask_storeu_ps($to.add(h * $stride), mask, picked);
            }
        };
    }
    let whole = len - len % per;
    for t0 in (0..whole).step_by(per) {
        let mut acc = [_mm512_setzero_ps(); 16];
        for c in (0..d).step_by(16) {
            let mut qc = [_mm512_setzero_ps(); R];
            for h in 0..R {
                qc[h] = _mm512_loadu_ps(q.add(h * d + c));
            }
            for p in 0..per {
                let key = load!(k, (t0 + p) * d + c);
                for h in 0..R {
                    acc[h * per + p] = _mm512_fmadd_ps(qc[h], key, acc[h * per + p]);
                }
            }
        }
        for a in acc.iter_mut() {
            *a = _mm512_mul_ps(*a, scale);
        }
        scatter!(reduce16(acc), s.add(t0), padded, per);
    }
    for t in whole..len {
        for h in 0..R {
            let mut acc = _mm512_setzero_ps();
            for c in (0..d).step_by(16) {
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(h * d + c)), load!(k, t * d + c), acc);
            }
            *s.add(h * padded + t) = _mm512_reduce_add_ps(_mm512_mul_ps(acc, scale));
        }
    }
    for h in 0..R {
        softmax_avx512(&mut scores[h * padded..h * padded + len]);
    }
    // Positions past `len` are masked out of the value reads: the cache there may hold anything.
    let tail = (len % 16) as u32;
    let last_mask: __mmask16 = if tail == 0 {
        0xffff
    } else {
        ((1u32 << tail) - 1) as __mmask16
    };
    let s = scores.as_ptr();
    let o = out.as_mut_ptr();
    let last = padded - 16;
    for c0 in (0..d).step_by(per) {
        for c in (c0 + 16)..(c0 + 16 + per).min(d) {
            prefetch_run(v.add(c * t_max * size), len * size);
        }
        // A short last block repeats its last row; those sums are not stored.
        let mut acc = [_mm512_setzero_ps(); 16];
        // Whole vectors load unmasked (a masked load in this loop costs an extra operation
        // on the FMA ports); only the last vector of positions is masked.
        for t in (0..last).step_by(16) {
            let mut weights = [_mm512_setzero_ps(); R];
            for h in 0..R {
                weights[h] = _mm512_loadu_ps(s.add(h * padded + t));
            }
            for j in 0..per {
                let values = load!(v, (c0 + j).min(d - 1) * t_max + t);
                for h in 0..R {
                    acc[h * per + j] = _mm512_fmadd_ps(weights[h], values, acc[h * per + j]);
                }
            }
        }
        let mut weights = [_mm512_setzero_ps(); R];
        for h in 0..R {
            weights[h] = _mm512_loadu_ps(s.add(h * padded + last));
        }
        for j in 0..per {
            let at = (c0 + j).min(d - 1) * t_max + last;
            let values = if HALF {
                _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                    last_mask,
                    (v as *const i16).add(at),
                ))
            } else {
                _mm512_maskz_loadu_ps(last_mask, (v as *const f32).add(at))
            };
            for h in 0..R {
                acc[h * per + j] = _mm512_fmadd_ps(weights[h], values, acc[h * per + j]);
            }
        }
        scatter!(reduce16(acc), o.add(c0), d, per.min(d - c0));
    }
}

/// `softmax` sixteen scores at a time, with `exp16` for libm's scalar `expf` (a call per score
/// took about a third of a long row's attention). The sum adds lanes, then the lanes in
/// `_mm512_reduce_add_ps`'s order: one fixed order for a row of any batch.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(row: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = row.len();
    if n == 0 {
        return;
    }
    let p = row.as_mut_ptr();
    let whole = n - n % 16;
    let tail = ((1u32 << (n - whole)) - 1) as __mmask16;
    let mut top = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..whole).step_by(16) {
        top = _mm512_max_ps(top, _mm512_loadu_ps(p.add(i)));
    }
    if tail != 0 {
        top = _mm512_mask_max_ps(top, tail, top, _mm512_maskz_loadu_ps(tail, p.add(whole)));
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    let mut total = _mm512_setzero_ps();
    for i in (0..whole).step_by(16) {
        let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), max));
        _mm512_storeu_ps(p.add(i), e);
        total = _mm512_add_ps(total, e);
    }
    if tail != 0 {
        let x = _mm512_sub_ps(_mm512_maskz_loadu_ps(tail, p.add(whole)), max);
        let e = _mm512_maskz_mov_ps(tail, exp16(x));
        _mm512_mask_storeu_ps(p.add(whole), tail, e);
        total = _mm512_add_ps(total, e);
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(total));
    for i in (0..whole).step_by(16) {
        _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), inv));
    }
    if tail != 0 {
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, p.add(whole)), inv);
        _mm512_mask_storeu_ps(p.add(whole), tail, v);
    }
}

/// e^x for x <= 0 (a softmax's shifted scores), within about 2 ulp: x = n ln 2 + r with
/// |r| <= ln 2 / 2, e^r by its degree-6 Taylor polynomial, then scaled by 2^n. Inputs below
/// -104 give 0, as e^x rounds to there in f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let n =
        _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    // ln 2 in two parts (Cody and Waite), so n ln 2 is subtracted without rounding away r.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut e = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(e, n)
}

/// Lane j of the result is `_mm512_reduce_add_ps(v[j])`, bit for bit: the same tree of
/// additions (halves of eight, of four, then lanes 0+2 and 1+3, then the two), done for
/// sixteen vectors at once with shuffles between the levels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn reduce16(v: [std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // The last level leaves vector 4s + l's sum in lane 4l + s: take the inputs in that order.
    // Plain loops, not closures: a closure would not inherit this function's target features.
    let mut w = [_mm512_setzero_ps(); 16];
    for i in 0..16 {
        w[i] = v[4 * (i % 4) + i / 4];
    }
    // Lanes i + 8 onto i: 128-bit lanes [a0 a1 b0 b1] + [a2 a3 b2 b3].
    let mut halves = [_mm512_setzero_ps(); 8];
    for p in 0..8 {
        let (a, b) = (w[2 * p], w[2 * p + 1]);
        halves[p] = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        );
    }
    // Lanes i + 4 onto i: one vector's four sums per 128-bit lane.
    let mut quarters = [_mm512_setzero_ps(); 4];
    for m in 0..4 {
        let (a, b) = (halves[2 * m], halves[2 * m + 1]);
        quarters[m] = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        );
    }
    // Within each 128-bit lane: 0 + 2 and 1 + 3, two vectors per lane.
    let mut pairs = [_mm512_setzero_ps(); 2];
    for k in 0..2 {
        let (a, b) = (quarters[2 * k], quarters[2 * k + 1]);
        pairs[k] = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        );
    }
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(pairs[0], pairs[1]),
        _mm512_shuffle_ps::<0xDD>(pairs[0], pairs[1]),
    )
}

/// Asks for the cache lines of `bytes` bytes from `at` (a hint: no fault, no effect on results).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn prefetch_run(at: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let mut offset = 0;
    while offset < bytes {
        _mm_prefetch::<_MM_HINT_T0>((at as *const i8).wrapping_add(offset));
        offset += 64;
    }
    if bytes > 0 {
        _mm_prefetch::<_MM_HINT_T0>((at as *const i8).wrapping_add(bytes - 1));
    }
}

// Inlined into each target-feature wrapper, so the compiler vectorises it for that CPU.
#[inline(always)]
fn attend_body(
    queries: &[f32],
    keys: &[f32],
    values_t: &[f32],
    d: usize,
    len: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let r = queries.len() / d;
    let t_max = keys.len() / d;
    let sqrt_d = (d as f32).sqrt();
    scores.clear();
    scores.resize(r * len, 0.0);
    for t in 0..len {
        let key = &keys[t * d..(t + 1) * d];
        for (i, q) in queries.chunks_exact(d).enumerate() {
            scores[i * len + t] = dot(q, key) / sqrt_d;
        }
    }
    for row in scores.chunks_exact_mut(len.max(1)) {
        softmax(row);
    }
    for c in 0..d {
        let values = &values_t[c * t_max..c * t_max + len];
        for i in 0..r {
            out[i * d + c] = dot(&scores[i * len..(i + 1) * len], values);
        }
    }
}

/// Sixteen independent partial sums, so the loop vectorises without reassociating one sum.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut a16 = a.chunks_exact(16);
    let mut b16 = b.chunks_exact(16);
    for (x, y) in (&mut a16).zip(&mut b16) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        total += *v;
    }
    let inv = 1.0 / total;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_f16_cache_gives_the_results_of_its_f32_widening() {
        let (d, t_max, r) = (64, 37, 3);
        let wave = |n: usize, m: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * m) % 97) as f32 - 48.0) / 29.0)
                .collect()
        };
        let q = wave(r * d, 13);
        let k16: Vec<half::f16> = wave(t_max * d, 7)
            .into_iter()
            .map(half::f16::from_f32)
            .collect();
        let v16: Vec<half::f16> = wave(d * t_max, 11)
            .into_iter()
            .map(half::f16::from_f32)
            .collect();
        let k32: Vec<f32> = k16.iter().map(|x| x.to_f32()).collect();
        let v32: Vec<f32> = v16.iter().map(|x| x.to_f32()).collect();
        for len in [1, 16, 17, 37] {
            let (mut want, mut got) = (vec![0.0; r * d], vec![0.0; r * d]);
            attend_group(&q, &k32, &v32, d, len, &mut want, &mut Vec::new());
            let mut widened = (Vec::new(), Vec::new());
            attend_group_f16(
                &q,
                &k16,
                &v16,
                d,
                len,
                &mut got,
                &mut Vec::new(),
                &mut widened,
            );
            assert_eq!(got, want, "len {len}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_softmax_matches_f64() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512F on this CPU");
            return;
        }
        for n in [1usize, 15, 16, 17, 401] {
            let row: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0)
                .collect();
            let mut got = row.clone();
            unsafe { softmax_avx512(&mut got) };
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let total: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            for (g, &v) in got.iter().zip(&row) {
                let want = (v as f64 - max).exp() / total;
                // f32's own rounding of v - max moves e^(v - max) by up to |v - max| * 2^-24.
                assert!(
                    (*g as f64 - want).abs() <= 2e-6 * want + 1e-30,
                    "n={n}: {g} vs {want}"
                );
            }
        }
        let mut wide = [0.0f32, -200.0, -90.0, -1e30];
        unsafe { softmax_avx512(&mut wide) };
        assert_eq!(wide[0], 1.0);
        assert!(wide[1..].iter().all(|&v| (0.0..1e-38).contains(&v)));
    }

    fn reference(q: &[f32], k: &[f32], vt: &[f32], d: usize, len: usize) -> Vec<f64> {
        let t_max = k.len() / d;
        let r = q.len() / d;
        let mut out = vec![0.0f64; r * d];
        for i in 0..r {
            let s: Vec<f64> = (0..len)
                .map(|t| {
                    (0..d)
                        .map(|c| q[i * d + c] as f64 * k[t * d + c] as f64)
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..d {
                out[i * d + c] = (0..len).map(|t| e[t] / z * vt[c * t_max + t] as f64).sum();
            }
        }
        out
    }

    fn noise(seed: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_float64_for_every_length() {
        for (r, d, t_max) in [
            (3, 64, 40),
            (1, 16, 17),
            (4, 24, 9),
            (8, 128, 35),
            (9, 32, 20),
        ] {
            let q = noise(1, r * d);
            let k = noise(2, t_max * d);
            let vt = noise(3, d * t_max);
            let mut out = vec![0.0; r * d];
            let mut scratch = Vec::new();
            for len in 1..=t_max {
                attend_group(&q, &k, &vt, d, len, &mut out, &mut scratch);
                let want = reference(&q, &k, &vt, d, len);
                for (got, want) in out.iter().zip(&want) {
                    assert!(
                        (*got as f64 - want).abs() < 1e-5,
                        "len {len}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_batched_reduction_adds_in_the_single_reductions_order() {
        use std::arch::x86_64::*;
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        // Magnitudes 1e-3..1e4 side by side make the order of additions show in the bits.
        let values: Vec<f32> = noise(7, 16 * 16 * 50)
            .iter()
            .enumerate()
            .map(|(i, x)| x * 10f32.powi((i % 8) as i32 - 3))
            .collect();
        for chunk in values.chunks_exact(256) {
            // SAFETY: the CPU has AVX-512F; every load reads 16 values of `chunk`.
            unsafe {
                let v: [__m512; 16] =
                    std::array::from_fn(|j| _mm512_loadu_ps(chunk.as_ptr().add(16 * j)));
                let mut got = [0.0f32; 16];
                _mm512_storeu_ps(got.as_mut_ptr(), reduce16(v));
                for j in 0..16 {
                    assert_eq!(
                        got[j].to_bits(),
                        _mm512_reduce_add_ps(v[j]).to_bits(),
                        "lane {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn each_head_of_a_group_is_that_head_attended_alone() {
        // The group kernel forms 16 / r heads' sums per reduction; every sum must keep its own
        // order of additions, bit for bit, for f32 and f16 caches alike.
        for r in 1..=MAX_GROUP {
            for d in [16usize, 64, 128] {
                let t_max = 53;
                let q = noise(11 + r as u32, r * d);
                let k = noise(12, t_max * d);
                let vt = noise(13, d * t_max);
                let k16: Vec<half::f16> = k.iter().map(|&x| half::f16::from_f32(3.0 * x)).collect();
                let v16: Vec<half::f16> =
                    vt.iter().map(|&x| half::f16::from_f32(5.0 * x)).collect();
                let mut widened = (Vec::new(), Vec::new());
                for len in 1..=t_max {
                    let (mut group, mut group16) = (vec![0.0f32; r * d], vec![0.0f32; r * d]);
                    attend_group(&q, &k, &vt, d, len, &mut group, &mut Vec::new());
                    attend_group_f16(
                        &q,
                        &k16,
                        &v16,
                        d,
                        len,
                        &mut group16,
                        &mut Vec::new(),
                        &mut widened,
                    );
                    for h in 0..r {
                        let head = &q[h * d..(h + 1) * d];
                        let (mut alone, mut alone16) = (vec![0.0f32; d], vec![0.0f32; d]);
                        attend_group(head, &k, &vt, d, len, &mut alone, &mut Vec::new());
                        attend_group_f16(
                            head,
                            &k16,
                            &v16,
                            d,
                            len,
                            &mut alone16,
                            &mut Vec::new(),
                            &mut widened,
                        );
                        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        let at = h * d..(h + 1) * d;
                        assert_eq!(
                            bits(&group[at.clone()]),
                            bits(&alone),
                            "f32 r {r} d {d} len {len} head {h}"
                        );
                        assert_eq!(
                            bits(&group16[at]),
                            bits(&alone16),
                            "f16 r {r} d {d} len {len} head {h}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn positions_past_len_are_ignored() {
        let (d, t_max) = (16, 8);
        let q = noise(4, d);
        let mut k = noise(5, t_max * d);
        let mut vt = noise(6, d * t_max);
        let (mut a, mut b, mut scratch) = (vec![0.0; d], vec![0.0; d], Vec::new());
        attend_group(&q, &k, &vt, d, 5, &mut a, &mut scratch);
        k[5 * d..].fill(1e9);
        for c in 0..d {
            vt[c * t_max + 5..c * t_max + t_max].fill(f32::NAN);
        }
        attend_group(&q, &k, &vt, d, 5, &mut b, &mut scratch);
        assert_eq!(a, b);
    }
}
