//! Decode for Q4_K, Q5_K and Q6_K straight from the file's bytes: four rows per register, no tiles stored.
//!
//! The prompt path (`vnni`) transposes sixteen rows into tiles and keeps them for many
//! activation rows. Decode reads each weight once, so here the work per byte matters: a
//! register holds four rows in each 128-bit lane (lane L, row i: one packed word of row i),
//! built with in-lane 4 x 4 transposes only, and the activations are laid out to match
//! (`KLanes`: each lane's four activation bytes repeated for the four rows). A row's four
//! partial sums (one per 128-bit lane) are added at the end of each super-block, giving the
//! same exact integers as `vnni::dot_k`, and the scales are applied with the same float
//! operations, so the results are bit-identical to the prompt path and `portable_dot`.

#![cfg(target_arch = "x86_64")]
// Index loops over lanes, tokens and quads read closer to the data layout than iterator chains.
#![allow(clippy::needless_range_loop)]

use super::activations::Q8KRows;
use super::ggml::{BlockWeight, GgmlType, QK_K};
use std::arch::x86_64::*;
use std::ops::Range;

/// Activation vectors per super-block: 2 halves x 4 words x (low, high nibbles).
const VECTORS: usize = 16;

/// Q8_K activations re-laid for `tile`: per activation row and super-block, sixteen 64-byte
/// vectors (half h, word e, nibble n) whose 128-bit lane L repeats the activation quad that
/// meets word 4L + e of the weights, and, for Q6_K, four vectors of -32 · (sums of 16).
pub struct KLanes {
    q4: Vec<u32>,
    q6: Vec<u32>,
    q6_init: Vec<i32>,
    blocks: usize,
}

/// Quad (four values) of a super-block that meets word e of half h in 128-bit lane L.
fn q4_quad(h: usize, e: usize, high: usize, l: usize) -> usize {
    16 * (2 * h + l / 2) + 4 * (l % 2) + e + 8 * high
}

fn q6_quad(n: usize, e: usize, high: usize, l: usize) -> usize {
    32 * n + 4 * l + e + 16 * high
}

impl KLanes {
    pub fn new(q8: &Q8KRows, rows: usize, q4: bool, q6: bool) -> KLanes {
        let blocks = q8.n_in / QK_K;
        let words = rows * blocks * VECTORS * 16;
        let mut lanes = KLanes {
            q4: vec![0; if q4 { words } else { 0 }],
            q6: vec![0; if q6 { words } else { 0 }],
            q6_init: vec![0; if q6 { rows * blocks * 4 * 16 } else { 0 }],
            blocks,
        };
        for i in 0..rows * blocks {
            let qs = &q8.qs[i * QK_K..(i + 1) * QK_K];
            let quad = |q: usize| {
                u32::from_le_bytes([
                    qs[4 * q] as u8,
                    qs[4 * q + 1] as u8,
                    qs[4 * q + 2] as u8,
                    qs[4 * q + 3] as u8,
                ])
            };
            for v in 0..VECTORS {
                let (h, e, high) = (v / 8, v / 2 % 4, v % 2);
                for l in 0..4 {
                    let at = (i * VECTORS + v) * 16 + 4 * l;
                    if q4 {
                        lanes.q4[at..at + 4].fill(quad(q4_quad(h, e, high, l)));
                    }
                    if q6 {
                        lanes.q6[at..at + 4].fill(quad(q6_quad(h, e, high, l)));
                    }
                }
            }
            if q6 {
                for k in 0..4 {
                    let (n, high) = (k / 2, k % 2);
                    for l in 0..4 {
                        let init = -32 * q8.bsum16[i * 16 + 8 * n + 4 * high + l];
                        let at = (i * 4 + k) * 16 + 4 * l;
                        lanes.q6_init[at..at + 4].fill(init);
                    }
                }
            }
        }
        lanes
    }

    #[inline(always)]
    unsafe fn vector(&self, q6: bool, token: usize, block: usize, v: usize) -> __m512i {
        let data = if q6 { &self.q6 } else { &self.q4 };
        _mm512_loadu_si512(
            data.as_ptr()
                .add(((token * self.blocks + block) * VECTORS + v) * 16) as *const _,
        )
    }

    #[inline(always)]
    unsafe fn q6_init(&self, token: usize, block: usize, k: usize) -> __m512i {
        _mm512_loadu_si512(
            self.q6_init
                .as_ptr()
                .add(((token * self.blocks + block) * 4 + k) * 16) as *const _,
        )
    }
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

/// Per 128-bit lane L, byte `pick[L]` of every 32-bit word, zero- or sign-extended.
#[inline(always)]
unsafe fn bytes_by_lane(v: __m512i, pick: [i32; 4], signed: bool) -> __m512i {
    // Selector bytes put the chosen byte on top of each word; the rest select nothing.
    let mut sel = [0i32; 16];
    for l in 0..4 {
        for k in 0..4 {
            sel[4 * l + k] =
                (0x8080_8080u32 as i32 & 0x00ff_ffff) | ((4 * k as i32 + pick[l]) << 24);
        }
    }
    let top = _mm512_shuffle_epi8(v, _mm512_loadu_si512(sel.as_ptr() as *const _));
    if signed {
        _mm512_srai_epi32::<24>(top)
    } else {
        _mm512_srli_epi32::<24>(top)
    }
}

/// Output rows `rows` (any count) of a K-quant for at most STREAM_MAX_ROWS activation rows.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI; `out` must hold q8's rows · w.n_out values;
/// `lanes` must be built from `q8` with this weight's format.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile(
    w: &BlockWeight,
    rows: Range<usize>,
    q8: &Q8KRows,
    lanes: &KLanes,
    n_tokens: usize,
    out: *mut f32,
) {
    if multiply_is_slow() {
        by_rows::<true>(w, rows, q8, lanes, n_tokens, out)
    } else {
        by_rows::<false>(w, rows, q8, lanes, n_tokens, out)
    }
}

/// One compiled body per activation-row count keeps every accumulator in a register.
#[inline(always)]
unsafe fn by_rows<const MADD: bool>(
    w: &BlockWeight,
    rows: Range<usize>,
    q8: &Q8KRows,
    lanes: &KLanes,
    n_tokens: usize,
    out: *mut f32,
) {
    match n_tokens {
        1 => tile_t::<1, MADD>(w, rows, q8, lanes, out),
        2 => tile_t::<2, MADD>(w, rows, q8, lanes, out),
        3 => tile_t::<3, MADD>(w, rows, q8, lanes, out),
        4 => tile_t::<4, MADD>(w, rows, q8, lanes, out),
        5 => tile_t::<5, MADD>(w, rows, q8, lanes, out),
        6 => tile_t::<6, MADD>(w, rows, q8, lanes, out),
        7 => tile_t::<7, MADD>(w, rows, q8, lanes, out),
        _ => tile_t::<8, MADD>(w, rows, q8, lanes, out),
    }
}

/// Whether a 512-bit 32-bit multiply competes with the integer dot products for one port:
/// on Intel's AVX-512 cores it is two operations on the port `vpdpbusd` runs on, so Q4_K
/// scales its sub-block sums with one 16-bit multiply-add instead (single thread on an Intel
/// Xeon with AVX-512 FP16, Q4_K: 2 and 4 rows 5-10% faster, 8 rows 18-20% from L3 and the
/// same in cache). Zen 5 runs the multiply beside the dot products; there it measured no better.
fn multiply_is_slow() -> bool {
    super::vendor::is_intel()
}

// One function per activation-row count, so that each gets its own register allocation.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_t<const T: usize, const MADD: bool>(
    w: &BlockWeight,
    rows: Range<usize>,
    q8: &Q8KRows,
    lanes: &KLanes,
    out: *mut f32,
) {
    let q6 = w.ty == GgmlType::Q6K;
    let q5 = w.ty == GgmlType::Q5K;
    let blocks = w.n_in / QK_K;
    let bb = w.ty.block_bytes();
    for start in rows.clone().step_by(16) {
        let count = (rows.end - start).min(16);
        let row: [*const u8; 16] = std::array::from_fn(|i| {
            w.data
                .as_ptr()
                .add((start + i.min(count - 1)) * w.row_bytes)
        });
        let next = w.data.as_ptr().wrapping_add((start + 16) * w.row_bytes);
        let mut facc = [_mm512_setzero_ps(); T];
        // The next tile, one tile ahead: its sixteen rows are one contiguous run of memory,
        // asked for in address order, a share per block. Asked for block by block across its
        // rows (the order it is read) it streamed 5-9% slower from DRAM on two cores. Each
        // block's share is split in eight, one per half row group, so a block never asks for
        // more lines at once than the core can have in flight: whole shares (36 lines of a
        // 2,048-wide Q4_K tile) stalled the prefetch instructions until earlier lines came in,
        // 17% of the kernel's time at eight rows. 1B Q4_K_M steps: at 4 rows 20% faster in 3
        // of 4 paired runs when first split; at 8 rows, on the 2-core Xeon guest, 112.8 ->
        // 96.5 ms (six interleaved rounds, every one faster; an earlier pair had them 6% slower).
        let ahead = Ahead {
            from: next,
            span: 16 * w.row_bytes,
            blocks,
        };
        if T >= 3 && prefetch_needs_touched_pages() {
            touch_pages(w.data, (start + 32) * w.row_bytes, 16 * w.row_bytes);
        }
        for b in 0..blocks {
            let at = b * bb;
            if q6 {
                block_q6::<T>(&row, at, b, q8, lanes, &mut facc, &ahead);
            } else if q5 {
                block_q4::<T, true, false>(&row, at, b, q8, lanes, &mut facc, &ahead);
            } else {
                block_q4::<T, false, MADD>(&row, at, b, q8, lanes, &mut facc, &ahead);
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

/// Whether the weights' pages are touched ahead of their prefetches (`touch_pages`): it paid
/// on Zen 5 (measured there, below). Intel's cores walk the page tables for a prefetch that
/// misses the TLB, and there the touch only stalled on its loads: 1B Q4_K_M on the 2-core
/// Xeon guest, two runs of interleaved rounds, 8-row steps 6% faster without it, 4-row steps
/// within noise.
fn prefetch_needs_touched_pages() -> bool {
    !super::vendor::is_intel()
}

/// Reads one byte of each 4 KiB page of `data[at..at + span]` (clipped to `data`), so the
/// pages' address translations are in the TLB by the time their lines are prefetched and
/// read. From three activation rows on, a tile takes long enough that the prefetches of the
/// next one did not keep the weights ahead from DRAM: measured on Zen 5, single thread over
/// 75 MB of Q4_K, 8 rows ran at 54-64 G multiply-adds/s against 130 in cache, 85 with huge
/// pages, and 96 with the pages touched two tiles ahead (Q6_K 83 -> 96, 4 rows 8-15% faster;
/// one row gained nothing, so it is left out).
#[inline(always)]
fn touch_pages(data: &[u8], at: usize, span: usize) {
    let end = (at + span).min(data.len());
    let mut offset = at;
    let mut seen = 0u8;
    while offset < end {
        // SAFETY: offset < data.len(), so the read is inside the slice.
        seen = seen.wrapping_add(unsafe { std::ptr::read_volatile(data.as_ptr().add(offset)) });
        offset = (((data.as_ptr() as usize + offset) | 4095) + 1) - data.as_ptr() as usize;
    }
    std::hint::black_box(seen);
}

/// The bytes to prefetch while a tile is read: a share per block, split in eight.
struct Ahead {
    from: *const u8,
    span: usize,
    blocks: usize,
}

impl Ahead {
    /// Step `step` (0..8, one per half row group) of block `b`.
    #[inline(always)]
    unsafe fn share(&self, b: usize, step: usize) {
        prefetch_share(self.from, self.span, 8 * b + step, 8 * self.blocks);
    }
}

/// Share `part` of `parts` of the `span` bytes at `from`, one prefetch per cache line, into L2.
/// Addresses past the weight are harmless for a prefetch.
///
/// L2 rather than L1: a decode step's weights are read once, and asking L1 for them filled its
/// miss buffers ahead of the loads that needed them. The 1B Q4_K_M model's decode step from
/// DRAM (two alternating pairs, 2-core Xeon): one row 43.8 → 38.9 ms, eight rows 98.4 → 94.3 ms;
/// the embedded model, which sits in that machine's L3, did not move. Two tiles ahead instead of
/// one gained nothing more.
#[inline(always)]
pub(super) unsafe fn prefetch_share(from: *const u8, span: usize, part: usize, parts: usize) {
    let (start, end) = (span * part / parts, span * (part + 1) / parts);
    let mut line = start & !63;
    while line < end {
        _mm_prefetch::<_MM_HINT_T1>(from.wrapping_add(line) as *const i8);
        line += 64;
    }
}

/// Four 128-bit loads (rows i, 4 + i, 8 + i, 12 + i) per vector, transposed in-lane: word
/// `w` of the 16 bytes at `at` of every row, lane = row (as `unpack::words4`).
#[inline(always)]
unsafe fn header(row: &[*const u8; 16], at: usize) -> [__m512i; 4] {
    let mut z = [_mm512_setzero_si512(); 4];
    for (i, v) in z.iter_mut().enumerate() {
        *v = _mm512_zextsi128_si512(_mm_loadu_si128(row[i].add(at) as *const _));
        *v = _mm512_inserti32x4::<1>(*v, _mm_loadu_si128(row[4 + i].add(at) as *const _));
        *v = _mm512_inserti32x4::<2>(*v, _mm_loadu_si128(row[8 + i].add(at) as *const _));
        *v = _mm512_inserti32x4::<3>(*v, _mm_loadu_si128(row[12 + i].add(at) as *const _));
    }
    transpose4(z)
}

#[inline(always)]
unsafe fn halves_to_f32(v: __m512i, high: bool) -> __m512 {
    let v = if high { _mm512_srli_epi32::<16>(v) } else { v };
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
}

/// 64 bytes at `at` of rows 4g..4g + 3 (no closure: closures lose the target features).
#[inline(always)]
unsafe fn load_group(row: &[*const u8; 16], g: usize, at: usize) -> [__m512i; 4] {
    let mut r = [_mm512_setzero_si512(); 4];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm512_loadu_si512(row[4 * g + i].add(at) as *const _);
    }
    r
}

/// 32 bytes at `at` of rows 4g..4g + 3, each in both halves of its register.
#[inline(always)]
unsafe fn load_group_twice(row: &[*const u8; 16], g: usize, at: usize) -> [__m512i; 4] {
    let mut r = [_mm512_setzero_si512(); 4];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm512_broadcast_i64x4(_mm256_loadu_si256(row[4 * g + i].add(at) as *const _));
    }
    r
}

/// Adds group g's row sums into lanes 4g..4g + 3 of each activation row's total: lane 4g + i
/// gains the sum over the 128-bit lanes of the group's word i. Folding each group as it ends
/// keeps T accumulators live instead of 4T, which at eight rows spilled to the stack.
#[inline(always)]
unsafe fn fold_group<const T: usize>(tot: &mut [__m512i; T], group: &[__m512i; T], g: usize) {
    let mask: __mmask16 = 0xf << (4 * g);
    for (tot, v) in tot.iter_mut().zip(group) {
        let pairs = _mm512_add_epi32(*v, _mm512_shuffle_i32x4::<0x4E>(*v, *v));
        let all = _mm512_add_epi32(pairs, _mm512_shuffle_i32x4::<0xB1>(pairs, pairs));
        *tot = _mm512_mask_add_epi32(*tot, mask, *tot, all);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block_q4<const T: usize, const Q5: bool, const MADD: bool>(
    row: &[*const u8; 16],
    at: usize,
    b: usize,
    q8: &Q8KRows,
    lanes: &KLanes,
    facc: &mut [__m512; T],
    ahead: &Ahead,
) {
    let q5 = Q5;
    let [d_dmin, s0, s1, s2] = header(row, at);
    let (low6, nib, top) = (
        _mm512_set1_epi8(0x3f),
        _mm512_set1_epi8(0x0f),
        _mm512_set1_epi8(0x30),
    );
    let sc_lo = _mm512_and_si512(s0, low6);
    let sc_hi = _mm512_or_si512(
        _mm512_and_si512(s2, nib),
        _mm512_and_si512(_mm512_srli_epi32::<2>(s0), top),
    );
    let m_lo = _mm512_and_si512(s1, low6);
    let m_hi = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi32::<4>(s2), nib),
        _mm512_and_si512(_mm512_srli_epi32::<2>(s1), top),
    );
    let (qs_at, one) = (if q5 { at + 48 } else { at + 16 }, _mm512_set1_epi8(1));
    // A Q4_K sum of 16 products (15 x 128 at most, 30720) fits in the low 16 bits of its
    // word and the scale (0..63) is zero-extended, so one 16-bit multiply-add is exact and
    // replaces multiply and add. It helps one activation row, where the whole block is few
    // instructions; with more rows the integer dot-product unit is the bound, and on Zen 5
    // the multiplier idle, so the 32-bit multiply stays there (`MADD`: see multiply_is_slow).
    let scale_by_madd = !q5 && (T == 1 || MADD);
    let mut tot = [_mm512_setzero_si512(); T];
    for g in 0..4 {
        let mut group = [_mm512_setzero_si512(); T];
        for h in 0..2 {
            ahead.share(b, 2 * g + h);
            let words = transpose4(load_group(row, g, qs_at + 64 * h));
            // Sub-blocks 4h + {0, 2} (low nibbles) and 4h + {1, 3} (high), two 128-bit lanes each.
            let x = lane_of(if h == 0 { sc_lo } else { sc_hi }, g);
            let (sc_low, sc_high) = (
                bytes_by_lane(x, [0, 0, 2, 2], false),
                bytes_by_lane(x, [1, 1, 3, 3], false),
            );
            let mut q = [_mm512_setzero_si512(); 8];
            let qh = if q5 {
                Some(transpose4(load_group_twice(row, g, at + 16)))
            } else {
                None
            };
            for e in 0..4 {
                q[2 * e] = _mm512_and_si512(words[e], nib);
                q[2 * e + 1] = _mm512_and_si512(_mm512_srli_epi32::<4>(words[e]), nib);
                if let Some(qh) = &qh {
                    // Fifth bits: bit 2c (low) and 2c + 1 (high) of the word, c = 2h + L / 2.
                    let c = _mm512_set_epi32(
                        4 * h as i32 + 2,
                        4 * h as i32 + 2,
                        4 * h as i32 + 2,
                        4 * h as i32 + 2,
                        4 * h as i32 + 2,
                        4 * h as i32 + 2,
                        4 * h as i32 + 2,
                        4 * h as i32 + 2,
                        4 * h as i32,
                        4 * h as i32,
                        4 * h as i32,
                        4 * h as i32,
                        4 * h as i32,
                        4 * h as i32,
                        4 * h as i32,
                        4 * h as i32,
                    );
                    let low = _mm512_and_si512(_mm512_srlv_epi32(qh[e], c), one);
                    let high = _mm512_and_si512(
                        _mm512_srlv_epi32(qh[e], _mm512_add_epi32(c, _mm512_set1_epi32(1))),
                        one,
                    );
                    q[2 * e] = _mm512_or_si512(q[2 * e], _mm512_slli_epi32::<4>(low));
                    q[2 * e + 1] = _mm512_or_si512(q[2 * e + 1], _mm512_slli_epi32::<4>(high));
                }
            }
            for t in 0..T {
                let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for e in 0..4 {
                    lo =
                        _mm512_dpbusd_epi32(lo, q[2 * e], lanes.vector(false, t, b, 8 * h + 2 * e));
                    hi = _mm512_dpbusd_epi32(
                        hi,
                        q[2 * e + 1],
                        lanes.vector(false, t, b, 8 * h + 2 * e + 1),
                    );
                }
                if scale_by_madd {
                    group[t] = _mm512_dpwssd_epi32(group[t], lo, sc_low);
                    group[t] = _mm512_dpwssd_epi32(group[t], hi, sc_high);
                } else {
                    group[t] = _mm512_add_epi32(group[t], _mm512_mullo_epi32(lo, sc_low));
                    group[t] = _mm512_add_epi32(group[t], _mm512_mullo_epi32(hi, sc_high));
                }
            }
        }
        fold_group(&mut tot, &group, g);
    }
    let mins = [pair(m_lo, 0), pair(m_lo, 2), pair(m_hi, 0), pair(m_hi, 2)];
    let (d, dmin) = (halves_to_f32(d_dmin, false), halves_to_f32(d_dmin, true));
    let blocks = q8.n_in / QK_K;
    for t in 0..T {
        let i = t * blocks + b;
        let mut summ = _mm512_setzero_si512();
        for (p, m) in mins.iter().enumerate() {
            summ = _mm512_dpwssd_epi32(summ, *m, _mm512_set1_epi32(q8.bsum32_pairs[i * 4 + p]));
        }
        let dx = _mm512_set1_ps(q8.d[i]);
        facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[t]), _mm512_mul_ps(d, dx), facc[t]);
        facc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(summ), _mm512_mul_ps(dmin, dx), facc[t]);
    }
}

/// Bytes j and j + 1 of each lane (rows) as an i16 pair.
#[inline(always)]
unsafe fn pair(v: __m512i, j: i32) -> __m512i {
    let lanes = _mm512_set_epi32(12, 8, 4, 0, 12, 8, 4, 0, 12, 8, 4, 0, 12, 8, 4, 0);
    let none = _mm512_set1_epi32(!0xff);
    let lo = _mm512_shuffle_epi8(
        v,
        _mm512_or_si512(_mm512_add_epi32(lanes, _mm512_set1_epi32(j)), none),
    );
    let hi = _mm512_shuffle_epi8(
        v,
        _mm512_or_si512(_mm512_add_epi32(lanes, _mm512_set1_epi32(j + 1)), none),
    );
    _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi))
}

#[inline(always)]
unsafe fn block_q6<const T: usize>(
    row: &[*const u8; 16],
    at: usize,
    b: usize,
    q8: &Q8KRows,
    lanes: &KLanes,
    facc: &mut [__m512; T],
    ahead: &Ahead,
) {
    let scales = header(row, at + 192);
    // d is the block's last two bytes: the top half of the word ending there.
    let mut words = [0i32; 16];
    for (i, w) in words.iter_mut().enumerate() {
        *w = std::ptr::read_unaligned(row[i].add(at + 206) as *const i32);
    }
    let d = halves_to_f32(_mm512_loadu_si512(words.as_ptr() as *const _), true);
    let (nib, two) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(3));
    let shift_lo = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    let shift_hi = _mm512_add_epi32(shift_lo, _mm512_set1_epi32(4));
    let mut tot = [_mm512_setzero_si512(); T];
    for g in 0..4 {
        let mut group = [_mm512_setzero_si512(); T];
        for n in 0..2 {
            ahead.share(b, 2 * g + n);
            let ql = transpose4(load_group(row, g, at + 64 * n));
            let qh = transpose4(load_group_twice(row, g, at + 128 + 32 * n));
            // Sub-block 8n + L (low nibbles) and 8n + 4 + L (high) in 128-bit lane L.
            let (sc_low, sc_high) = (
                bytes_by_lane(lane_of(scales[2 * n], g), [0, 1, 2, 3], true),
                bytes_by_lane(lane_of(scales[2 * n + 1], g), [0, 1, 2, 3], true),
            );
            let mut q = [_mm512_setzero_si512(); 8];
            for e in 0..4 {
                let low_bits = _mm512_and_si512(_mm512_srlv_epi32(qh[e], shift_lo), two);
                let high_bits = _mm512_and_si512(_mm512_srlv_epi32(qh[e], shift_hi), two);
                q[2 * e] = _mm512_or_si512(
                    _mm512_and_si512(ql[e], nib),
                    _mm512_slli_epi32::<4>(low_bits),
                );
                q[2 * e + 1] = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi32::<4>(ql[e]), nib),
                    _mm512_slli_epi32::<4>(high_bits),
                );
            }
            for t in 0..T {
                let mut lo = lanes.q6_init(t, b, 2 * n);
                let mut hi = lanes.q6_init(t, b, 2 * n + 1);
                for e in 0..4 {
                    lo = _mm512_dpbusd_epi32(lo, q[2 * e], lanes.vector(true, t, b, 8 * n + 2 * e));
                    hi = _mm512_dpbusd_epi32(
                        hi,
                        q[2 * e + 1],
                        lanes.vector(true, t, b, 8 * n + 2 * e + 1),
                    );
                }
                group[t] = _mm512_add_epi32(group[t], _mm512_mullo_epi32(lo, sc_low));
                group[t] = _mm512_add_epi32(group[t], _mm512_mullo_epi32(hi, sc_high));
            }
        }
        fold_group(&mut tot, &group, g);
    }
    let blocks = q8.n_in / QK_K;
    for t in 0..T {
        let dd = _mm512_mul_ps(d, _mm512_set1_ps(q8.d[t * blocks + b]));
        facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[t]), dd, facc[t]);
    }
}
