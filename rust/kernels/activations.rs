//! Activations rounded once per call into the formats weights of each type meet, as llama.cpp's CPU backend rounds them.
//!
//! llama.cpp converts a matmul's activations to its weight type's `vec_dot_type` before the
//! dot products; lljx does the same, once per call per format, shared by every weight of that
//! call. The x86 build of llama.cpp quantizes Q8_0 and Q8_1 with its AVX path (scale
//! max|x| / 127 stored as f16, values x · (127 / max|x|) rounded to nearest even) and Q8_K
//! with its reference code (scale from the signed largest-magnitude value, -127 / max, kept as
//! f32). The extra sums kept here (per block and per 16/32 values) are what the integer dot
//! products need to apply zero points and minimums without touching the values again.

use super::ggml::{ActFormat, QK32, QK_K};

/// Q8_0 or Q8_1 activations of `rows` rows: int8 values and, per block of 32, the scale as the
/// kernels use it (the f16-rounded value), the sum of the values and, for Q8_1, llama.cpp's
/// `s` (f16-rounded scale · sum, with the unrounded scale).
pub struct Q8Rows {
    pub n_in: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub sum: Vec<i32>,
    pub s: Vec<f32>,
}

/// Q8_K activations: int8 values and per block of 256 the f32 scale, the sums per 16 values
/// and per 32 values, and the sums per 32 packed in pairs as two i16 (for `vpdpwssd`).
pub struct Q8KRows {
    pub n_in: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub bsum16: Vec<i32>,
    pub bsum32: Vec<i32>,
    pub bsum32_pairs: Vec<i32>,
}

/// One call's activations in every format its weights need (the others stay empty).
pub struct Activations<'a> {
    pub rows: usize,
    pub n_in: usize,
    pub f32: &'a [f32],
    /// f16-rounded values, held as f32.
    pub f16: Vec<f32>,
    /// bf16 bits, rounded to nearest even.
    pub bf16: Vec<u16>,
    /// The same bf16 values as f32 in the order the float tiles take them where they widen
    /// BF16 weights (`float_tiles::split_bf16`, `widens_bf16`); empty elsewhere.
    pub bf16_f32: Vec<f32>,
    pub q8_0: Option<Q8Rows>,
    pub q8_1: Option<Q8Rows>,
    pub q8k: Option<Q8KRows>,
}

impl<'a> Activations<'a> {
    /// Rounds x [rows, n_in] into each of `formats` (f32 is always available as x itself),
    /// with AVX-512 where the CPU has it (same results).
    pub fn new(x: &'a [f32], rows: usize, n_in: usize, formats: &[ActFormat]) -> Activations<'a> {
        Self::build(x, rows, n_in, formats, fast())
    }

    /// `new` with the plain-Rust rounding only.
    pub fn portable(
        x: &'a [f32],
        rows: usize,
        n_in: usize,
        formats: &[ActFormat],
    ) -> Activations<'a> {
        Self::build(x, rows, n_in, formats, false)
    }

    fn build(
        x: &'a [f32],
        rows: usize,
        n_in: usize,
        formats: &[ActFormat],
        simd: bool,
    ) -> Activations<'a> {
        debug_assert_eq!(x.len(), rows * n_in);
        let has = |f: ActFormat| formats.contains(&f);
        let mut acts = Activations {
            rows,
            n_in,
            f32: x,
            f16: Vec::new(),
            bf16: Vec::new(),
            bf16_f32: Vec::new(),
            q8_0: None,
            q8_1: None,
            q8k: None,
        };
        #[cfg(target_arch = "x86_64")]
        if simd {
            use super::act_simd;
            // SAFETY: `fast()` checked the CPU features; the block sizes divide n_in for the
            // weights that asked for these formats.
            unsafe {
                if has(ActFormat::F16) {
                    acts.f16 = vec![0.0; x.len()];
                    act_simd::round_f16(x, &mut acts.f16);
                }
                if has(ActFormat::Bf16) && is_x86_feature_detected!("avx512bf16") {
                    acts.bf16 = vec![0; x.len()];
                    act_simd::round_bf16(x, &mut acts.bf16);
                }
                if has(ActFormat::Q8_0) {
                    acts.q8_0 = Some(act_simd::quantize_q8(x, n_in, false));
                }
                if has(ActFormat::Q8_1) {
                    acts.q8_1 = Some(act_simd::quantize_q8(x, n_in, true));
                }
                if has(ActFormat::Q8K) {
                    acts.q8k = Some(act_simd::quantize_q8k(x, n_in));
                }
            }
        }
        let _ = simd;
        if has(ActFormat::F16) && acts.f16.is_empty() {
            acts.f16 = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        }
        if has(ActFormat::Bf16) && acts.bf16.is_empty() {
            acts.bf16 = x.iter().map(|&v| bf16_bits(v)).collect();
        }
        #[cfg(target_arch = "x86_64")]
        if has(ActFormat::Bf16) && super::float_tiles::widens_bf16() {
            acts.bf16_f32 = super::float_tiles::split_bf16(&acts.bf16, rows, n_in);
        }
        if has(ActFormat::Q8_0) && acts.q8_0.is_none() {
            acts.q8_0 = Some(quantize_q8(x, n_in, false));
        }
        if has(ActFormat::Q8_1) && acts.q8_1.is_none() {
            acts.q8_1 = Some(quantize_q8(x, n_in, true));
        }
        if has(ActFormat::Q8K) && acts.q8k.is_none() {
            acts.q8k = Some(quantize_q8k(x, n_in));
        }
        acts
    }
}

/// Whether the AVX-512 rounding runs here (checked once).
fn fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(super::act_simd::available)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// f32 to bf16 bits, to nearest even, NaN kept quiet (ggml's `ggml_compute_fp32_to_bf16`).
pub fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) | 64) as u16;
    }
    ((bits as u64 + (0x7fff + ((bits >> 16) & 1)) as u64) >> 16) as u16
}

/// Rounds to the nearest integer, ties to even, for |v| < 2^22 (activations scaled to ±127):
/// adding and removing 1.5 · 2^23 leaves no fraction bits. `f32::round_ties_even` would call
/// libm's `rintf` on the baseline x86-64 target.
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12582912.0;
    (v + MAGIC) - MAGIC
}

fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Rows of x in blocks of 32 as llama.cpp's x86 `quantize_row_q8_0` / `quantize_row_q8_1` do.
pub fn quantize_q8(x: &[f32], n_in: usize, with_s: bool) -> Q8Rows {
    let blocks = x.len() / QK32;
    let mut out = Q8Rows {
        n_in,
        qs: vec![0; x.len()],
        d: Vec::with_capacity(blocks),
        sum: Vec::with_capacity(blocks),
        s: Vec::with_capacity(if with_s { blocks } else { 0 }),
    };
    for (block, q) in x.chunks_exact(QK32).zip(out.qs.chunks_exact_mut(QK32)) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in q.iter_mut().zip(block) {
            *q = round_even(v * id) as i8;
            sum += *q as i32;
        }
        out.d.push(f16_round(d));
        out.sum.push(sum);
        if with_s {
            out.s.push(f16_round(d * sum as f32));
        }
    }
    out
}

/// Rows of x in blocks of 256 as llama.cpp's `quantize_row_q8_K_ref` does.
pub fn quantize_q8k(x: &[f32], n_in: usize) -> Q8KRows {
    let blocks = x.len() / QK_K;
    let mut out = Q8KRows {
        n_in,
        qs: vec![0; x.len()],
        d: vec![0.0; blocks],
        bsum16: vec![0; blocks * 16],
        bsum32: vec![0; blocks * 8],
        bsum32_pairs: vec![0; blocks * 4],
    };
    for (b, (block, q)) in x
        .chunks_exact(QK_K)
        .zip(out.qs.chunks_exact_mut(QK_K))
        .enumerate()
    {
        // The first value of largest magnitude, with its sign.
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in block {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in q.iter_mut().zip(block) {
            *q = (round_even(iscale * v) as i32).min(127) as i8;
        }
        out.d[b] = 1.0 / iscale;
        for j in 0..16 {
            out.bsum16[b * 16 + j] = q[j * 16..(j + 1) * 16].iter().map(|&v| v as i32).sum();
        }
        for j in 0..8 {
            out.bsum32[b * 8 + j] = out.bsum16[b * 16 + 2 * j] + out.bsum16[b * 16 + 2 * j + 1];
        }
        for p in 0..4 {
            let (lo, hi) = (out.bsum32[b * 8 + 2 * p], out.bsum32[b * 8 + 2 * p + 1]);
            out.bsum32_pairs[b * 4 + p] =
                (lo as i16 as u16 as u32 | ((hi as i16 as u16 as u32) << 16)) as i32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rounds_like_llama_cpp_x86() {
        // max |x| = 127 makes the multiplier exactly 1: 2.5 and -0.5 are ties, which go to even.
        let mut x = vec![0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -0.5;
        let q = quantize_q8(&x, 32, true);
        assert_eq!(&q.qs[..3], &[127, 2, 0]);
        assert_eq!(q.d[0], 1.0);
        assert_eq!(q.sum[0], 129);
        assert_eq!(q.s[0], 129.0);
        let mut y = vec![0.01f32; 32];
        y[5] = -3.0;
        let q = quantize_q8(&y, 32, true);
        assert_eq!(q.d[0], f16_round(3.0 / 127.0));
        assert_eq!(q.s[0], f16_round(3.0 / 127.0 * q.sum[0] as f32));
        let zero = quantize_q8(&[0.0; 32], 32, false);
        assert!(zero.qs.iter().all(|&v| v == 0) && zero.d[0] == 0.0);
    }

    #[test]
    fn q8k_scales_by_the_signed_maximum() {
        let mut x: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) / 256.0).collect();
        x[7] = 2.0; // the largest magnitude is positive: it maps to -127
        let q = quantize_q8k(&x, 256);
        assert_eq!(q.qs[7], -127);
        assert_eq!(q.d[0], 1.0 / (-127.0 / 2.0));
        let s16: i32 = q.qs[..16].iter().map(|&v| v as i32).sum();
        assert_eq!(q.bsum16[0], s16);
        assert_eq!(q.bsum32[0], q.bsum16[0] + q.bsum16[1]);
        let pair = q.bsum32_pairs[0] as u32;
        assert_eq!(pair as u16 as i16 as i32, q.bsum32[0]);
        assert_eq!((pair >> 16) as u16 as i16 as i32, q.bsum32[1]);
    }

    #[test]
    fn simd_rounding_is_bit_identical_to_the_portable_code() {
        let mut noise = crate::kernels::block_tests::Noise::new(3);
        let mut x: Vec<f32> = (0..4 * 512).map(|_| noise.float() * 3.0).collect();
        x[..32].fill(0.0);
        x[256..512].fill(0.0);
        x[600] = 65504.0 * 4.0; // beyond f16
        x[700] = 1e-30; // below f16's smallest subnormal
        x[900] = -9.0; // a block whose largest magnitude is negative
        let formats = [
            ActFormat::F16,
            ActFormat::Bf16,
            ActFormat::Q8_0,
            ActFormat::Q8_1,
            ActFormat::Q8K,
        ];
        let (a, b) = (
            Activations::new(&x, 4, 512, &formats),
            Activations::portable(&x, 4, 512, &formats),
        );
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.f16), bits(&b.f16));
        assert_eq!(a.bf16, b.bf16);
        for (p, q) in [(&a.q8_0, &b.q8_0), (&a.q8_1, &b.q8_1)] {
            let (p, q) = (p.as_ref().unwrap(), q.as_ref().unwrap());
            assert_eq!(
                (&p.qs, bits(&p.d), &p.sum, bits(&p.s)),
                (&q.qs, bits(&q.d), &q.sum, bits(&q.s))
            );
        }
        let (p, q) = (a.q8k.unwrap(), b.q8k.unwrap());
        assert_eq!(
            (&p.qs, bits(&p.d), &p.bsum16, &p.bsum32, &p.bsum32_pairs),
            (&q.qs, bits(&q.d), &q.bsum16, &q.bsum32, &q.bsum32_pairs)
        );
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        for v in [
            0.5f32, 1.5, 2.5, -0.5, -2.5, 126.5, -127.49, 3.4999, 0.0, -0.0, 127.0,
        ] {
            assert_eq!(round_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(half::bf16::from_bits(bf16_bits(f32::NAN)).is_nan());
    }
}
