//! y_i = x · W_iᵀ for GGUF weights kept as their files store them: activations rounded once, output rows split over threads.
//!
//! A call multiplies activations x [rows, n_in] by one or more weights sharing that x
//! (Q/K/V, or gate/up). x is rounded once per activation format the weights need. The work
//! is cut into tiles of 16 output rows; each tile computes every activation row, so a row's
//! result never depends on the other rows of the call or on how tiles fall to threads.
//! Few rows (decode) stream each tile's weights once for all rows; many rows (prompts)
//! decode a tile once and reuse it from cache for every row (`tiles`).

use super::activations::Activations;
use super::ggml::{ActFormat, BlockWeight, GgmlType};
use super::portable_dot;
use super::workers::{self, SharedJob};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Output rows per unit of work (one AVX-512 register of results).
pub const TILE_ROWS: usize = 16;

/// Calls with at most this many activation rows stream weights once for all rows (decode);
/// more rows take the cache-tiled path (prompts).
pub const STREAM_MAX_ROWS: usize = 8;

/// Below this many weight bytes per thread a call is not split: waking a helper costs more.
/// Block formats cost more work per byte than the [in, out] kernels (decoding), so a
/// 576 x 576 Q4_1 projection (207 KB, about 9 us on one core) is already worth splitting.
const MIN_SHARE_BYTES: usize = 64 * 1024;

/// Where the kernels run: lljx's AVX-512 paths where the CPU has them, else plain Rust.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Fast,
    Portable,
}

/// One product's output: f32 [rows, n_out], row-major.
#[derive(Clone, Copy)]
pub struct Output(pub *mut f32);

// Tiles write disjoint output cells; the caller keeps the buffers alive until `run` returns.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// A tile of one product: output rows `rows` of weight `product`.
#[derive(Clone, Debug)]
struct Unit {
    product: usize,
    rows: Range<usize>,
}

struct Job<'a> {
    weights: Vec<BlockWeight<'a>>,
    outputs: Vec<Output>,
    acts: Activations<'a>,
    /// Q8_K activations laid out for the K-quant decode kernel (decode on AVX-512 only).
    #[cfg(target_arch = "x86_64")]
    k_lanes: Option<super::stream_k::KLanes>,
    /// Q8_0 and Q8_1 activations laid out for the 4-bit 32-value decode kernel.
    #[cfg(target_arch = "x86_64")]
    lanes32: [Option<super::stream_32::Lanes32>; 2],
    units: Vec<Unit>,
    /// What one thread claims at a time: a run of consecutive units.
    pieces: Vec<Range<usize>>,
    path: Path,
    /// Prompts run AMX tiles (`amx::enabled`, checked once per call).
    #[cfg(target_arch = "x86_64")]
    amx: bool,
    next: AtomicUsize,
    done: AtomicUsize,
}

// Raw output pointers; see `Output`.
unsafe impl Send for Job<'_> {}
unsafe impl Sync for Job<'_> {}

impl SharedJob for Job<'_> {
    fn drain(&self) {
        loop {
            let piece = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(range) = self.pieces.get(piece) else {
                return;
            };
            // Consecutive tiles of one weight go to the kernels as one run of rows.
            let units = &self.units[range.clone()];
            let mut i = 0;
            while i < units.len() {
                let mut end = i + 1;
                while end < units.len()
                    && units[end].product == units[i].product
                    && units[end].rows.start == units[end - 1].rows.end
                {
                    end += 1;
                }
                let product = units[i].product;
                let rows = units[i].rows.start..units[end - 1].rows.end;
                // SAFETY: the caller checked each output holds rows · n_out values; units are disjoint.
                unsafe { self.run_tile(&self.weights[product], rows, self.outputs[product]) };
                i = end;
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// Multiplies x [rows, n_in] by each weight, writing f32 [rows, n_out_i] into `outputs[i]`.
///
/// # Safety
/// Each output must point to rows · n_out_i writable f32 values that nothing else touches
/// during the call.
pub unsafe fn block_matmul(
    x: &[f32],
    rows: usize,
    weights: &[BlockWeight],
    outputs: &[Output],
    threads: usize,
    path: Path,
) -> Result<(), String> {
    let n_in = check_call(x, rows, weights, outputs)?;
    let mut formats: Vec<ActFormat> = weights.iter().map(|w| w.ty.act_format()).collect();
    formats.dedup();
    let acts = Activations::new(x, rows, n_in, &formats);
    #[cfg(target_arch = "x86_64")]
    let k_lanes = match &acts.q8k {
        Some(q8) if path == Path::Fast && rows <= STREAM_MAX_ROWS && fast_int() => {
            let has = |t: &[GgmlType]| weights.iter().any(|w| t.contains(&w.ty));
            Some(super::stream_k::KLanes::new(
                q8,
                rows,
                has(&[GgmlType::Q4K, GgmlType::Q5K]),
                has(&[GgmlType::Q6K]),
            ))
        }
        _ => None,
    };
    #[cfg(target_arch = "x86_64")]
    let lanes32 = {
        let decode = path == Path::Fast && rows <= STREAM_MAX_ROWS && fast_int();
        let wanted = |tys: &[GgmlType], q8: &Option<super::activations::Q8Rows>| match q8 {
            Some(q8)
                if decode
                    && weights
                        .iter()
                        .any(|w| tys.contains(&w.ty) && super::stream_32::handles(w.ty, rows)) =>
            {
                Some(super::stream_32::Lanes32::new(q8, rows))
            }
            _ => None,
        };
        [
            wanted(
                &[GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0],
                &acts.q8_0,
            ),
            wanted(&[GgmlType::Q4_1, GgmlType::Q5_1], &acts.q8_1),
        ]
    };
    let units: Vec<Unit> = weights
        .iter()
        .enumerate()
        .flat_map(|(product, w)| {
            (0..w.n_out).step_by(TILE_ROWS).map(move |start| Unit {
                product,
                rows: start..(start + TILE_ROWS).min(w.n_out),
            })
        })
        .collect();
    let bytes: usize = weights.iter().map(|w| w.data.len()).sum();
    let max_pieces = if rows <= STREAM_MAX_ROWS {
        // One contiguous run per thread: each streams one long range of memory.
        threads
    } else {
        // Small pieces claimed as threads free up, so a busy core does not hold the call back.
        8 * threads
    };
    let count = (bytes * rows.min(4) / MIN_SHARE_BYTES)
        .clamp(1, max_pieces.max(1))
        .min(units.len());
    let pieces = split_by_bytes(&units, weights, count);
    let job = Arc::new(Job {
        weights: weights.to_vec(),
        outputs: outputs.to_vec(),
        acts,
        #[cfg(target_arch = "x86_64")]
        k_lanes,
        #[cfg(target_arch = "x86_64")]
        lanes32,
        units,
        pieces,
        path,
        #[cfg(target_arch = "x86_64")]
        amx: path == Path::Fast && rows > STREAM_MAX_ROWS && super::amx::enabled(),
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    });
    if threads > 1 && job.pieces.len() > 1 {
        let shared: Arc<dyn SharedJob + '_> = job.clone();
        // SAFETY: `run` waits below until every piece is done; a helper that arrives later
        // finds no piece to claim and touches nothing the caller owns.
        let shared: Arc<dyn SharedJob> = unsafe { std::mem::transmute(shared) };
        workers::share(shared);
    }
    job.drain();
    workers::wait_until(|| job.done.load(Ordering::Acquire) >= job.pieces.len());
    Ok(())
}

/// The inputs shared by every weight of a call, once x [rows, n_in], the weights and the
/// outputs are checked to fit one another.
pub fn check_call(
    x: &[f32],
    rows: usize,
    weights: &[BlockWeight],
    outputs: &[Output],
) -> Result<usize, String> {
    let n_in = weights.first().ok_or("no weights")?.n_in;
    if rows == 0 || x.len() != rows * n_in {
        return Err(format!(
            "x holds {} values, expected {rows} rows of {n_in}",
            x.len()
        ));
    }
    if outputs.len() != weights.len() {
        return Err(format!(
            "{} outputs for {} weights",
            outputs.len(),
            weights.len()
        ));
    }
    if let Some(w) = weights.iter().find(|w| w.n_in != n_in) {
        return Err(format!(
            "weights take {n_in} and {} inputs; one call shares x",
            w.n_in
        ));
    }
    Ok(n_in)
}

/// `count` runs of consecutive units holding about the same weight bytes.
fn split_by_bytes(units: &[Unit], weights: &[BlockWeight], count: usize) -> Vec<Range<usize>> {
    let cost = |u: &Unit| u.rows.len() * weights[u.product].row_bytes;
    let total: usize = units.iter().map(cost).sum();
    let mut pieces = Vec::with_capacity(count);
    let (mut start, mut filled) = (0, 0);
    for (i, unit) in units.iter().enumerate() {
        filled += cost(unit);
        let boundary = (total * (pieces.len() + 1)).div_ceil(count);
        if filled >= boundary && pieces.len() + 1 < count {
            pieces.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < units.len() {
        pieces.push(start..units.len());
    }
    pieces
}

impl Job<'_> {
    /// Output rows `rows` of `w` for every activation row.
    ///
    /// # Safety
    /// `out` must point to acts.rows · w.n_out writable values.
    unsafe fn run_tile(&self, w: &BlockWeight, rows: Range<usize>, out: Output) {
        let acts = &self.acts;
        #[cfg(target_arch = "x86_64")]
        if self.path == Path::Fast && !w.ty.is_float() && fast_int() {
            // SAFETY: the CPU has the features; the caller checked `out`.
            let lanes32 = match w.ty {
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => self.lanes32[0].as_ref(),
                GgmlType::Q4_1 | GgmlType::Q5_1 => self.lanes32[1].as_ref(),
                _ => None,
            };
            return unsafe {
                super::vnni::tile(
                    w,
                    rows,
                    acts,
                    self.k_lanes.as_ref(),
                    lanes32,
                    self.amx,
                    out.0,
                )
            };
        }
        #[cfg(target_arch = "x86_64")]
        if self.path == Path::Fast && w.ty.is_float() && fast_float(w.ty) {
            // SAFETY: as above.
            return unsafe { super::float_tiles::tile(w, rows, acts, out.0) };
        }
        // SAFETY: the caller checked `out`.
        unsafe { portable_dot::tile(w, rows, acts, out.0) }
    }
}

/// Whether the integer tiles' AVX-512 VNNI kernels run on this CPU (checked once).
#[cfg(target_arch = "x86_64")]
fn fast_int() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(super::unpack::available)
}

/// Whether the float tiles' AVX-512 kernels run on this CPU for `ty` (checked once per type).
#[cfg(target_arch = "x86_64")]
fn fast_float(ty: super::ggml::GgmlType) -> bool {
    static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static BF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let cell = if ty == super::ggml::GgmlType::Bf16 {
        &BF
    } else {
        &F
    };
    *cell.get_or_init(|| super::float_tiles::available(ty))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::ggml::GgmlType;

    #[test]
    fn pieces_cover_every_unit_once_in_order() {
        let data = vec![0u8; 1000 * 68];
        let a = BlockWeight::new(GgmlType::Q8_0, &data[..600 * 68], 64, 600).unwrap();
        let b = BlockWeight::new(GgmlType::Q8_0, &data[..7 * 68], 64, 7).unwrap();
        let weights = [a, b];
        let units: Vec<Unit> = weights
            .iter()
            .enumerate()
            .flat_map(|(p, w)| {
                (0..w.n_out).step_by(TILE_ROWS).map(move |s| Unit {
                    product: p,
                    rows: s..(s + TILE_ROWS).min(w.n_out),
                })
            })
            .collect();
        for count in [1, 2, 3, 16] {
            let pieces = split_by_bytes(&units, &weights, count);
            assert!(!pieces.is_empty() && pieces.len() <= count);
            assert_eq!(pieces[0].start, 0);
            assert_eq!(pieces.last().unwrap().end, units.len());
            assert!(pieces
                .windows(2)
                .all(|p| p[0].end == p[1].start && !p[0].is_empty()));
        }
    }
}
