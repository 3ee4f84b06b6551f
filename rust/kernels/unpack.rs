//! AVX-512 decoding of sixteen GGUF rows at once into tiles: one 32-bit lane per row, four values per lane.
//!
//! The VNNI dot products (`vnni`) multiply a register of weights, lane i holding four
//! consecutive values of output row i, by four activations broadcast to every lane. Getting
//! there from ggml's layout (each row's blocks contiguous) is a 16 x 16 transpose of 32-bit
//! words, done here on the packed bytes before nibbles are split, so it costs one shuffle per
//! 32 bytes of weights. Quad g of a tile holds values 4g..4g + 3 of the block, in order, as
//! unsigned bytes; `blocks` defines the same values one row at a time.
//!
//! No closure here touches a SIMD value: a closure does not inherit its function's target
//! features, and every intrinsic inside it would become a function call.

#![cfg(target_arch = "x86_64")]
// Index loops over lanes, tokens and quads read closer to the data layout than iterator chains.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

/// The CPU features the integer tiles need.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// One 32-value block of sixteen rows: eight quads, the scales and the minimums (Q4_1/Q5_1).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Tile32 {
    pub q: [__m512i; 8],
    pub d: __m512,
    pub m: __m512,
}

// SAFETY: vectors of integers and floats, 640 bytes.
unsafe impl super::scratch::Plain for Tile32 {}

/// One K-quant super-block of sixteen rows: 64 quads; integer scales per sub-block (8 of 32
/// values for Q4_K/Q5_K, 16 of 16 for Q6_K); the Q4_K/Q5_K minimums as i16 pairs (m_2p, m_2p+1)
/// for `vpdpwssd`; the super-scales.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct KTile {
    pub q: [__m512i; 64],
    pub sc: [__m512i; 16],
    pub mins: [__m512i; 4],
    pub d: __m512,
    pub dmin: __m512,
}

// SAFETY: vectors of integers and floats, 5,504 bytes.
unsafe impl super::scratch::Plain for KTile {}

/// Sixteen rows of one weight: lane i reads row `first + min(i, count - 1)` (a short tile
/// repeats its last row; those lanes are never stored).
#[derive(Clone, Copy)]
pub struct Rows {
    base: *const u8,
    offsets: [usize; 16],
    index: __m512i,
}

impl Rows {
    /// # Safety
    /// `data` must hold rows first..first + count of `row_bytes` bytes each; 1 <= count <= 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn new(data: *const u8, row_bytes: usize, first: usize, count: usize) -> Rows {
        let offsets: [usize; 16] = std::array::from_fn(|i| i.min(count - 1) * row_bytes);
        let index = _mm512_loadu_si512(offsets.map(|o| o as i32).as_ptr() as *const _);
        Rows {
            base: data.add(first * row_bytes),
            offsets,
            index,
        }
    }

    /// Where row `i` of the tile starts.
    ///
    /// # Safety
    /// `i` < 16.
    #[inline(always)]
    pub unsafe fn start(&self, i: usize) -> *const u8 {
        self.base.add(self.offsets[i])
    }

    #[inline(always)]
    unsafe fn at(&self, i: usize, byte: usize) -> *const u8 {
        self.base.add(self.offsets[i] + byte)
    }

    #[inline(always)]
    unsafe fn gather(&self, byte: usize) -> __m512i {
        _mm512_i32gather_epi32::<1>(self.index, self.base.add(byte) as *const _)
    }
}

/// out[j] lane i = rows[i] lane j, for 32-bit lanes.
#[inline(always)]
unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut a = [_mm512_setzero_si512(); 16];
    for k in 0..8 {
        a[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        a[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    let mut b = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        b[4 * g] = _mm512_unpacklo_epi64(a[4 * g], a[4 * g + 2]);
        b[4 * g + 1] = _mm512_unpackhi_epi64(a[4 * g], a[4 * g + 2]);
        b[4 * g + 2] = _mm512_unpacklo_epi64(a[4 * g + 1], a[4 * g + 3]);
        b[4 * g + 3] = _mm512_unpackhi_epi64(a[4 * g + 1], a[4 * g + 3]);
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for e in 0..4 {
        let c0 = _mm512_shuffle_i32x4::<0x44>(b[e], b[4 + e]);
        let c1 = _mm512_shuffle_i32x4::<0xEE>(b[e], b[4 + e]);
        let d0 = _mm512_shuffle_i32x4::<0x44>(b[8 + e], b[12 + e]);
        let d1 = _mm512_shuffle_i32x4::<0xEE>(b[8 + e], b[12 + e]);
        out[e] = _mm512_shuffle_i32x4::<0x88>(c0, d0);
        out[4 + e] = _mm512_shuffle_i32x4::<0xDD>(c0, d0);
        out[8 + e] = _mm512_shuffle_i32x4::<0x88>(c1, d1);
        out[12 + e] = _mm512_shuffle_i32x4::<0xDD>(c1, d1);
    }
    out
}

/// The four 32-bit words at byte `at` of each row, lane i holding row i's (a gather costs
/// more on AMD cores than these sixteen loads and eight in-lane shuffles).
#[inline(always)]
unsafe fn words4(rows: &Rows, at: usize) -> [__m512i; 4] {
    // z[i]'s 128-bit lane l holds row 4l + i, so the in-lane 4 x 4 transpose leaves rows in order.
    let mut z = [_mm512_setzero_si512(); 4];
    for (i, v) in z.iter_mut().enumerate() {
        let row = |l: usize| _mm_loadu_si128(rows.at(4 * l + i, at) as *const _);
        *v = _mm512_zextsi128_si512(row(0));
        *v = _mm512_inserti32x4::<1>(*v, row(1));
        *v = _mm512_inserti32x4::<2>(*v, row(2));
        *v = _mm512_inserti32x4::<3>(*v, row(3));
    }
    let t0 = _mm512_unpacklo_epi32(z[0], z[1]);
    let t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    let t2 = _mm512_unpacklo_epi32(z[2], z[3]);
    let t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    [
        _mm512_unpacklo_epi64(t0, t2),
        _mm512_unpackhi_epi64(t0, t2),
        _mm512_unpacklo_epi64(t1, t3),
        _mm512_unpackhi_epi64(t1, t3),
    ]
}

/// 64 bytes at byte `at` of each of the sixteen rows.
#[inline(always)]
unsafe fn load_rows(rows: &Rows, at: usize) -> [__m512i; 16] {
    let mut r = [_mm512_setzero_si512(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm512_loadu_si512(rows.at(i, at) as *const _);
    }
    r
}

#[inline(always)]
unsafe fn nibbles(v: __m512i) -> (__m512i, __m512i) {
    let m = _mm512_set1_epi8(0x0f);
    (
        _mm512_and_si512(v, m),
        _mm512_and_si512(_mm512_srli_epi32::<4>(v), m),
    )
}

/// v shifted left by `s` bits (right when negative), 32-bit lanes.
#[inline(always)]
unsafe fn shift(v: __m512i, s: i32) -> __m512i {
    if s >= 0 {
        _mm512_sllv_epi32(v, _mm512_set1_epi32(s))
    } else {
        _mm512_srlv_epi32(v, _mm512_set1_epi32(-s))
    }
}

/// f16 values in the low (or, with `high`, the upper) half of each lane, as f32.
#[inline(always)]
unsafe fn halves_to_f32(v: __m512i, high: bool) -> __m512 {
    let v = if high { _mm512_srli_epi32::<16>(v) } else { v };
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
}

/// Byte `j` of each lane, zero-extended (`shuffle_epi8` picks within 128-bit lanes).
#[inline(always)]
unsafe fn lane_byte(v: __m512i, j: i32) -> __m512i {
    let lanes = _mm512_set_epi32(12, 8, 4, 0, 12, 8, 4, 0, 12, 8, 4, 0, 12, 8, 4, 0);
    // Selector bytes [j, -1, -1, -1] per lane: the -1 bytes (high bit set) give zeros.
    let idx = _mm512_or_si512(
        _mm512_add_epi32(lanes, _mm512_set1_epi32(j)),
        _mm512_set1_epi32(!0xff),
    );
    _mm512_shuffle_epi8(v, idx)
}

/// Bytes `j` and `j + 1` of each lane as an i16 pair (zero-extended).
#[inline(always)]
unsafe fn lane_byte_pair(v: __m512i, j: i32) -> __m512i {
    _mm512_or_si512(
        lane_byte(v, j),
        _mm512_slli_epi32::<16>(lane_byte(v, j + 1)),
    )
}

/// Decodes the super-block at byte `at` of each row, Q4_K, or Q5_K with `q5`.
///
/// # Safety
/// The CPU must have the features `available` checks; every row must hold the block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn unpack_q4k_q5k(rows: &Rows, at: usize, q5: bool, t: &mut KTile) {
    let [d_dmin, s0, s1, s2] = words4(rows, at);
    t.d = halves_to_f32(d_dmin, false);
    t.dmin = halves_to_f32(d_dmin, true);
    let low6 = _mm512_set1_epi8(0x3f);
    let (nib, top) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
    let sc_lo = _mm512_and_si512(s0, low6);
    let m_lo = _mm512_and_si512(s1, low6);
    let sc_hi = _mm512_or_si512(
        _mm512_and_si512(s2, nib),
        _mm512_and_si512(_mm512_srli_epi32::<2>(s0), top),
    );
    let m_hi = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi32::<4>(s2), nib),
        _mm512_and_si512(_mm512_srli_epi32::<2>(s1), top),
    );
    for j in 0..4 {
        t.sc[j] = lane_byte(sc_lo, j as i32);
        t.sc[4 + j] = lane_byte(sc_hi, j as i32);
    }
    t.mins = [
        lane_byte_pair(m_lo, 0),
        lane_byte_pair(m_lo, 2),
        lane_byte_pair(m_hi, 0),
        lane_byte_pair(m_hi, 2),
    ];
    let (qs_at, qh) = if q5 {
        let mut r = [_mm512_setzero_si512(); 16];
        for (i, v) in r.iter_mut().enumerate() {
            *v = _mm512_zextsi256_si512(_mm256_loadu_si256(rows.at(i, at + 16) as *const _));
        }
        (at + 48, Some(transpose16(r)))
    } else {
        (at + 16, None)
    };
    let bit4 = _mm512_set1_epi8(0x10);
    for h in 0..2 {
        let packed = transpose16(load_rows(rows, qs_at + 64 * h));
        for (g, &v) in packed.iter().enumerate() {
            let c = 2 * h + g / 8;
            let (mut lo, mut hi) = nibbles(v);
            if let Some(qh) = &qh {
                let bits = qh[g % 8];
                lo = _mm512_or_si512(lo, _mm512_and_si512(shift(bits, 4 - 2 * c as i32), bit4));
                hi = _mm512_or_si512(hi, _mm512_and_si512(shift(bits, 3 - 2 * c as i32), bit4));
            }
            t.q[16 * c + g % 8] = lo;
            t.q[16 * c + 8 + g % 8] = hi;
        }
    }
}

/// Decodes the Q6_K super-block at byte `at` of each row.
///
/// # Safety
/// The CPU must have the features `available` checks; every row must hold the block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn unpack_q6k(rows: &Rows, at: usize, t: &mut KTile) {
    // The f16 scale is the last two bytes of the block: read the word ending there.
    t.d = halves_to_f32(rows.gather(at + 206), true);
    let scales = words4(rows, at + 192);
    for (w, &s) in scales.iter().enumerate() {
        t.sc[4 * w] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(s));
        t.sc[4 * w + 1] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<16>(s));
        t.sc[4 * w + 2] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<8>(s));
        t.sc[4 * w + 3] = _mm512_srai_epi32::<24>(s);
    }
    let qh = transpose16(load_rows(rows, at + 128));
    let two = _mm512_set1_epi8(0x30);
    for n in 0..2 {
        let ql = transpose16(load_rows(rows, at + 64 * n));
        for g in 0..16 {
            let (lo, hi) = nibbles(ql[g]);
            // Quads 32n + g and 32n + 16 + g; their high bits sit at 2 · (quad / 8 % 4) in qh word 8n + g % 8.
            for (k, low) in [(g, lo), (16 + g, hi)] {
                let bits = shift(qh[8 * n + k % 8], 4 - 2 * (k / 8) as i32);
                t.q[32 * n + k] = _mm512_or_si512(low, _mm512_and_si512(bits, two));
            }
        }
    }
}

/// The ggml 32-value formats by layout: where the quants start, whether they are 4-bit with
/// a fifth bit in a 32-bit word (at `qh`), whether an f16 minimum follows the scale.
#[derive(Clone, Copy, Debug)]
pub struct Layout32 {
    pub block_bytes: usize,
    pub qs: usize,
    pub qh: Option<usize>,
    pub min: bool,
    pub eight_bit: bool,
}

/// Decodes up to four consecutive blocks (`count`) starting at byte `at` of each row.
///
/// # Safety
/// The CPU must have the features `available` checks; every row must hold the block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn unpack_32(
    rows: &Rows,
    at: usize,
    layout: Layout32,
    count: usize,
    tiles: &mut [Tile32; 4],
) {
    for (k, tile) in tiles.iter_mut().enumerate().take(count) {
        let head = rows.gather(at + k * layout.block_bytes);
        tile.d = halves_to_f32(head, false);
        tile.m = if layout.min {
            halves_to_f32(head, true)
        } else {
            _mm512_setzero_ps()
        };
    }
    if layout.eight_bit {
        // Two blocks per transpose: each row's two runs of 32 int8 values side by side.
        let flip = _mm512_set1_epi8(-128);
        for pair in (0..count).step_by(2) {
            let mut r = [_mm512_setzero_si512(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                let first = rows.at(i, at + pair * layout.block_bytes + layout.qs);
                *v = _mm512_zextsi256_si512(_mm256_loadu_si256(first as *const _));
                if pair + 1 < count {
                    let second = first.add(layout.block_bytes);
                    *v = _mm512_inserti64x4::<1>(*v, _mm256_loadu_si256(second as *const _));
                }
            }
            let words = transpose16(r);
            for k in pair..(pair + 2).min(count) {
                for g in 0..8 {
                    tiles[k].q[g] = _mm512_xor_si512(words[8 * (k - pair) + g], flip);
                }
            }
        }
        return;
    }
    // Four blocks per transpose: each row's four runs of 16 packed bytes side by side.
    let mut r = [_mm512_setzero_si512(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        for k in 0..count {
            let p = rows.at(i, at + k * layout.block_bytes + layout.qs);
            let x = _mm_loadu_si128(p as *const _);
            *v = match k {
                0 => _mm512_inserti32x4::<0>(*v, x),
                1 => _mm512_inserti32x4::<1>(*v, x),
                2 => _mm512_inserti32x4::<2>(*v, x),
                _ => _mm512_inserti32x4::<3>(*v, x),
            };
        }
    }
    let words = transpose16(r);
    let lanes = _mm512_set_epi32(12, 8, 4, 0, 12, 8, 4, 0, 12, 8, 4, 0, 12, 8, 4, 0);
    let spread = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(0x0101_0101));
    for k in 0..count {
        let qh = layout
            .qh
            .map(|qh| rows.gather(at + k * layout.block_bytes + qh));
        for g in 0..4 {
            let (lo, hi) = nibbles(words[4 * k + g]);
            tiles[k].q[g] = lo;
            tiles[k].q[4 + g] = hi;
        }
        if let Some(qh) = qh {
            // Value v takes bit v of qh as its fifth bit: quad g's four bits sit in byte g / 2.
            for g in 0..8 {
                let byte =
                    _mm512_add_epi32(spread, _mm512_set1_epi32(0x0101_0101 * (g as i32 / 2)));
                let picked = _mm512_shuffle_epi8(qh, byte);
                let bits = if g % 2 == 0 {
                    0x0804_0201
                } else {
                    0x8040_2010u32 as i32
                };
                let set = _mm512_test_epi8_mask(picked, _mm512_set1_epi32(bits));
                tiles[k].q[g] = _mm512_or_si512(
                    tiles[k].q[g],
                    _mm512_maskz_mov_epi8(set, _mm512_set1_epi8(0x10)),
                );
            }
        }
    }
}
