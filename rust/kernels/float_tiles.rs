//! AVX-512 products of F32, F16 and BF16 weight rows with activations: sixteen lanes along the inputs per (output, activation) pair.
//!
//! The arithmetic is `portable_dot`'s: lane l of a pair's accumulator sums inputs 16c + l
//! (F32 with f32 activations, F16 with f16-rounded ones, widened and fused-multiply-added in
//! f32) or the pairs 32c + 2l, 2l + 1 (BF16 with bf16 activations, `vdpbf16ps`; on Intel,
//! where that instruction is half rate, widened and fused-multiply-added: `micro_split`), the last
//! chunk zero-padded, then the fixed reduction tree. A register tile of RM weight rows by RN
//! activation rows shares every load. F32/F16 decode (one activation row) reads weight rows
//! one at a time, prefetching a fixed distance ahead, so each core streams one sequential
//! range; BF16 decode and odd batch rows take eight weight rows at once (eight independent
//! chains hide the FMA latency), BF16 on the hardware prefetchers alone. Prompts take 4 x 6
//! tiles and block the work for the caches: 48 activation rows at a time (L2) against up to
//! half an L2 of weight rows, in passes of 1024 inputs whose six activation rows are copied
//! into one stream (in L1); a token block's first tile prefetches the next weight block. Only
//! a row's last, partial step loads masked. No SIMD value is touched inside a closure
//! (closures do not inherit target features).

#![cfg(target_arch = "x86_64")]
// Index loops over lanes, tokens and quads read closer to the data layout than iterator chains.
#![allow(clippy::needless_range_loop)]

use super::activations::Activations;
use super::block_matmul::STREAM_MAX_ROWS;
use super::caches;
use super::ggml::{BlockWeight, GgmlType};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Whether the AVX-512 path for `ty` runs on this CPU.
pub fn available(ty: GgmlType) -> bool {
    let base = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
    match ty {
        GgmlType::Bf16 => base && (widens_bf16() || is_x86_feature_detected!("avx512bf16")),
        _ => base,
    }
}

/// Whether BF16 weights are widened to f32 here and fused-multiply-added against
/// bf16-rounded activations held as f32 (`micro_split`), instead of `vdpbf16ps`. On Intel's AVX-512
/// cores `vdpbf16ps` issues one every two cycles (54 G multiply-adds/s per core on an Intel
/// Xeon with AVX-512 BF16, against 110 for f32 FMAs), so its prompts ran below the F16
/// path's; on Zen 4/5 it runs at full rate and stays. Every BF16 product on one machine takes
/// the same path, so a row's sums still do not depend on its batch.
pub fn widens_bf16() -> bool {
    super::vendor::is_intel()
}

/// The reduction `portable_dot::reduce_lanes` defines: (l, l + 8), (l, l + 4), (l, l + 2), (0, 1).
#[inline(always)]
unsafe fn reduce(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let s8 = _mm256_add_ps(lo, hi);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
}

/// Sixteen weights starting at input `k` of a row, as f32; fewer than 16 left (`FULL`
/// false): the lanes of `mask`, the rest zero.
#[inline(always)]
unsafe fn load_w<const KIND: u8, const FULL: bool>(
    row: *const u8,
    k: usize,
    mask: __mmask16,
) -> __m512 {
    let halves = (row as *const i16).add(k);
    match (KIND, FULL) {
        (F32_ROWS, true) => _mm512_loadu_ps((row as *const f32).add(k)),
        (F32_ROWS, false) => _mm512_maskz_loadu_ps(mask, (row as *const f32).add(k)),
        (_, true) => _mm512_cvtph_ps(_mm256_loadu_si256(halves as *const _)),
        (_, false) => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, halves)),
    }
}

/// Weight row kinds of the F32/F16 path, as a constant so each gets its own loop (a
/// runtime type there left a branch in the inner loop).
const F32_ROWS: u8 = 0;
const F16_ROWS: u8 = 1;

/// Sixteen activations starting at `k` (`FULL` false: the lanes of `mask`, the rest zero).
#[inline(always)]
unsafe fn load_x<const FULL: bool>(x: *const f32, k: usize, mask: __mmask16) -> __m512 {
    if FULL {
        _mm512_loadu_ps(x.add(k))
    } else {
        _mm512_maskz_loadu_ps(mask, x.add(k))
    }
}

/// One step of sixteen inputs of the RM x RN tile: weights at input `k` (`W_FULL` false: the
/// lanes of `mask`), activation j at `x[j] + x_at` (`X_FULL` false: the lanes of `mask`).
#[inline(always)]
unsafe fn step_f<
    const RM: usize,
    const RN: usize,
    const KIND: u8,
    const W_FULL: bool,
    const X_FULL: bool,
>(
    w: &[*const u8; RM],
    k: usize,
    x: &[*const f32; RN],
    x_at: usize,
    mask: __mmask16,
    acc: &mut [[__m512; RN]; RM],
) {
    let mut wv = [_mm512_setzero_ps(); RM];
    for m in 0..RM {
        wv[m] = load_w::<KIND, W_FULL>(w[m], k, mask);
    }
    for j in 0..RN {
        let xv = load_x::<X_FULL>(x[j], x_at, mask);
        for m in 0..RM {
            acc[m][j] = _mm512_fmadd_ps(wv[m], xv, acc[m][j]);
        }
    }
}

/// acc[m][n] over all inputs for F32/F16 weight rows `w` and f32 activation rows `x`.
///
/// Whole steps load unmasked: a masked load costs an extra operation on the FMA ports, and
/// masking every step measured 40% slower in prompts. Only the last, partial step is masked;
/// its zero lanes add nothing, so every lane sees the same sums either way.
#[inline(always)]
unsafe fn micro_f<const RM: usize, const RN: usize, const PREFETCH: bool>(
    ty: GgmlType,
    w: [*const u8; RM],
    x: [*const f32; RN],
    k_range: Range<usize>,
    acc: &mut [[__m512; RN]; RM],
    ahead: usize,
) {
    micro::<RM, RN, PREFETCH, false>(ty, w, x, k_range, acc, ahead)
}

/// `micro_f` over activations packed by `pack`: step s of activation j at
/// `packed + (s·RN + j)·16`, one stream in L1 whatever the rows' stride, the last step zero
/// padded (so only the weights' last step is masked). The sums are `micro_f`'s.
#[inline(always)]
unsafe fn micro_packed<const RM: usize, const RN: usize, const PREFETCH: bool>(
    ty: GgmlType,
    w: [*const u8; RM],
    packed: *const f32,
    k_range: Range<usize>,
    acc: &mut [[__m512; RN]; RM],
    ahead: usize,
) {
    // Sixteen floats per activation row and step, or 32 in `micro_split`'s steps.
    let per_row = if ty == GgmlType::Bf16 { 32 } else { 16 };
    let x: [*const f32; RN] = std::array::from_fn(|j| packed.add(j * per_row));
    micro::<RM, RN, PREFETCH, true>(ty, w, x, k_range, acc, ahead)
}

/// The loop of `micro_f` (activation j of step k at `x[j] + k`) and `micro_packed` (at
/// `x[j] + s·RN·16` for step s of the pass, zero padded).
#[inline(always)]
unsafe fn micro<const RM: usize, const RN: usize, const PREFETCH: bool, const PACKED: bool>(
    ty: GgmlType,
    w: [*const u8; RM],
    x: [*const f32; RN],
    k_range: Range<usize>,
    acc: &mut [[__m512; RN]; RM],
    ahead: usize,
) {
    match ty {
        GgmlType::F32 => {
            micro_rows::<RM, RN, PREFETCH, PACKED, F32_ROWS>(w, x, k_range, acc, ahead)
        }
        GgmlType::Bf16 => micro_split::<RM, RN, PREFETCH, PACKED>(w, x, k_range, acc, ahead),
        _ => micro_rows::<RM, RN, PREFETCH, PACKED, F16_ROWS>(w, x, k_range, acc, ahead),
    }
}

#[inline(always)]
unsafe fn micro_rows<
    const RM: usize,
    const RN: usize,
    const PREFETCH: bool,
    const PACKED: bool,
    const KIND: u8,
>(
    w: [*const u8; RM],
    x: [*const f32; RN],
    k_range: Range<usize>,
    acc: &mut [[__m512; RN]; RM],
    ahead: usize,
) {
    let n = k_range.end;
    let elem = if KIND == F32_ROWS { 4 } else { 2 };
    let whole_end = k_range.start + k_range.len() / 16 * 16;
    let x_step = if PACKED { RN * 16 } else { 16 };
    let mut k = k_range.start;
    let mut x_at = if PACKED { 0 } else { k };
    while k < whole_end {
        if PREFETCH && (k * elem).is_multiple_of(64) {
            for row in w {
                _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(k * elem + ahead) as *const i8);
            }
        }
        step_f::<RM, RN, KIND, true, true>(&w, k, &x, x_at, 0xffff, acc);
        k += 16;
        x_at += x_step;
    }
    if k < n {
        let mask = (1u16 << (n - k)) - 1;
        step_f::<RM, RN, KIND, false, PACKED>(&w, k, &x, x_at, mask, acc);
    }
}

/// BF16 weight rows widened to f32 (`widens_bf16`), 32 inputs a step: one 512-bit load of a
/// row gives its even inputs (shifted up 16 bits) and its odd ones (low halves cleared), one
/// operation each, where widening sixteen at a time took two. The activations are laid out
/// to match (`split_bf16`): per 32 inputs, the 16 even ones, then the 16 odd ones, rows
/// zero-padded to whole steps, so lane l sums inputs 32c + 2l, then 32c + 2l + 1, for every
/// c in order, at any batch size. With `PACKED`, activation j of step s is at
/// `x[j] + s·RN·32` (`pack_split`); otherwise at `x[j] + k`.
#[inline(always)]
unsafe fn micro_split<
    const RM: usize,
    const RN: usize,
    const PREFETCH: bool,
    const PACKED: bool,
>(
    w: [*const u8; RM],
    x: [*const f32; RN],
    k_range: Range<usize>,
    acc: &mut [[__m512; RN]; RM],
    ahead: usize,
) {
    let n = k_range.end;
    let whole_end = k_range.start + k_range.len() / 32 * 32;
    let x_step = if PACKED { RN * 32 } else { 32 };
    let mut k = k_range.start;
    let mut x_at = if PACKED { 0 } else { k };
    while k < whole_end {
        if PREFETCH {
            for row in w {
                _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(2 * k + ahead) as *const i8);
            }
        }
        step_split::<RM, RN, true>(&w, k, &x, x_at, !0, acc);
        k += 32;
        x_at += x_step;
    }
    if k < n {
        step_split::<RM, RN, false>(&w, k, &x, x_at, (1u32 << (n - k)) - 1, acc);
    }
}

/// One step of `micro_split`: the even half of every pair, then the odd half.
#[inline(always)]
unsafe fn step_split<const RM: usize, const RN: usize, const FULL: bool>(
    w: &[*const u8; RM],
    k: usize,
    x: &[*const f32; RN],
    x_at: usize,
    mask: __mmask32,
    acc: &mut [[__m512; RN]; RM],
) {
    let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
    for odd in [false, true] {
        let mut wv = [_mm512_setzero_ps(); RM];
        for m in 0..RM {
            let pairs = load_bf16::<FULL>((w[m] as *const u16).add(k), mask);
            wv[m] = _mm512_castsi512_ps(if odd {
                _mm512_and_si512(pairs, high)
            } else {
                _mm512_slli_epi32::<16>(pairs)
            });
        }
        for j in 0..RN {
            let xv = _mm512_loadu_ps(x[j].add(x_at + if odd { 16 } else { 0 }));
            for m in 0..RM {
                acc[m][j] = _mm512_fmadd_ps(wv[m], xv, acc[m][j]);
            }
        }
    }
}

/// Activation rows `x` (laid out by `split_bf16`) over inputs `k_range` in `micro_split`'s
/// packed layout, into `packed` (room for RN · k_range.len() rounded up to 32).
#[inline(always)]
unsafe fn pack_split<const RN: usize>(
    x: &[*const f32; RN],
    k_range: Range<usize>,
    packed: *mut f32,
) {
    let mut out = packed;
    for k in k_range.step_by(32) {
        for j in 0..RN {
            _mm512_store_ps(out, _mm512_loadu_ps(x[j].add(k)));
            _mm512_store_ps(out.add(16), _mm512_loadu_ps(x[j].add(k + 16)));
            out = out.add(32);
        }
    }
}

/// bf16 activation bits [rows, n_in] as f32 in `micro_split`'s order: per 32 inputs, the
/// even ones, then the odd ones; each row padded with zeros to `split_stride(n_in)`.
pub fn split_bf16(bits: &[u16], rows: usize, n_in: usize) -> Vec<f32> {
    let stride = split_stride(n_in);
    let mut out = vec![0.0f32; rows * stride];
    let widen = |b: u16| f32::from_bits((b as u32) << 16);
    for (row, src) in out
        .chunks_exact_mut(stride)
        .zip(bits.chunks_exact(n_in.max(1)))
    {
        for (dst, pairs) in row.chunks_exact_mut(32).zip(src.chunks(32)) {
            for (l, pair) in pairs.chunks(2).enumerate() {
                dst[l] = widen(pair[0]);
                dst[16 + l] = pair.get(1).map_or(0.0, |&b| widen(b));
            }
        }
    }
    out
}

/// Floats per row of `split_bf16`'s layout: the inputs rounded up to whole steps of 32.
pub fn split_stride(n_in: usize) -> usize {
    n_in.next_multiple_of(32)
}

/// Activation rows `x` over inputs `k_range` in `micro_packed`'s layout, into `packed`
/// (room for RN · k_range.len() rounded up to 16).
#[inline(always)]
unsafe fn pack<const RN: usize>(x: &[*const f32; RN], k_range: Range<usize>, packed: *mut f32) {
    let n = k_range.end;
    let mut out = packed;
    let mut k = k_range.start;
    while k < n {
        let left = n - k;
        for j in 0..RN {
            let v = if left >= 16 {
                _mm512_loadu_ps(x[j].add(k))
            } else {
                _mm512_maskz_loadu_ps((1u16 << left) - 1, x[j].add(k))
            };
            _mm512_store_ps(out, v);
            out = out.add(16);
        }
        k += 16;
    }
}

/// Thirty-two bf16 values at `p` (`FULL` false: the lanes of `mask`, the rest zero).
#[inline(always)]
unsafe fn load_bf16<const FULL: bool>(p: *const u16, mask: __mmask32) -> __m512i {
    if FULL {
        _mm512_loadu_si512(p as *const _)
    } else {
        _mm512_maskz_loadu_epi16(mask, p as *const i16)
    }
}

/// One step of 32 inputs of the RM x RN BF16 tile (`FULL` false: the lanes of `mask`).
#[inline(always)]
unsafe fn step_bf16<const RM: usize, const RN: usize, const FULL: bool>(
    w: &[*const u8; RM],
    x: &[*const u16; RN],
    k: usize,
    mask: __mmask32,
    acc: &mut [[__m512; RN]; RM],
) {
    let mut wv = [_mm512_setzero_si512(); RM];
    for m in 0..RM {
        wv[m] = load_bf16::<FULL>((w[m] as *const u16).add(k), mask);
    }
    for j in 0..RN {
        let xv: __m512bh = std::mem::transmute(load_bf16::<FULL>(x[j].add(k), mask));
        for m in 0..RM {
            acc[m][j] = _mm512_dpbf16_ps(
                acc[m][j],
                std::mem::transmute::<__m512i, __m512bh>(wv[m]),
                xv,
            );
        }
    }
}

/// acc[m][n] over all inputs for BF16 weight rows `w` and bf16 activation rows `x`; whole
/// steps unmasked, as in `micro_f`.
#[inline(always)]
unsafe fn micro_bf16<const RM: usize, const RN: usize>(
    w: [*const u8; RM],
    x: [*const u16; RN],
    k_range: Range<usize>,
    acc: &mut [[__m512; RN]; RM],
) {
    let n = k_range.end;
    let whole_end = k_range.start + k_range.len() / 32 * 32;
    let mut k = k_range.start;
    while k < whole_end {
        step_bf16::<RM, RN, true>(&w, &x, k, !0, acc);
        k += 32;
    }
    if k < n {
        step_bf16::<RM, RN, false>(&w, &x, k, (1u32 << (n - k)) - 1, acc);
    }
}

/// Output rows `rows` of float weight `w` for every activation row, into `out` (f32 [acts.rows, w.n_out]).
///
/// # Safety
/// `available(w.ty)` must hold; `out` must hold acts.rows · w.n_out values; `acts` must hold
/// the activation format `w` needs.
pub unsafe fn tile(w: &BlockWeight, rows: Range<usize>, acts: &Activations, out: *mut f32) {
    if w.ty == GgmlType::Bf16 && !widens_bf16() {
        tile_bf16(w, rows, acts, out)
    } else {
        tile_f(w, rows, acts, out)
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn tile_f(w: &BlockWeight, rows: Range<usize>, acts: &Activations, out: *mut f32) {
    for tokens in token_blocks(acts.rows) {
        for block in row_blocks(rows.clone(), acts.rows, w.row_bytes) {
            each_group::<false>(w, block, acts, tokens.clone(), out)
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile_bf16(w: &BlockWeight, rows: Range<usize>, acts: &Activations, out: *mut f32) {
    for tokens in token_blocks(acts.rows) {
        for block in row_blocks(rows.clone(), acts.rows, w.row_bytes) {
            each_group::<true>(w, block, acts, tokens.clone(), out)
        }
    }
}

/// Most weight bytes per sweep over a block of activation rows in prompts: half a core's L2,
/// so the block stays there while every group of activation rows passes and the next block is
/// prefetched beside it. Decode streams all rows in one sweep. (On a 2 MB L2, 1 MB blocks
/// read 8192-input F16 rows 13% faster than 256 KB ones; 2048-input rows are capped at 64
/// rows either way.)
fn prompt_block_bytes() -> usize {
    caches::l2_bytes() / 2
}

/// Activation rows per prompt block: they stay in L2 (or close) while every weight block of
/// the call passes, so a long prompt does not re-read its activations from L3 per block.
const TOKEN_BLOCK: usize = 48;

fn row_blocks(
    rows: Range<usize>,
    tokens: usize,
    row_bytes: usize,
) -> impl Iterator<Item = Range<usize>> {
    let step = if tokens <= STREAM_MAX_ROWS {
        rows.len().max(1)
    } else {
        (prompt_block_bytes() / row_bytes.max(1)).clamp(4, GROUPS * 4) / 4 * 4
    };
    rows.clone()
        .step_by(step)
        .map(move |start| start..(start + step).min(rows.end))
}

fn token_blocks(tokens: usize) -> impl Iterator<Item = Range<usize>> {
    let step = if tokens <= STREAM_MAX_ROWS {
        tokens
    } else {
        TOKEN_BLOCK
    };
    (0..tokens)
        .step_by(step)
        .map(move |start| start..(start + step).min(tokens))
}

/// Activation rows `tokens` in groups of 6 and a last 2-5 (prompts), or 4, 2 and 1 (decode
/// batches); one activation row of F32/F16 weights (decode) reads the weight rows one after
/// another (`row_by_row`), of BF16 ones eight rows at once.
#[inline(always)]
unsafe fn each_group<const BF: bool>(
    w: &BlockWeight,
    rows: Range<usize>,
    acts: &Activations,
    tokens: Range<usize>,
    out: *mut f32,
) {
    if !BF && acts.rows == 1 {
        return row_by_row(w, rows, acts, out);
    }
    let mut first = tokens.start;
    let prompt = acts.rows > STREAM_MAX_ROWS;
    while first < tokens.end {
        let left = tokens.end - first;
        let lead = first == tokens.start;
        first += if prompt {
            // Prompts: groups of 6, the last one or two of 5, 4, 3 or 2 (7 left: 4 then 3),
            // never a lone row, which would sweep the block for one activation row.
            match left {
                7 => rows_of::<4, 4, BF>(w, &rows, acts, first, lead, out),
                6.. => rows_of::<4, 6, BF>(w, &rows, acts, first, lead, out),
                5 => rows_of::<4, 5, BF>(w, &rows, acts, first, lead, out),
                4 => rows_of::<4, 4, BF>(w, &rows, acts, first, lead, out),
                3 => rows_of::<4, 3, BF>(w, &rows, acts, first, lead, out),
                2 => rows_of::<4, 2, BF>(w, &rows, acts, first, lead, out),
                _ => rows_of::<8, 1, BF>(w, &rows, acts, first, lead, out),
            }
        } else if left >= 4 {
            rows_of::<4, 4, BF>(w, &rows, acts, first, lead, out)
        } else if left >= 2 {
            rows_of::<4, 2, BF>(w, &rows, acts, first, lead, out)
        } else {
            rows_of::<8, 1, BF>(w, &rows, acts, first, lead, out)
        };
    }
}

/// The f32 activation rows the F32/F16 path multiplies `ty` with: x itself for F32, rounded
/// to f16 for F16, to bf16 for BF16 (`widens_bf16`).
fn float_acts(ty: GgmlType, acts: &Activations) -> *const f32 {
    match ty {
        GgmlType::F32 => acts.f32.as_ptr(),
        GgmlType::Bf16 => acts.bf16_f32.as_ptr(),
        _ => acts.f16.as_ptr(),
    }
}

/// How far ahead of its reads `row_by_row` prefetches (into L2): 8-16 KB measured best
/// for 2048- and 8192-input rows streamed from DRAM on two cores.
const DECODE_AHEAD_BYTES: usize = 12 * 1024;

/// One activation row against F32/F16 weight rows, one row at a time: each thread then reads
/// a single sequential stream, prefetched a fixed distance ahead, which streams 10-30% faster
/// from DRAM than eight rows read side by side (eight streams per core). The sums are the
/// same single chain per lane as every tile's.
#[inline(always)]
unsafe fn row_by_row(w: &BlockWeight, rows: Range<usize>, acts: &Activations, out: *mut f32) {
    let x = float_acts(w.ty, acts);
    for r in rows {
        let mut acc = [[_mm512_setzero_ps(); 1]; 1];
        let row = w.data.as_ptr().add(r * w.row_bytes);
        micro_f::<1, 1, true>(w.ty, [row], [x], 0..w.n_in, &mut acc, DECODE_AHEAD_BYTES);
        *out.add(r) = reduce(acc[0][0]);
    }
}

/// Inputs per pass in prompts: six activation rows of 1024 f32 (24 KB) stay in L1 while every
/// weight row of the block passes. Chunks start on multiples of 32, so each input keeps its
/// lane and a pair's accumulator sees the same operations in the same order as in one pass.
const K_CHUNK: usize = 1024;

/// One pass of up to six activation rows in `micro_packed`'s layout (24 KB, in L1).
#[repr(C, align(64))]
struct PackedActs([f32; 6 * K_CHUNK]);

/// Weight row groups of a prompt block (at most 64 rows).
const GROUPS: usize = 16;

/// Activation rows first..first + RN against weight rows `rows`, RM at a time; returns RN.
#[inline(always)]
unsafe fn rows_of<const RM: usize, const RN: usize, const BF: bool>(
    w: &BlockWeight,
    rows: &Range<usize>,
    acts: &Activations,
    first: usize,
    lead: bool,
    out: *mut f32,
) -> usize {
    let n = w.n_in;
    // Decode (one row) prefetches the next rows at the same offset; 2-8 rows rely on the
    // hardware prefetchers (a whole-piece stride there measured slower). In prompts the first
    // activation group of a token block prefetches the next weight block into L2 while it
    // reads this one, so short prompts do not wait on memory at each block (+20-50% at 16-64
    // rows on one core).
    let ahead = if RN == 1 {
        RM * w.row_bytes
    } else if lead && acts.rows > STREAM_MAX_ROWS {
        rows.len() * w.row_bytes
    } else {
        0
    };
    // A short last group repeats the tile's last row; those sums are not stored.
    let row_ptrs = |r: usize| -> [*const u8; RM] {
        std::array::from_fn(|m| w.data.as_ptr().add((r + m).min(rows.end - 1) * w.row_bytes))
    };
    let x_f = float_acts(w.ty, acts);
    let x_stride = if w.ty == GgmlType::Bf16 {
        split_stride(n)
    } else {
        n
    };
    let xf: [*const f32; RN] = std::array::from_fn(|j| x_f.add((first + j) * x_stride));
    let xb: [*const u16; RN] = std::array::from_fn(|j| acts.bf16.as_ptr().add((first + j) * n));
    let chunk = if RN == 1 || rows.len() > GROUPS * RM {
        n.max(1)
    } else {
        K_CHUNK
    };
    // Prompts copy each pass's activation rows into one stream (`micro_packed`) once, for
    // every weight group of the block: the rows themselves lie a power-of-two stride apart
    // and evict each other from L1.
    let packs = !BF && RN > 1 && acts.rows > STREAM_MAX_ROWS && chunk == K_CHUNK;
    let mut packed = MaybeUninit::<PackedActs>::uninit();
    let mut packed_at = usize::MAX;
    // Only the first `groups` entries are used, each zeroed below before it is read (zeroing
    // all sixteen up front was a 24 KB memset per call, 2-5% of a prompt).
    let mut accs: [MaybeUninit<[[__m512; RN]; RM]>; GROUPS] =
        [const { MaybeUninit::uninit() }; GROUPS];
    let mut r0 = rows.start;
    while r0 < rows.end {
        // Decode: one group at a time over all inputs. Prompts: the whole block per chunk.
        let groups = if chunk >= n {
            1
        } else {
            rows.len().div_ceil(RM)
        };
        for acc in accs.iter_mut().take(groups) {
            acc.write([[_mm512_setzero_ps(); RN]; RM]);
        }
        for k in (0..n).step_by(chunk) {
            let k_range = k..(k + chunk).min(n);
            if packs && packed_at != k {
                if w.ty == GgmlType::Bf16 {
                    pack_split::<RN>(&xf, k_range.clone(), packed.as_mut_ptr() as *mut f32);
                } else {
                    pack::<RN>(&xf, k_range.clone(), packed.as_mut_ptr() as *mut f32);
                }
                packed_at = k;
            }
            for (g, acc) in accs.iter_mut().enumerate().take(groups) {
                let acc = acc.assume_init_mut();
                let wp = row_ptrs(r0 + g * RM);
                if BF {
                    micro_bf16::<RM, RN>(wp, xb, k_range.clone(), acc);
                } else if packs {
                    let x = packed.as_ptr() as *const f32;
                    if ahead != 0 {
                        micro_packed::<RM, RN, true>(w.ty, wp, x, k_range.clone(), acc, ahead);
                    } else {
                        micro_packed::<RM, RN, false>(w.ty, wp, x, k_range.clone(), acc, 0);
                    }
                } else {
                    // Separate loops with and without prefetches keep the plain one's
                    // registers free (a runtime test there cost 10-20% at 8 rows).
                    if ahead != 0 {
                        micro_f::<RM, RN, true>(w.ty, wp, xf, k_range.clone(), acc, ahead);
                    } else {
                        micro_f::<RM, RN, false>(w.ty, wp, xf, k_range.clone(), acc, 0);
                    }
                }
            }
        }
        for (g, acc) in accs.iter().enumerate().take(groups) {
            for (m, pairs) in acc.assume_init_ref().iter().enumerate() {
                let r = r0 + g * RM + m;
                if r < rows.end {
                    for (j, &v) in pairs.iter().enumerate() {
                        *out.add((first + j) * w.n_out + r) = reduce(v);
                    }
                }
            }
        }
        r0 += groups * RM;
    }
    RN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_bf16_puts_each_steps_even_inputs_before_its_odd_ones() {
        // Two rows of 35 inputs: value i + 1 (exact in bf16) at input i of row 0, -(i + 1) in row 1.
        let n = 35;
        let bits: Vec<u16> = (0..2 * n)
            .map(|i| {
                let v = (i % n + 1) as f32 * if i < n { 1.0 } else { -1.0 };
                (v.to_bits() >> 16) as u16
            })
            .collect();
        let split = split_bf16(&bits, 2, n);
        assert_eq!(split_stride(n), 64);
        assert_eq!(split.len(), 2 * 64);
        let row0 = &split[..64];
        assert_eq!(row0[0], 1.0); // input 0
        assert_eq!(row0[1], 3.0); // input 2
        assert_eq!(row0[16], 2.0); // input 1
        assert_eq!(row0[31], 32.0); // input 31
        assert_eq!(row0[32], 33.0); // input 32
        assert_eq!(row0[33], 35.0); // input 34
        assert_eq!(row0[48], 34.0); // input 33
        assert_eq!(row0[34], 0.0); // padding
        assert_eq!(row0[49], 0.0);
        assert_eq!(split[64 + 16], -2.0);
    }
}
