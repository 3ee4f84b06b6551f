//! AMX integer tiles for prompts: sixteen activation rows times a decoded tile per instruction, folded exactly as `vnni` folds.
//!
//! A decoded tile (`unpack`) already holds its weights in the layout AMX wants for its second
//! operand (lane n of quad g: output n's bytes 4g..4g + 3), and a block of int8 activations for
//! sixteen rows is a strided first operand, read in place. So one `tdpbsud` gives the integer
//! dot of one block (or sub-block of 32) for 16 × 16 (row, output) pairs, which `vpdpbusd` builds
//! from 128 instructions. The sums are exact integers, and the scales are then applied per
//! row with the same float operations in the same order as `vnni`, so results are
//! bit-identical to it and to `portable_dot`. Q4_K/Q5_K tiles first fold their sub-block
//! scales into the weight bytes (`split_scales`), so a super-block is two dots, not eight.
//! Decode's eight rows stay on the stream kernels, which measured faster than tiles there.
//!
//! Linux hands out AMX state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), once per
//! process; each thread loads the tile shapes before its first tile instruction of a call.

#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop)]

use super::activations::{Q8KRows, Q8Rows};
use super::ggml::{QK32, QK_K};
use super::unpack::{KTile, Tile32};
use std::arch::asm;
use std::arch::x86_64::*;

/// Activation rows per tile instruction (a tile's rows).
pub const ROWS: usize = 16;

/// Whether this CPU and kernel run AMX-INT8 for this process (asked for once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let leaf7 = __cpuid_count(7, 0);
        let tile = leaf7.edx & (1 << 24) != 0;
        let int8 = leaf7.edx & (1 << 25) != 0;
        tile && int8 && super::unpack::available() && request_permission()
    })
}

/// Whether prompts use AMX now: available, and not turned off by `LLJX_NO_AMX` (for paired
/// measurements against the VNNI path; read on each call).
pub fn enabled() -> bool {
    available() && std::env::var_os("LLJX_NO_AMX").is_none()
}

#[cfg(not(target_os = "linux"))]
fn request_permission() -> bool {
    false
}

#[cfg(target_os = "linux")]
fn request_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments; it fails cleanly where unsupported.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Dots issued before their sums are folded: a super-block of Q4_K/Q5_K, or four 32-value
/// blocks. Two sets of sums alternate, so the tile unit computes the next
/// step's while the vector units fold this one's.
const STEP: usize = 8;

/// Which tiles a kernel uses (consecutive dots use different registers, so they do not wait
/// on one another).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shapes {
    /// 32-value blocks (`sweep32`): tmm0-3 sums (16 × 16 i32), tmm4/tmm5 activations (16 rows
    /// × 32 bytes), tmm6/tmm7 weights (8 quads × 64 bytes).
    Blocks,
    /// Super-blocks with split scales (`sweep_k`): every tile 16 rows × 64 bytes: tmm0/tmm1
    /// sums, tmm2/tmm3 activations, tmm4/tmm5 low-scaled weights, tmm6/tmm7 high-scaled ones.
    SuperBlocks,
}

/// Palette 1's configuration block.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

fn config(shapes: Shapes) -> TileConfig {
    let mut config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    let tiles: [(u16, u8); 8] = match shapes {
        Shapes::Blocks => [(64, 16); 4]
            .into_iter()
            .chain([(QK32 as u16, 16); 2])
            .chain([(64, (QK32 / 4) as u8); 2])
            .collect::<Vec<_>>()
            .try_into()
            .expect("eight tiles"),
        Shapes::SuperBlocks => [(64, 16); 8],
    };
    for (i, (colsb, rows)) in tiles.into_iter().enumerate() {
        config.colsb[i] = colsb;
        config.rows[i] = rows;
    }
    config
}

/// This thread's tile registers for one call; released when dropped, so an idle thread
/// carries no tile state.
pub struct Tiles<'a> {
    /// Two sets of STEP dots' sums, each [16 rows][16 outputs] i32.
    sums: &'a mut [Sums],
}

/// One dot's sums as stored from a tile: [16 rows][16 outputs] i32.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Sums([i32; 256]);

// SAFETY: 1 KB of integers.
unsafe impl super::scratch::Plain for Sums {}

/// The sums a `Tiles` needs (`Tiles::load`).
pub const SUMS: usize = 2 * STEP;

/// One dot into sums tile `$c`, from activations and weights in tiles `$a`, `$b`.
macro_rules! dot_asm {
    ($c:literal, $a:literal, $b:literal, $acts:expr, $stride:expr, $weights:expr, $out:expr) => {
        asm!(
            concat!("tilezero tmm", $c),
            concat!("tileloadd tmm", $a, ", [{a} + {s} * 1]"),
            concat!("tileloadd tmm", $b, ", [{w} + {q} * 1]"),
            concat!("tdpbsud tmm", $c, ", tmm", $a, ", tmm", $b),
            concat!("tilestored [{c} + {q} * 1], tmm", $c),
            a = in(reg) $acts,
            s = in(reg) $stride,
            w = in(reg) $weights,
            q = in(reg) 64usize,
            c = in(reg) $out,
            options(nostack),
        )
    };
}

impl<'a> Tiles<'a> {
    /// Loads the tile shapes on this thread; `sums` (SUMS of them, any contents) is where
    /// dots are stored for the vector units to fold.
    ///
    /// # Safety
    /// `available()` must be true.
    pub unsafe fn load(shapes: Shapes, sums: &'a mut [Sums]) -> Tiles<'a> {
        assert!(sums.len() >= SUMS, "{} sums for {SUMS} sets", sums.len());
        let config = config(shapes);
        asm!("ldtilecfg [{0}]", in(reg) &config as *const TileConfig, options(nostack, readonly));
        Tiles { sums }
    }

    /// Integer dots of one 32-value block (or sub-block) for 16 activation rows into sums `at`:
    /// `acts` is row 0's 32 bytes, the next rows `stride` bytes apart; `weights` the
    /// block's quads in a decoded tile.
    #[inline(always)]
    unsafe fn dot(&mut self, at: usize, acts: *const i8, stride: usize, weights: *const __m512i) {
        let out = self.sums[at].0.as_mut_ptr();
        match at % 4 {
            0 => dot_asm!("0", "4", "6", acts, stride, weights, out),
            1 => dot_asm!("1", "5", "7", acts, stride, weights, out),
            2 => dot_asm!("2", "4", "6", acts, stride, weights, out),
            _ => dot_asm!("3", "5", "7", acts, stride, weights, out),
        }
    }

    #[inline(always)]
    unsafe fn sum(&self, at: usize, row: usize) -> __m512i {
        _mm512_load_si512(self.sums[at].0.as_ptr().add(16 * row) as *const _)
    }
}

impl Drop for Tiles<'_> {
    fn drop(&mut self) {
        // SAFETY: only built after a successful ldtilecfg on this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// `vnni::sweep32` for activation rows first..first + 16 over every decoded tile (blocks
/// 0..), added into `facc`, with the same float operations per row.
///
/// # Safety
/// `amx` loaded on this thread; `q8` holds rows first..first + 16 of the tiles' blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline(never)]
pub unsafe fn sweep32<const MIN: bool>(
    amx: &mut Tiles,
    tiles: &[Tile32],
    zero: i32,
    q8: &Q8Rows,
    first: usize,
    facc: &mut [__m512; ROWS],
) {
    const GROUP: usize = 4;
    let per_row = q8.n_in / QK32;
    let stride = q8.n_in; // one activation row's int8 values
    let issue = |amx: &mut Tiles, step: usize| {
        for b in GROUP * step..(GROUP * step + GROUP).min(tiles.len()) {
            let i0 = first * per_row + b;
            let at = (step % 2) * STEP + b % GROUP;
            amx.dot(
                at,
                q8.qs.as_ptr().add(i0 * QK32),
                stride,
                tiles[b].q.as_ptr(),
            );
        }
    };
    let steps = tiles.len().div_ceil(GROUP);
    let mut acc = *facc;
    issue(amx, 0);
    for step in 0..steps {
        if step + 1 < steps {
            issue(amx, step + 1);
        }
        for b in GROUP * step..(GROUP * step + GROUP).min(tiles.len()) {
            let tile = &tiles[b];
            let at = (step % 2) * STEP + b % GROUP;
            for t in 0..ROWS {
                let i = (first + t) * per_row + b;
                let mut isum = amx.sum(at, t);
                if !MIN {
                    isum =
                        _mm512_add_epi32(isum, _mm512_set1_epi32(-zero * *q8.sum.get_unchecked(i)));
                }
                let dd = _mm512_mul_ps(tile.d, _mm512_set1_ps(*q8.d.get_unchecked(i)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), dd, acc[t]);
                if MIN {
                    acc[t] =
                        _mm512_fmadd_ps(tile.m, _mm512_set1_ps(*q8.s.get_unchecked(i)), acc[t]);
                }
            }
        }
    }
    *facc = acc;
}

/// Sixty-four quads of a super-block tile: the high-scaled weights of `split_scales`.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Quads(pub [__m512i; 64]);

// SAFETY: 4 KB of integers.
unsafe impl super::scratch::Plain for Quads {}

impl Quads {
    pub fn zeroed() -> Quads {
        // SAFETY: integers; all-zero bytes are a valid value.
        unsafe { std::mem::zeroed() }
    }
}

/// Folds a Q4_K/Q5_K tile's sub-block scales into its weights, so a super-block's 256 values
/// are one dot instead of eight: with sc = lo + 8·hi (lo, hi < 8), tile.q becomes q·lo and
/// `high` q·hi (both at most 31 · 7, still bytes), and Σ_j sc_j Σ q·a = Σ (q·lo)·a + 8 Σ (q·hi)·a,
/// the same integer.
///
/// # Safety
/// The CPU must have AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn split_scales(tile: &mut KTile, high: &mut Quads) {
    let bytes02 = _mm512_set1_epi32(0x00ff_00ff);
    for j in 0..8 {
        // The scale of each lane (output) in both 16-bit halves, for 16-bit multiplies.
        let lo = _mm512_and_si512(tile.sc[j], _mm512_set1_epi32(7));
        let lo = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(lo));
        let hi = _mm512_srli_epi32::<3>(tile.sc[j]);
        let hi = _mm512_or_si512(hi, _mm512_slli_epi32::<16>(hi));
        for g in 0..8 {
            let q = tile.q[8 * j + g];
            let even = _mm512_and_si512(q, bytes02);
            let odd = _mm512_srli_epi16::<8>(q);
            tile.q[8 * j + g] = _mm512_or_si512(
                _mm512_mullo_epi16(even, lo),
                _mm512_slli_epi16::<8>(_mm512_mullo_epi16(odd, lo)),
            );
            high.0[8 * j + g] = _mm512_or_si512(
                _mm512_mullo_epi16(even, hi),
                _mm512_slli_epi16::<8>(_mm512_mullo_epi16(odd, hi)),
            );
        }
    }
}

/// A super-block's two dots for 16 activation rows, sums into sets `at` (low) and `at + 1`
/// (high): `acts` row 0's 256 bytes, rows `stride` apart.
#[inline(always)]
unsafe fn dot_super(
    amx: &mut Tiles,
    at: usize,
    acts: *const i8,
    stride: usize,
    low: *const __m512i,
    high: *const __m512i,
) {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tileloadd tmm2, [{a} + {s} * 1]",
        "tileloadd tmm4, [{l} + {q} * 1]",
        "tileloadd tmm6, [{h} + {q} * 1]",
        "tdpbsud tmm0, tmm2, tmm4",
        "tdpbsud tmm1, tmm2, tmm6",
        "tileloadd tmm3, [{a} + {s} * 1 + 64]",
        "tileloadd tmm5, [{l} + {q} * 1 + 1024]",
        "tileloadd tmm7, [{h} + {q} * 1 + 1024]",
        "tdpbsud tmm0, tmm3, tmm5",
        "tdpbsud tmm1, tmm3, tmm7",
        "tileloadd tmm2, [{a} + {s} * 1 + 128]",
        "tileloadd tmm4, [{l} + {q} * 1 + 2048]",
        "tileloadd tmm6, [{h} + {q} * 1 + 2048]",
        "tdpbsud tmm0, tmm2, tmm4",
        "tdpbsud tmm1, tmm2, tmm6",
        "tileloadd tmm3, [{a} + {s} * 1 + 192]",
        "tileloadd tmm5, [{l} + {q} * 1 + 3072]",
        "tileloadd tmm7, [{h} + {q} * 1 + 3072]",
        "tdpbsud tmm0, tmm3, tmm5",
        "tdpbsud tmm1, tmm3, tmm7",
        "tilestored [{c0} + {q} * 1], tmm0",
        "tilestored [{c1} + {q} * 1], tmm1",
        a = in(reg) acts,
        s = in(reg) stride,
        l = in(reg) low,
        h = in(reg) high,
        q = in(reg) 64usize,
        c0 = in(reg) amx.sums[at].0.as_mut_ptr(),
        c1 = in(reg) amx.sums[at + 1].0.as_mut_ptr(),
        options(nostack),
    );
}

/// `vnni::sweep_k` for activation rows first..first + 16 over every Q4_K/Q5_K tile prepared by
/// `split_scales` (`high` its high-scaled quads). Q6_K's 16 scales of 16 values do not split
/// into bytes, and as 16-value dots lost to `vpdpbusd` (measured), so it stays on VNNI.
///
/// # Safety
/// As `sweep32`, with `amx` loaded as `Shapes::SuperBlocks`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline(never)]
pub unsafe fn sweep_k(
    amx: &mut Tiles,
    tiles: &[KTile],
    high: &[Quads],
    q8: &Q8KRows,
    first: usize,
    facc: &mut [__m512; ROWS],
) {
    let blocks = q8.n_in / QK_K;
    let stride = q8.n_in;
    let issue = |amx: &mut Tiles, k: usize| {
        let a = q8.qs.as_ptr().add((first * blocks + k) * QK_K);
        dot_super(
            amx,
            2 * (k % 2),
            a,
            stride,
            tiles[k].q.as_ptr(),
            high[k].0.as_ptr(),
        );
    };
    let mut acc = *facc;
    issue(amx, 0);
    for (k, tile) in tiles.iter().enumerate() {
        if k + 1 < tiles.len() {
            issue(amx, k + 1);
        }
        let set = 2 * (k % 2);
        for t in 0..ROWS {
            let i = (first + t) * blocks + k;
            let tot =
                _mm512_add_epi32(amx.sum(set, t), _mm512_slli_epi32::<3>(amx.sum(set + 1, t)));
            let mut summ = _mm512_setzero_si512();
            for p in 0..4 {
                summ = _mm512_dpwssd_epi32(
                    summ,
                    tile.mins[p],
                    _mm512_set1_epi32(*q8.bsum32_pairs.get_unchecked(i * 4 + p)),
                );
            }
            let dx = _mm512_set1_ps(*q8.d.get_unchecked(i));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), _mm512_mul_ps(tile.d, dx), acc[t]);
            acc[t] = _mm512_fnmadd_ps(
                _mm512_cvtepi32_ps(summ),
                _mm512_mul_ps(tile.dmin, dx),
                acc[t],
            );
        }
    }
    *facc = acc;
}
