//! AVX-512 versions of the activation rounding in `activations`, bit-identical to it (a prompt rounds millions of values per call).

#![cfg(target_arch = "x86_64")]

use super::activations::{Q8KRows, Q8Rows};
use super::ggml::{QK32, QK_K};
use std::arch::x86_64::*;

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

#[inline(always)]
unsafe fn abs(v: __m512) -> __m512 {
    _mm512_castsi512_ps(_mm512_and_si512(
        _mm512_castps_si512(v),
        _mm512_set1_epi32(0x7fff_ffff),
    ))
}

/// `activations::quantize_q8` for every block of 32.
///
/// # Safety
/// `available()` must hold; `x.len()` must be a multiple of 32.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_q8(x: &[f32], n_in: usize, with_s: bool) -> Q8Rows {
    let blocks = x.len() / QK32;
    let mut out = Q8Rows {
        n_in,
        qs: vec![0; x.len()],
        d: vec![0.0; blocks],
        sum: vec![0; blocks],
        s: vec![0.0; if with_s { blocks } else { 0 }],
    };
    for b in 0..blocks {
        let p = x.as_ptr().add(b * QK32);
        let (v0, v1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs(v0), abs(v1)));
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q0 = _mm512_cvt_roundps_epi32::<NEAREST>(_mm512_mul_ps(v0, id));
        let q1 = _mm512_cvt_roundps_epi32::<NEAREST>(_mm512_mul_ps(v1, id));
        let q = out.qs.as_mut_ptr().add(b * QK32);
        _mm_storeu_si128(q as *mut _, _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128(q.add(16) as *mut _, _mm512_cvtsepi32_epi8(q1));
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        out.d[b] = half::f16::from_f32(d).to_f32();
        out.sum[b] = sum;
        if with_s {
            out.s[b] = half::f16::from_f32(d * sum as f32).to_f32();
        }
    }
    out
}

/// `activations::quantize_q8k` for every block of 256.
///
/// # Safety
/// `available()` must hold; `x.len()` must be a multiple of 256.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_q8k(x: &[f32], n_in: usize) -> Q8KRows {
    let blocks = x.len() / QK_K;
    let mut out = Q8KRows {
        n_in,
        qs: vec![0; x.len()],
        d: vec![0.0; blocks],
        bsum16: vec![0; blocks * 16],
        bsum32: vec![0; blocks * 8],
        bsum32_pairs: vec![0; blocks * 4],
    };
    for b in 0..blocks {
        let p = x.as_ptr().add(b * QK_K);
        let mut vmax = _mm512_setzero_ps();
        for c in 0..16 {
            vmax = _mm512_max_ps(vmax, abs(_mm512_loadu_ps(p.add(16 * c))));
        }
        let amax = _mm512_reduce_max_ps(vmax);
        if amax == 0.0 || amax.is_nan() {
            continue;
        }
        // The first value whose magnitude is the maximum, with its sign.
        let mut max = 0.0f32;
        for c in 0..16 {
            let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(
                abs(_mm512_loadu_ps(p.add(16 * c))),
                _mm512_set1_ps(amax),
            );
            if hit != 0 {
                max = *p.add(16 * c + hit.trailing_zeros() as usize);
                break;
            }
        }
        let iscale = -127.0 / max;
        let scale = _mm512_set1_ps(iscale);
        let q = out.qs.as_mut_ptr().add(b * QK_K);
        for c in 0..16 {
            let v = _mm512_cvt_roundps_epi32::<NEAREST>(_mm512_mul_ps(
                _mm512_loadu_ps(p.add(16 * c)),
                scale,
            ));
            let v = _mm512_min_epi32(v, _mm512_set1_epi32(127));
            _mm_storeu_si128(q.add(16 * c) as *mut _, _mm512_cvtsepi32_epi8(v));
            out.bsum16[b * 16 + c] = _mm512_reduce_add_epi32(v);
        }
        out.d[b] = 1.0 / iscale;
        for j in 0..8 {
            out.bsum32[b * 8 + j] = out.bsum16[b * 16 + 2 * j] + out.bsum16[b * 16 + 2 * j + 1];
        }
        for pair in 0..4 {
            let (lo, hi) = (
                out.bsum32[b * 8 + 2 * pair],
                out.bsum32[b * 8 + 2 * pair + 1],
            );
            out.bsum32_pairs[b * 4 + pair] =
                (lo as i16 as u16 as u32 | ((hi as i16 as u16 as u32) << 16)) as i32;
        }
    }
    out
}

/// x rounded to f16 (nearest even) and back, into `out`.
///
/// # Safety
/// `available()` must hold; `out.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn round_f16(x: &[f32], out: &mut [f32]) {
    let mut k = 0;
    while k < x.len() {
        let left = x.len() - k;
        let mask: __mmask16 = if left >= 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        };
        let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(k));
        let r = _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(k), mask, r);
        k += 16;
    }
}

/// x rounded to bf16 bits (nearest even, NaN kept quiet), into `out`.
///
/// # Safety
/// The CPU must have AVX-512 BF16; `out.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn round_bf16(x: &[f32], out: &mut [u16]) {
    let mut k = 0;
    while k < x.len() {
        let left = x.len() - k;
        let mask: __mmask16 = if left >= 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        };
        let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(k));
        let r: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        _mm256_mask_storeu_epi16(out.as_mut_ptr().add(k) as *mut i16, mask, r);
        k += 16;
    }
}
