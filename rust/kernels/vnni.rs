//! AVX-512 VNNI products of decoded tiles (`unpack`) with int8 activations, for decode and for prompts.
//!
//! Each tile lane is one output row: `vpdpbusd` multiplies its four unsigned weight bytes by
//! four int8 activations broadcast to all lanes, so sixteen rows advance per instruction and
//! a block's integer sum ends in the lane of its row, where the scales are applied exactly as
//! `portable_dot` does (same integers, same fused multiply-adds, same order).
//!
//! Few activation rows (decode): each block of sixteen rows is decoded once and multiplied by
//! every activation row at once, so weights stream from memory exactly once, with the next
//! tile's bytes prefetched. Many rows (prompts): four whole tiles are decoded once into a
//! buffer that stays in L2 and is reused for every group of eight activation rows.
//!
//! SIMD code here is never inside a closure: closures do not inherit target features, so
//! each intrinsic in one would become a function call.

#![cfg(target_arch = "x86_64")]
// Index loops over lanes, tokens and quads read closer to the data layout than iterator chains.
#![allow(clippy::needless_range_loop)]

use super::activations::{Activations, Q8KRows, Q8Rows};
use super::amx;
use super::block_matmul::STREAM_MAX_ROWS;
use super::ggml::{BlockWeight, GgmlType, QK32, QK_K};
use super::scratch;
use super::stream_32::{self, Lanes32};
use super::stream_k::{self, KLanes};
use super::unpack::{self, KTile, Layout32, Rows, Tile32};
use std::arch::x86_64::*;
use std::ops::Range;

/// How far ahead the decode path asks for weights: the same bytes of the next tile.
const PREFETCH_TILES_AHEAD: usize = 1;

#[inline(always)]
unsafe fn broadcast(p: *const i8) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

fn layout(ty: GgmlType) -> Layout32 {
    let (qs, qh, min) = match ty {
        GgmlType::Q4_0 => (2, None, false),
        GgmlType::Q4_1 => (4, None, true),
        GgmlType::Q5_0 => (6, Some(2), false),
        GgmlType::Q5_1 => (8, Some(4), true),
        _ => (2, None, false), // Q8_0
    };
    Layout32 {
        block_bytes: ty.block_bytes(),
        qs,
        qh,
        min,
        eight_bit: ty == GgmlType::Q8_0,
    }
}

fn zero_point(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::Q4_0 => 8,
        GgmlType::Q5_0 => 16,
        GgmlType::Q8_0 => 128,
        _ => 0,
    }
}

/// Blocks first_block.. of a 32-value format (one decoded tile each) for activation rows
/// first..first + T, added into `facc`. One compiled body per row count and minimum, so the
/// accumulators stay in registers across the blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline(never)]
unsafe fn sweep32<const T: usize, const MIN: bool>(
    tiles: &[Tile32],
    first_block: usize,
    zero: i32,
    q8: &Q8Rows,
    first: usize,
    facc: &mut [__m512; T],
) {
    let per_row = q8.n_in / QK32;
    let (qs, d, sum, s) = (
        q8.qs.as_ptr(),
        q8.d.as_ptr(),
        q8.sum.as_ptr(),
        q8.s.as_ptr(),
    );
    let mut acc = *facc;
    for (k, tile) in tiles.iter().enumerate() {
        for t in 0..T {
            let i = (first + t) * per_row + first_block + k;
            let a = qs.add(i * QK32);
            // Two chains halve the wait on vpdpbusd's latency; integer sums do not care.
            let mut even = if MIN {
                _mm512_setzero_si512()
            } else {
                _mm512_set1_epi32(-zero * *sum.add(i))
            };
            let mut odd = _mm512_setzero_si512();
            for g in (0..8).step_by(2) {
                even = _mm512_dpbusd_epi32(even, tile.q[g], broadcast(a.add(4 * g)));
                odd = _mm512_dpbusd_epi32(odd, tile.q[g + 1], broadcast(a.add(4 * g + 4)));
            }
            let isum = _mm512_add_epi32(even, odd);
            let dd = _mm512_mul_ps(tile.d, _mm512_set1_ps(*d.add(i)));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), dd, acc[t]);
            if MIN {
                acc[t] = _mm512_fmadd_ps(tile.m, _mm512_set1_ps(*s.add(i)), acc[t]);
            }
        }
    }
    *facc = acc;
}

/// Super-block `block` of a K-quant for activation rows first..first + T.
#[inline(always)]
unsafe fn dot_k<const T: usize>(
    tile: &KTile,
    q6: bool,
    q8: &Q8KRows,
    first: usize,
    block: usize,
    facc: &mut [__m512; T],
) {
    let blocks = q8.n_in / QK_K;
    let index = |t: usize| (first + t) * blocks + block;
    let mut tot = [_mm512_setzero_si512(); T];
    if q6 {
        for j in 0..16 {
            let w = &tile.q[4 * j..4 * j + 4];
            for (t, tot) in tot.iter_mut().enumerate() {
                let i = index(t);
                let a = q8.qs.as_ptr().add(i * QK_K + 16 * j);
                // Q6_K's values are stored + 32: start from -32 · (sum of these 16 activations).
                let mut even = _mm512_set1_epi32(-32 * q8.bsum16[i * 16 + j]);
                let mut odd = _mm512_setzero_si512();
                even = _mm512_dpbusd_epi32(even, w[0], broadcast(a));
                odd = _mm512_dpbusd_epi32(odd, w[1], broadcast(a.add(4)));
                even = _mm512_dpbusd_epi32(even, w[2], broadcast(a.add(8)));
                odd = _mm512_dpbusd_epi32(odd, w[3], broadcast(a.add(12)));
                *tot = _mm512_add_epi32(
                    *tot,
                    _mm512_mullo_epi32(_mm512_add_epi32(even, odd), tile.sc[j]),
                );
            }
        }
        for (t, &tot) in tot.iter().enumerate() {
            let dd = _mm512_mul_ps(tile.d, _mm512_set1_ps(q8.d[index(t)]));
            facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), dd, facc[t]);
        }
        return;
    }
    for j in 0..8 {
        let w = &tile.q[8 * j..8 * j + 8];
        for (t, tot) in tot.iter_mut().enumerate() {
            let a = q8.qs.as_ptr().add(index(t) * QK_K + 32 * j);
            let mut even = _mm512_setzero_si512();
            let mut odd = _mm512_setzero_si512();
            for g in (0..8).step_by(2) {
                even = _mm512_dpbusd_epi32(even, w[g], broadcast(a.add(4 * g)));
                odd = _mm512_dpbusd_epi32(odd, w[g + 1], broadcast(a.add(4 * g + 4)));
            }
            *tot = _mm512_add_epi32(
                *tot,
                _mm512_mullo_epi32(_mm512_add_epi32(even, odd), tile.sc[j]),
            );
        }
    }
    for (t, &tot) in tot.iter().enumerate() {
        let i = index(t);
        let mut summ = _mm512_setzero_si512();
        for p in 0..4 {
            summ = _mm512_dpwssd_epi32(
                summ,
                tile.mins[p],
                _mm512_set1_epi32(q8.bsum32_pairs[i * 4 + p]),
            );
        }
        let dx = _mm512_set1_ps(q8.d[i]);
        facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), _mm512_mul_ps(tile.d, dx), facc[t]);
        facc[t] = _mm512_fnmadd_ps(
            _mm512_cvtepi32_ps(summ),
            _mm512_mul_ps(tile.dmin, dx),
            facc[t],
        );
    }
}

/// Super-blocks first_block.. of a K-quant for activation rows first..first + T: one compiled
/// body per row count and format, accumulators in registers across the super-blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline(never)]
unsafe fn sweep_k<const T: usize, const Q6: bool>(
    tiles: &[KTile],
    first_block: usize,
    q8: &Q8KRows,
    first: usize,
    facc: &mut [__m512; T],
) {
    let mut acc = *facc;
    for (k, tile) in tiles.iter().enumerate() {
        dot_k::<T>(tile, Q6, q8, first, first_block + k, &mut acc);
    }
    *facc = acc;
}

/// The formats' common shape: decode block(s) into tiles, multiply a tile by T activation rows.
trait Family {
    type Tile: Copy + scratch::Plain;
    /// Blocks decoded per call of `unpack`.
    const GROUP: usize;
    unsafe fn unpack(&self, rows: &Rows, block: usize, count: usize, tiles: &mut [Self::Tile]);
    /// Decoded blocks first_block.. (one tile each) times activation rows first..first + T.
    unsafe fn sweep<const T: usize>(
        &self,
        tiles: &[Self::Tile],
        first_block: usize,
        first: usize,
        facc: &mut [__m512; T],
    );
    fn zeroed() -> Self::Tile;
    /// Whether `sweep_amx` handles this format, and with which tile shapes.
    fn amx(&self) -> Option<amx::Shapes>;
    /// Rewrites decoded tiles in place for `sweep_amx`, with what does not fit in a tile in
    /// `extra` (one entry per tile); afterwards only `sweep_amx` may read them.
    unsafe fn amx_prepare(&self, _tiles: &mut [Self::Tile], _extra: &mut [amx::Quads]) {}
    /// `sweep` over every decoded tile (prepared) for sixteen activation rows, with AMX tiles.
    unsafe fn sweep_amx(
        &self,
        amx: &mut amx::Tiles,
        tiles: &[Self::Tile],
        extra: &[amx::Quads],
        first: usize,
        facc: &mut [__m512; amx::ROWS],
    );
}

struct Blocks32<'a> {
    layout: Layout32,
    zero: i32,
    q8: &'a Q8Rows,
}

impl Family for Blocks32<'_> {
    type Tile = Tile32;
    const GROUP: usize = 4;
    #[inline(always)]
    unsafe fn unpack(&self, rows: &Rows, block: usize, count: usize, tiles: &mut [Tile32]) {
        let tiles: &mut [Tile32; 4] = (&mut tiles[..4]).try_into().unwrap();
        unpack::unpack_32(
            rows,
            block * self.layout.block_bytes,
            self.layout,
            count,
            tiles,
        );
    }
    #[inline(always)]
    unsafe fn sweep<const T: usize>(
        &self,
        tiles: &[Tile32],
        first_block: usize,
        first: usize,
        facc: &mut [__m512; T],
    ) {
        if self.layout.min {
            sweep32::<T, true>(tiles, first_block, self.zero, self.q8, first, facc)
        } else {
            sweep32::<T, false>(tiles, first_block, self.zero, self.q8, first, facc)
        }
    }
    fn zeroed() -> Tile32 {
        // SAFETY: a tile is plain integers and floats; all-zero bytes are a valid value.
        unsafe { std::mem::zeroed() }
    }
    fn amx(&self) -> Option<amx::Shapes> {
        Some(amx::Shapes::Blocks)
    }
    #[inline(always)]
    unsafe fn sweep_amx(
        &self,
        amx: &mut amx::Tiles,
        tiles: &[Tile32],
        _extra: &[amx::Quads],
        first: usize,
        facc: &mut [__m512; amx::ROWS],
    ) {
        if self.layout.min {
            amx::sweep32::<true>(amx, tiles, self.zero, self.q8, first, facc)
        } else {
            amx::sweep32::<false>(amx, tiles, self.zero, self.q8, first, facc)
        }
    }
}

struct KQuants<'a> {
    ty: GgmlType,
    q8: &'a Q8KRows,
}

impl Family for KQuants<'_> {
    type Tile = KTile;
    const GROUP: usize = 1;
    #[inline(always)]
    unsafe fn unpack(&self, rows: &Rows, block: usize, _count: usize, tiles: &mut [KTile]) {
        let at = block * self.ty.block_bytes();
        match self.ty {
            GgmlType::Q6K => unpack::unpack_q6k(rows, at, &mut tiles[0]),
            ty => unpack::unpack_q4k_q5k(rows, at, ty == GgmlType::Q5K, &mut tiles[0]),
        }
    }
    #[inline(always)]
    unsafe fn sweep<const T: usize>(
        &self,
        tiles: &[KTile],
        first_block: usize,
        first: usize,
        facc: &mut [__m512; T],
    ) {
        if self.ty == GgmlType::Q6K {
            sweep_k::<T, true>(tiles, first_block, self.q8, first, facc)
        } else {
            sweep_k::<T, false>(tiles, first_block, self.q8, first, facc)
        }
    }
    fn zeroed() -> KTile {
        // SAFETY: as for Tile32.
        unsafe { std::mem::zeroed() }
    }
    fn amx(&self) -> Option<amx::Shapes> {
        (self.ty != GgmlType::Q6K).then_some(amx::Shapes::SuperBlocks) // see `amx::sweep_k`
    }
    #[inline(always)]
    unsafe fn amx_prepare(&self, tiles: &mut [KTile], extra: &mut [amx::Quads]) {
        for (tile, high) in tiles.iter_mut().zip(extra) {
            amx::split_scales(tile, high);
        }
    }
    #[inline(always)]
    unsafe fn sweep_amx(
        &self,
        amx: &mut amx::Tiles,
        tiles: &[KTile],
        extra: &[amx::Quads],
        first: usize,
        facc: &mut [__m512; amx::ROWS],
    ) {
        amx::sweep_k(amx, tiles, extra, self.q8, first, facc)
    }
}

/// Output rows `rows` of block-format weight `w` for every activation row, into
/// `out` (f32 [acts.rows, w.n_out]). Decode of a K-quant takes `stream_k` when `k_lanes`
/// (the activations laid out for it) are given.
///
/// # Safety
/// The CPU must have the features `unpack::available` checks; `out` must hold
/// acts.rows · w.n_out values; `acts` must hold the format `w` needs, `k_lanes` built from them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile(
    w: &BlockWeight,
    rows: Range<usize>,
    acts: &Activations,
    k_lanes: Option<&KLanes>,
    lanes32: Option<&Lanes32>,
    use_amx: bool,
    out: *mut f32,
) {
    match w.ty {
        GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
            let q8 = acts.q8k.as_ref().expect("Q8_K activations");
            if let Some(lanes) = k_lanes.filter(|_| acts.rows <= STREAM_MAX_ROWS) {
                return stream_k::tile(w, rows, q8, lanes, acts.rows, out);
            }
            let family = KQuants { ty: w.ty, q8 };
            run(&family, w, rows, acts.rows, use_amx, out)
        }
        ty => {
            let q8 = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                &acts.q8_1
            } else {
                &acts.q8_0
            };
            if let Some(lanes) = lanes32
                .filter(|_| acts.rows <= STREAM_MAX_ROWS && stream_32::handles(ty, acts.rows))
            {
                let q8 = q8.as_ref().expect("Q8 activations");
                return stream_32::tile(w, rows, q8, lanes, acts.rows, out);
            }
            let family = Blocks32 {
                layout: layout(ty),
                zero: zero_point(ty),
                q8: q8.as_ref().expect("Q8 activations"),
            };
            run(&family, w, rows, acts.rows, use_amx, out)
        }
    }
}

/// Output rows `rows`, sixteen at a time, for every activation row.
#[inline(always)]
unsafe fn run<F: Family>(
    family: &F,
    w: &BlockWeight,
    rows: Range<usize>,
    n_tokens: usize,
    use_amx: bool,
    out: *mut f32,
) {
    let blocks = w.n_in / w.ty.block_values();
    if n_tokens <= STREAM_MAX_ROWS {
        let mut tiles = vec![F::zeroed(); F::GROUP];
        for start in rows.clone().step_by(16) {
            let tile_rows = start..(start + 16).min(rows.end);
            stream_tile(family, w, tile_rows, blocks, n_tokens, out, &mut tiles);
        }
        return;
    }
    let padded = blocks.next_multiple_of(F::GROUP);
    let shapes = family.amx().filter(|_| use_amx && n_tokens >= amx::ROWS);
    // Only split K-quant scales spill out of their tiles (4 KB per tile).
    let extra = match shapes {
        Some(amx::Shapes::SuperBlocks) => blocks * SWEEP_TILES,
        _ => 0,
    };
    let sums = if shapes.is_some() { amx::SUMS } else { 0 };
    scratch::with(
        padded * SWEEP_TILES,
        extra,
        sums,
        |decoded: &mut [F::Tile], extra: &mut [amx::Quads], sums: &mut [amx::Sums]| {
            // SAFETY: as this function's; `shapes` is only set where `amx::available()` holds.
            unsafe {
                sweeps(
                    family, w, rows, blocks, n_tokens, shapes, decoded, extra, sums, out,
                )
            }
        },
    )
}

/// `run`'s prompt path over this thread's scratch buffers: output rows `rows` in sweeps of
/// SWEEP_TILES decoded tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn sweeps<F: Family>(
    family: &F,
    w: &BlockWeight,
    rows: Range<usize>,
    blocks: usize,
    n_tokens: usize,
    shapes: Option<amx::Shapes>,
    decoded: &mut [F::Tile],
    extra: &mut [amx::Quads],
    sums: &mut [amx::Sums],
    out: *mut f32,
) {
    let mut tiles = shapes.map(|shapes| unsafe { amx::Tiles::load(shapes, sums) });
    for start in rows.clone().step_by(16 * SWEEP_TILES) {
        let sweep = start..(start + 16 * SWEEP_TILES).min(rows.end);
        cached_tiles(
            family,
            w,
            sweep,
            blocks,
            n_tokens,
            tiles.as_mut(),
            extra,
            out,
            decoded,
        );
    }
}

/// Tiles decoded per sweep over the activations in prompts: four tiles of a K-quant with
/// 8192 inputs take 700 KB of L2, and each group of activation rows is read once for all four.
const SWEEP_TILES: usize = 4;

/// Decode: each group of blocks is decoded once and meets every activation row while the
/// next tile's bytes are prefetched.
#[inline(always)]
unsafe fn stream_tile<F: Family>(
    family: &F,
    w: &BlockWeight,
    rows: Range<usize>,
    blocks: usize,
    n_tokens: usize,
    out: *mut f32,
    tiles: &mut [F::Tile],
) {
    let tile_rows = Rows::new(w.data.as_ptr(), w.row_bytes, rows.start, rows.len());
    let mut facc = [_mm512_setzero_ps(); STREAM_MAX_ROWS];
    // The next tile, asked for in the order it will be read (block by block across its
    // rows), one tile ahead; addresses past the weight are harmless for a prefetch.
    let next = w
        .data
        .as_ptr()
        .wrapping_add((rows.start + 16 * PREFETCH_TILES_AHEAD) * w.row_bytes);
    let group_bytes = w.ty.block_bytes() * F::GROUP;
    let mut block = 0;
    while block < blocks {
        let count = F::GROUP.min(blocks - block);
        for r in 0..16 {
            let from = next.wrapping_add(r * w.row_bytes + block * w.ty.block_bytes());
            for line in (0..group_bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(from.wrapping_add(line) as *const i8);
            }
            _mm_prefetch::<_MM_HINT_T0>(from.wrapping_add(group_bytes - 1) as *const i8);
        }
        family.unpack(&tile_rows, block, count, tiles);
        let mut first = 0;
        while first < n_tokens {
            let size = group_size(n_tokens - first);
            sweep_group(
                family,
                &tiles[..count],
                block,
                first,
                &mut facc[first..first + size],
            );
            first += size;
        }
        block += count;
    }
    store(&facc[..n_tokens], 0, w.n_out, rows, out);
}

/// Prompts: the tiles of `rows` (at most SWEEP_TILES) are decoded once, then reused from
/// cache for every group of sixteen activation rows with AMX (`amx`, at least sixteen rows;
/// `extra` holds the prepared tiles' spill), or of eight without.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn cached_tiles<F: Family>(
    family: &F,
    w: &BlockWeight,
    rows: Range<usize>,
    blocks: usize,
    n_tokens: usize,
    amx: Option<&mut amx::Tiles<'_>>,
    extra: &mut [amx::Quads],
    out: *mut f32,
    decoded: &mut [F::Tile],
) {
    let padded = blocks.next_multiple_of(F::GROUP);
    let tiles: Vec<Range<usize>> = rows
        .clone()
        .step_by(16)
        .map(|start| start..(start + 16).min(rows.end))
        .collect();
    // The next sixteen rows' bytes (the next tile, or the next sweep's first), a share per
    // group of blocks: without it the gathers of each group's scales waited on memory, 60% of
    // `unpack`'s samples in a prompt's prefill.
    let groups = blocks.div_ceil(F::GROUP);
    for (s, tile) in tiles.iter().enumerate() {
        let tile_rows = Rows::new(w.data.as_ptr(), w.row_bytes, tile.start, tile.len());
        let next = w
            .data
            .as_ptr()
            .wrapping_add((tile.start + 16) * w.row_bytes);
        for (g, block) in (0..blocks).step_by(F::GROUP).enumerate() {
            stream_k::prefetch_share(next, 16 * w.row_bytes, g, groups);
            let count = F::GROUP.min(blocks - block);
            family.unpack(&tile_rows, block, count, &mut decoded[s * padded + block..]);
        }
    }
    if let Some(amx) = amx {
        // Each tile's share of `extra` (none for formats that spill nothing).
        let share = if extra.is_empty() { 0 } else { blocks };
        for s in 0..tiles.len() {
            family.amx_prepare(
                &mut decoded[s * padded..s * padded + blocks],
                &mut extra[s * share..(s + 1) * share],
            );
        }
        // Every row in groups of sixteen: the last group ends at the last row and overlaps the
        // one before, whose rows it recomputes bit for bit and does not store again.
        let mut first = 0;
        while first < n_tokens {
            let start = first.min(n_tokens - amx::ROWS);
            for (s, tile) in tiles.iter().enumerate() {
                let mut facc = [_mm512_setzero_ps(); amx::ROWS];
                family.sweep_amx(
                    amx,
                    &decoded[s * padded..s * padded + blocks],
                    &extra[s * share..(s + 1) * share],
                    start,
                    &mut facc,
                );
                store(&facc[first - start..], first, w.n_out, tile.clone(), out);
            }
            first = start + amx::ROWS;
        }
        return;
    }
    let mut first = 0;
    while first < n_tokens {
        let count = (n_tokens - first).min(8);
        for (s, tile) in tiles.iter().enumerate() {
            let mut facc = [_mm512_setzero_ps(); 8];
            let tile_blocks = &decoded[s * padded..s * padded + blocks];
            let mut offset = 0;
            while offset < count {
                let size = group_size(count - offset);
                sweep_group(
                    family,
                    tile_blocks,
                    0,
                    first + offset,
                    &mut facc[offset..offset + size],
                );
                offset += size;
            }
            store(&facc[..count], first, w.n_out, tile.clone(), out);
        }
        first += count;
    }
}

/// Lanes 0..rows.len() of each accumulator into output rows `rows` of activation rows first.. .
#[inline(always)]
unsafe fn store(facc: &[__m512], first: usize, n_out: usize, rows: Range<usize>, out: *mut f32) {
    let mask: __mmask16 = if rows.len() >= 16 {
        0xffff
    } else {
        (1u16 << rows.len()) - 1
    };
    for (t, v) in facc.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add((first + t) * n_out + rows.start), mask, *v);
    }
}

/// Decoded tiles times a group of 8, 4, 2 or 1 activation rows (one compiled body per size).
#[inline(always)]
unsafe fn sweep_group<F: Family>(
    family: &F,
    tiles: &[F::Tile],
    first_block: usize,
    first: usize,
    group: &mut [__m512],
) {
    match group.len() {
        8 => family.sweep::<8>(tiles, first_block, first, group.try_into().unwrap()),
        4 => family.sweep::<4>(tiles, first_block, first, group.try_into().unwrap()),
        2 => family.sweep::<2>(tiles, first_block, first, group.try_into().unwrap()),
        _ => family.sweep::<1>(tiles, first_block, first, group.try_into().unwrap()),
    }
}

/// The largest group size (8, 4, 2 or 1) that fits `left` activation rows. A row's arithmetic
/// is the same in every group size, so how rows are grouped never changes a result.
#[inline(always)]
fn group_size(left: usize) -> usize {
    match left {
        8.. => 8,
        4..=7 => 4,
        2..=3 => 2,
        _ => 1,
    }
}
