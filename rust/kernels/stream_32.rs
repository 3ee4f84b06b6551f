//! Decode for the 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) straight from the file's bytes: four rows by four blocks per register.
//!
//! As in `stream_k`, decode favours few operations per weight byte over reuse: a register
//! holds four consecutive blocks (one per 128-bit lane) of four rows (one per 32-bit word
//! of the lane), built from 16-byte loads and an in-lane 4 x 4 transpose, so a lane's
//! `vpdpbusd` sums end as one block's integer dot for one row. Lanes are then regrouped
//! sixteen rows per register and the blocks folded in order with the same float operations
//! as `vnni::sweep32`, so results are bit-identical to the prompt path and `portable_dot`.

#![cfg(target_arch = "x86_64")]
// Index loops over lanes, tokens and quads read closer to the data layout than iterator chains.
#![allow(clippy::needless_range_loop)]

use super::activations::Q8Rows;
use super::ggml::{BlockWeight, GgmlType, QK32};
use std::arch::x86_64::*;
use std::ops::Range;

/// Blocks per register (one per 128-bit lane).
const GROUP: usize = 4;

/// Q8_0/Q8_1 activations re-laid for `tile`: per activation row and group of four blocks,
/// eight vectors (word e, nibble n) whose lane L repeats the quad e + 4n of block 4j + L,
/// and one vector of the four blocks' sums (lane L, repeated).
pub struct Lanes32 {
    quads: Vec<u32>,
    sums: Vec<i32>,
    groups: usize,
}

impl Lanes32 {
    pub fn new(q8: &Q8Rows, rows: usize) -> Lanes32 {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512 F is present.
            unsafe { Self::new_avx512(q8, rows) }
        } else {
            Self::new_scalar(q8, rows)
        }
    }

    fn new_scalar(q8: &Q8Rows, rows: usize) -> Lanes32 {
        let blocks = q8.n_in / QK32;
        let groups = blocks.div_ceil(GROUP);
        let mut lanes = Lanes32 {
            quads: vec![0; rows * groups * 8 * 16],
            sums: vec![0; rows * groups * 16],
            groups,
        };
        for t in 0..rows {
            for j in 0..groups {
                for l in 0..GROUP.min(blocks - j * GROUP) {
                    let block = t * blocks + j * GROUP + l;
                    let qs = &q8.qs[block * QK32..(block + 1) * QK32];
                    for v in 0..8 {
                        let q = v / 2 + 4 * (v % 2);
                        let word = u32::from_le_bytes([
                            qs[4 * q] as u8,
                            qs[4 * q + 1] as u8,
                            qs[4 * q + 2] as u8,
                            qs[4 * q + 3] as u8,
                        ]);
                        let at = ((t * groups + j) * 8 + v) * 16 + 4 * l;
                        lanes.quads[at..at + 4].fill(word);
                    }
                    let at = (t * groups + j) * 16 + 4 * l;
                    lanes.sums[at..at + 4].fill(q8.sum[block]);
                }
            }
        }
        lanes
    }

    /// `new_scalar`'s layout, one permute per vector: built before every decode product on the
    /// calling thread alone, where the scalar fill and the zeroing of its buffers cost a 30-layer
    /// model's 8-row step about 0.3 ms while the helper thread waited.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F.
    #[target_feature(enable = "avx512f")]
    unsafe fn new_avx512(q8: &Q8Rows, rows: usize) -> Lanes32 {
        let blocks = q8.n_in / QK32;
        let groups = blocks.div_ceil(GROUP);
        let (quad_len, sum_len) = (rows * groups * 8 * 16, rows * groups * 16);
        let mut quads: Vec<u32> = Vec::with_capacity(quad_len);
        let mut sums: Vec<i32> = Vec::with_capacity(sum_len);
        let (qp, sp) = (quads.as_mut_ptr(), sums.as_mut_ptr());
        // Vector v, lane L: word v / 2 + 4 (v % 2) of block L, from the four blocks' 32 words.
        let picks: [__m512i; 8] = std::array::from_fn(|v| {
            let q = (v / 2 + 4 * (v % 2)) as i32;
            _mm512_setr_epi32(
                q,
                q,
                q,
                q,
                8 + q,
                8 + q,
                8 + q,
                8 + q,
                16 + q,
                16 + q,
                16 + q,
                16 + q,
                24 + q,
                24 + q,
                24 + q,
                24 + q,
            )
        });
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        for t in 0..rows {
            for j in 0..groups {
                let first = t * blocks + j * GROUP;
                let n = GROUP.min(blocks - j * GROUP);
                // Blocks past the weight's last load as zeros: their lanes are summed, never folded.
                let words = (n * 8) as u32;
                let low_mask = if words >= 16 {
                    0xffff
                } else {
                    ((1u32 << words) - 1) as __mmask16
                };
                let high_mask = if words <= 16 {
                    0
                } else {
                    ((1u32 << (words - 16)) - 1) as __mmask16
                };
                let src = q8.qs.as_ptr().add(first * QK32) as *const i32;
                let low = _mm512_maskz_loadu_epi32(low_mask, src);
                // Masked lanes are never read: a short last group's address may pass the end.
                let high = _mm512_maskz_loadu_epi32(high_mask, src.wrapping_add(16));
                let at = (t * groups + j) * 8 * 16;
                for (v, pick) in picks.iter().enumerate() {
                    let lane = _mm512_permutex2var_epi32(low, *pick, high);
                    _mm512_storeu_si512(qp.add(at + v * 16) as *mut _, lane);
                }
                let block_sums = _mm512_maskz_loadu_epi32(
                    ((1u32 << n) - 1) as __mmask16,
                    q8.sum.as_ptr().add(first),
                );
                _mm512_storeu_si512(
                    sp.add((t * groups + j) * 16) as *mut _,
                    _mm512_permutexvar_epi32(spread, block_sums),
                );
            }
        }
        // SAFETY: every (row, group) wrote its eight quad vectors and its sums vector above.
        quads.set_len(quad_len);
        sums.set_len(sum_len);
        Lanes32 {
            quads,
            sums,
            groups,
        }
    }

    #[inline(always)]
    unsafe fn quad(&self, t: usize, j: usize, v: usize) -> __m512i {
        _mm512_loadu_si512(
            self.quads
                .as_ptr()
                .add(((t * self.groups + j) * 8 + v) * 16) as *const _,
        )
    }

    #[inline(always)]
    unsafe fn sums(&self, t: usize, j: usize) -> __m512i {
        _mm512_loadu_si512(self.sums.as_ptr().add((t * self.groups + j) * 16) as *const _)
    }
}

/// Q8_0 streams up to this many activation rows. Its blocks are twice the bytes of the 4-bit
/// ones, so from four rows on, weights decoded once into tiles (`vnni`) are as fast or faster
/// from memory; at one row streaming is 1.6x faster (measured on Zen 5).
pub const Q8_0_MAX_ROWS: usize = 3;

/// Whether `tile` is the faster kernel for this type at this many activation rows (at most
/// STREAM_MAX_ROWS).
pub fn handles(ty: GgmlType, rows: usize) -> bool {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => true,
        GgmlType::Q8_0 => rows <= Q8_0_MAX_ROWS,
        _ => false,
    }
}

struct Format {
    qs: usize,
    qh: Option<usize>,
    min: bool,
    zero: i32,
}

fn format(ty: GgmlType) -> Format {
    match ty {
        GgmlType::Q4_0 => Format {
            qs: 2,
            qh: None,
            min: false,
            zero: 8,
        },
        GgmlType::Q4_1 => Format {
            qs: 4,
            qh: None,
            min: true,
            zero: 0,
        },
        GgmlType::Q5_0 => Format {
            qs: 6,
            qh: Some(2),
            min: false,
            zero: 16,
        },
        GgmlType::Q8_0 => Format {
            qs: 2,
            qh: None,
            min: false,
            zero: 128,
        },
        _ => Format {
            qs: 8,
            qh: Some(4),
            min: true,
            zero: 0,
        },
    }
}

/// Output rows `rows` of a 4-bit 32-value weight for 1..=8 activation rows.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI; `handles(w.ty, n_tokens)`; `out` must hold n_tokens ·
/// w.n_out values; `lanes` must be built from `q8`, the activations this type takes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile(
    w: &BlockWeight,
    rows: Range<usize>,
    q8: &Q8Rows,
    lanes: &Lanes32,
    n_tokens: usize,
    out: *mut f32,
) {
    // One compiled body per activation-row count keeps the accumulators in registers.
    // Q8_0 gets bodies of its own: a runtime branch between the byte and nibble loads slowed
    // the 4-bit formats by half at one row.
    if w.ty == GgmlType::Q8_0 {
        tile_n::<true>(w, rows, q8, lanes, n_tokens, out)
    } else {
        tile_n::<false>(w, rows, q8, lanes, n_tokens, out)
    }
}

#[inline(always)]
unsafe fn tile_n<const EIGHT: bool>(
    w: &BlockWeight,
    rows: Range<usize>,
    q8: &Q8Rows,
    lanes: &Lanes32,
    n_tokens: usize,
    out: *mut f32,
) {
    match n_tokens {
        1 => tile_t::<1, EIGHT>(w, rows, q8, lanes, out),
        2 => tile_t::<2, EIGHT>(w, rows, q8, lanes, out),
        3 => tile_t::<3, EIGHT>(w, rows, q8, lanes, out),
        4 => tile_t::<4, EIGHT>(w, rows, q8, lanes, out),
        5 => tile_t::<5, EIGHT>(w, rows, q8, lanes, out),
        6 => tile_t::<6, EIGHT>(w, rows, q8, lanes, out),
        7 => tile_t::<7, EIGHT>(w, rows, q8, lanes, out),
        _ => tile_t::<8, EIGHT>(w, rows, q8, lanes, out),
    }
}

// One function per activation-row count, so that each gets its own register allocation:
// inlined into one body, the unrolled groups lost their gain.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_t<const T: usize, const EIGHT: bool>(
    w: &BlockWeight,
    rows: Range<usize>,
    q8: &Q8Rows,
    lanes: &Lanes32,
    out: *mut f32,
) {
    let f = format(w.ty);
    let bb = w.ty.block_bytes();
    let blocks = w.n_in / QK32;
    for start in rows.clone().step_by(16) {
        let count = (rows.end - start).min(16);
        let offsets: [i32; 16] = std::array::from_fn(|i| (i.min(count - 1) * w.row_bytes) as i32);
        let index = _mm512_loadu_si512(offsets.as_ptr() as *const _);
        let base = w.data.as_ptr().add(start * w.row_bytes);
        let next = base.wrapping_add(16 * w.row_bytes);
        let mut facc = [_mm512_setzero_ps(); T];
        for j in 0..blocks.div_ceil(GROUP) {
            let first = j * GROUP;
            let n = GROUP.min(blocks - first);
            let at = first * bb;
            // The next tile's contiguous bytes in address order, a share per group: from DRAM
            // on two cores 38% faster for Q4_1 and 10-20% for Q8_0 than asking for each
            // group's blocks row by row.
            super::stream_k::prefetch_share(next, 16 * w.row_bytes, j, blocks.div_ceil(GROUP));
            // With the block count fixed at compile time, the loads and inserts unroll: one
            // activation row runs twice as fast, four rows 1.5x (measured on Zen 5).
            match n {
                4 => group::<T, 4, EIGHT>(
                    base, &offsets, index, at, &f, bb, j, first, q8, lanes, &mut facc,
                ),
                3 => group::<T, 3, EIGHT>(
                    base, &offsets, index, at, &f, bb, j, first, q8, lanes, &mut facc,
                ),
                2 => group::<T, 2, EIGHT>(
                    base, &offsets, index, at, &f, bb, j, first, q8, lanes, &mut facc,
                ),
                _ => group::<T, 1, EIGHT>(
                    base, &offsets, index, at, &f, bb, j, first, q8, lanes, &mut facc,
                ),
            }
        }
        let mask: __mmask16 = if count >= 16 {
            0xffff
        } else {
            (1u16 << count) - 1
        };
        for (t, v) in facc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(t * w.n_out + start), mask, *v);
        }
    }
}

/// Sixteen bytes at `at` of blocks 0..N (one per 128-bit lane) of rows 4g..4g + 3.
#[inline(always)]
unsafe fn load_lanes<const N: usize>(
    base: *const u8,
    offsets: &[i32; 16],
    g: usize,
    at: usize,
    bb: usize,
) -> [__m512i; 4] {
    let mut r = [_mm512_setzero_si512(); 4];
    for (i, v) in r.iter_mut().enumerate() {
        let row = base.add(offsets[4 * g + i] as usize + at);
        for k in 0..N {
            let x = _mm_loadu_si128(row.add(k * bb) as *const _);
            *v = match k {
                0 => _mm512_zextsi128_si512(x),
                1 => _mm512_inserti32x4::<1>(*v, x),
                2 => _mm512_inserti32x4::<2>(*v, x),
                _ => _mm512_inserti32x4::<3>(*v, x),
            };
        }
    }
    r
}

/// The in-lane 4 x 4 transpose of 32-bit words: out[e] lane L = [r0, r1, r2, r3] word 4L + e.
#[inline(always)]
unsafe fn transpose4(r: [__m512i; 4]) -> [__m512i; 4] {
    let t0 = _mm512_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm512_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm512_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm512_unpackhi_epi32(r[2], r[3]);
    [
        _mm512_unpacklo_epi64(t0, t2),
        _mm512_unpackhi_epi64(t0, t2),
        _mm512_unpacklo_epi64(t1, t3),
        _mm512_unpackhi_epi64(t1, t3),
    ]
}

/// 128-bit lane g of v repeated in all four lanes.
#[inline(always)]
unsafe fn lane_of(v: __m512i, g: usize) -> __m512i {
    match g {
        0 => _mm512_shuffle_i32x4::<0x00>(v, v),
        1 => _mm512_shuffle_i32x4::<0x55>(v, v),
        2 => _mm512_shuffle_i32x4::<0xAA>(v, v),
        _ => _mm512_shuffle_i32x4::<0xFF>(v, v),
    }
}

/// Whether each group of four rows is decoded into registers and met by every activation row
/// at once. Otherwise the sixteen rows are decoded into a buffer that each activation row then
/// reads in turn: past two rows the sums of all four groups no longer fit in registers, and
/// spilling them cost more. Measured on Zen 5, Q4_1 through the buffer: at 8 rows 1.55x
/// faster in cache and 1.4x from DRAM on two cores, at 4 rows 1.3x. Q8_0, streamed up to
/// three rows only, was up to 15% slower through it.
const fn in_registers(rows: usize, eight_bit: bool) -> bool {
    rows <= 2 || eight_bit
}

/// Blocks first..first + N (N <= 4) of all sixteen rows against every activation row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn group<const T: usize, const N: usize, const EIGHT: bool>(
    base: *const u8,
    offsets: &[i32; 16],
    index: __m512i,
    at: usize,
    f: &Format,
    bb: usize,
    j: usize,
    first: usize,
    q8: &Q8Rows,
    lanes: &Lanes32,
    facc: &mut [__m512; T],
) {
    let mut head = [_mm512_setzero_si512(); GROUP];
    let mut high = [_mm512_setzero_si512(); GROUP];
    for k in 0..N {
        head[k] = _mm512_i32gather_epi32::<1>(index, base.add(at + k * bb) as *const _);
        if let Some(qh) = f.qh {
            high[k] = _mm512_i32gather_epi32::<1>(index, base.add(at + k * bb + qh) as *const _);
        }
    }
    let mut scales = [_mm512_setzero_ps(); GROUP];
    let mut mins = [_mm512_setzero_ps(); GROUP];
    for k in 0..N {
        scales[k] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head[k]));
        mins[k] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(head[k])));
    }
    let blocks = q8.n_in / QK32;
    if in_registers(T, EIGHT) {
        let mut sums = [[_mm512_setzero_si512(); 4]; T];
        for g in 0..4 {
            let q = decode_quads::<N, EIGHT>(base, offsets, at, f, bb, g, &high);
            for (t, sums) in sums.iter_mut().enumerate() {
                sums[g] = row_sum(&q, f, lanes, t, j);
            }
        }
        for (t, sums) in sums.iter().enumerate() {
            fold::<N>(
                sums,
                &scales,
                &mins,
                f,
                q8,
                t * blocks + first,
                &mut facc[t],
            );
        }
        return;
    }
    // Each entry is written before it is read.
    let mut decoded = std::mem::MaybeUninit::<[[__m512i; 8]; 4]>::uninit();
    let decoded_at = decoded.as_mut_ptr() as *mut [__m512i; 8];
    for g in 0..4 {
        decoded_at
            .add(g)
            .write(decode_quads::<N, EIGHT>(base, offsets, at, f, bb, g, &high));
    }
    let decoded = decoded.assume_init_ref();
    for t in 0..T {
        let mut sums = [_mm512_setzero_si512(); 4];
        for (g, sum) in sums.iter_mut().enumerate() {
            *sum = row_sum(&decoded[g], f, lanes, t, j);
        }
        fold::<N>(
            &sums,
            &scales,
            &mins,
            f,
            q8,
            t * blocks + first,
            &mut facc[t],
        );
    }
}

/// Rows 4g..4g + 3 of blocks first..first + N as eight vectors of unsigned quads (value v of
/// block L in 128-bit lane L), ready for `vpdpbusd`.
#[inline(always)]
unsafe fn decode_quads<const N: usize, const EIGHT: bool>(
    base: *const u8,
    offsets: &[i32; 16],
    at: usize,
    f: &Format,
    bb: usize,
    g: usize,
    high: &[__m512i; GROUP],
) -> [__m512i; 8] {
    let words = transpose4(load_lanes::<N>(base, offsets, g, at + f.qs, bb));
    let mut q = [_mm512_setzero_si512(); 8];
    if EIGHT {
        // Values 0..15 then 16..31 of each block: quads e and e + 4, as the nibbles of the
        // 4-bit formats are; the sign bit flipped makes them unsigned for vpdpbusd.
        let upper = transpose4(load_lanes::<N>(base, offsets, g, at + f.qs + 16, bb));
        let flip = _mm512_set1_epi8(-128);
        for e in 0..4 {
            q[2 * e] = _mm512_xor_si512(words[e], flip);
            q[2 * e + 1] = _mm512_xor_si512(upper[e], flip);
        }
        return q;
    }
    let nib = _mm512_set1_epi8(0x0f);
    for e in 0..4 {
        q[2 * e] = _mm512_and_si512(words[e], nib);
        q[2 * e + 1] = _mm512_and_si512(_mm512_srli_epi32::<4>(words[e]), nib);
    }
    if f.qh.is_some() {
        // Lane L holds rows 4g.. of block first + L; value v's fifth bit is bit v of qh.
        let mut qh = lane_of(high[0], g);
        for k in 1..N {
            qh = _mm512_mask_mov_epi32(qh, 0xf << (4 * k), lane_of(high[k], g));
        }
        let words_at = _mm512_set_epi32(12, 8, 4, 0, 12, 8, 4, 0, 12, 8, 4, 0, 12, 8, 4, 0);
        let spread = _mm512_mullo_epi32(words_at, _mm512_set1_epi32(0x0101_0101));
        for v in 0..8 {
            // Quad v/2 + 4 (v % 2) takes bits 4 quad.. of qh, which sit in byte quad / 2.
            let quad = v / 2 + 4 * (v % 2);
            let picked = _mm512_shuffle_epi8(
                qh,
                _mm512_add_epi32(spread, _mm512_set1_epi32(0x0101_0101 * (quad as i32 / 2))),
            );
            let bits = if quad % 2 == 0 {
                0x0804_0201
            } else {
                0x8040_2010u32 as i32
            };
            let set = _mm512_test_epi8_mask(picked, _mm512_set1_epi32(bits));
            q[v] = _mm512_or_si512(q[v], _mm512_maskz_mov_epi8(set, _mm512_set1_epi8(0x10)));
        }
    }
    q
}

/// Activation row t's integer dot with one group's decoded quads: lane L word e is row 4g + e
/// of block first + L.
#[inline(always)]
unsafe fn row_sum(q: &[__m512i; 8], f: &Format, lanes: &Lanes32, t: usize, j: usize) -> __m512i {
    // Formats with a min have no zero point: no multiply per activation row.
    let mut even = if f.zero == 0 {
        _mm512_setzero_si512()
    } else {
        _mm512_mullo_epi32(lanes.sums(t, j), _mm512_set1_epi32(-f.zero))
    };
    let mut odd = _mm512_setzero_si512();
    for v in (0..8).step_by(2) {
        even = _mm512_dpbusd_epi32(even, q[v], lanes.quad(t, j, v));
        odd = _mm512_dpbusd_epi32(odd, q[v + 1], lanes.quad(t, j, v + 1));
    }
    _mm512_add_epi32(even, odd)
}

/// One activation row's four group sums regrouped sixteen rows per register and folded into
/// its totals block by block, with `vnni::sweep32`'s float operations in its order.
#[inline(always)]
unsafe fn fold<const N: usize>(
    sums: &[__m512i; 4],
    scales: &[__m512; GROUP],
    mins: &[__m512; GROUP],
    f: &Format,
    q8: &Q8Rows,
    first_index: usize,
    facc: &mut __m512,
) {
    // Lane L of the four groups side by side: sixteen rows of block first + L.
    let [g0, g1, g2, g3] = *sums;
    let (x01, y01) = (
        _mm512_shuffle_i32x4::<0x44>(g0, g1),
        _mm512_shuffle_i32x4::<0xEE>(g0, g1),
    );
    let (x23, y23) = (
        _mm512_shuffle_i32x4::<0x44>(g2, g3),
        _mm512_shuffle_i32x4::<0xEE>(g2, g3),
    );
    let isums = [
        _mm512_shuffle_i32x4::<0x88>(x01, x23),
        _mm512_shuffle_i32x4::<0xDD>(x01, x23),
        _mm512_shuffle_i32x4::<0x88>(y01, y23),
        _mm512_shuffle_i32x4::<0xDD>(y01, y23),
    ];
    for k in 0..N {
        let i = first_index + k;
        let dd = _mm512_mul_ps(scales[k], _mm512_set1_ps(*q8.d.get_unchecked(i)));
        *facc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isums[k]), dd, *facc);
        if f.min {
            *facc = _mm512_fmadd_ps(mins[k], _mm512_set1_ps(*q8.s.get_unchecked(i)), *facc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_lanes_equal_scalar_lanes() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512 F");
            return;
        }
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        // Whole groups of four blocks, and weights whose last group holds one to three.
        for n_in in [32, 64, 96, 128, 160, 576, 1536] {
            for rows in 1..=8 {
                let blocks = rows * n_in / QK32;
                let q8 = Q8Rows {
                    n_in,
                    qs: (0..rows * n_in).map(|_| next() as i8).collect(),
                    d: vec![1.0; blocks],
                    sum: (0..blocks).map(|_| next() as i32).collect(),
                    s: vec![1.0; blocks],
                };
                let scalar = Lanes32::new_scalar(&q8, rows);
                // SAFETY: AVX-512 F checked above.
                let vector = unsafe { Lanes32::new_avx512(&q8, rows) };
                assert_eq!(scalar.groups, vector.groups);
                assert!(
                    scalar.quads == vector.quads,
                    "quads differ: n_in {n_in}, rows {rows}"
                );
                assert!(
                    scalar.sums == vector.sums,
                    "sums differ: n_in {n_in}, rows {rows}"
                );
            }
        }
    }
}
