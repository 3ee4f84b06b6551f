//! Bandwidth-bound matrix-vector products y = x · W over weights stored [in, out]: f32, bf16, f16 or int8 blocks.
//!
//! Batch-1 decode reads every weight once per token, so its speed is the speed at which
//! weights stream from memory. Each call takes a range of input rows and streams those
//! rows of W front to back, adding x[k] · W[k, :] into the output: one long sequential
//! read per thread that hardware prefetchers follow, with the output (a few KB) in L1.
//! Threads split the rows and their partial outputs are summed afterwards.

use std::ops::Range;

/// Inputs sharing one int8 scale (llama.cpp's Q8_0 block).
pub const Q8_BLOCK: usize = 32;

/// The element storage of a weight matrix, row-major [rows = inputs, cols = outputs].
#[derive(Clone, Copy, Debug)]
pub enum Elements<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    F16(&'a [u16]),
    /// int8 values [rows, cols] and one f32 scale per 32 rows of each column: [rows / 32, cols].
    Q8 {
        values: &'a [i8],
        scales: &'a [f32],
    },
    /// The same int8 numbers re-laid for VNNI dot products (`tiled_index` gives the order):
    /// per 32-row block and 16-column tile, 512 bytes [8 quads of rows][16 columns][4 rows],
    /// each value stored + 128 as u8; scales as in `Q8`. Multiplied with activations
    /// quantized per block of 32 to int8 (as llama.cpp does for Q8_0), sums exact in i32.
    Q8Tiled {
        values: &'a [u8],
        scales: &'a [f32],
    },
}

/// How far ahead of its reads a kernel asks for weights (into L2). One core's hardware
/// prefetchers alone keep too few lines in flight for DRAM: measured in decode on a 2-core
/// Zen 4 VM, 6 KB ahead made bf16 7-8% and tiled int8 about 10% faster (f32 unchanged);
/// 2-3 KB helped less and 24 KB no more.
pub const PREFETCH_AHEAD: usize = 6 * 1024;

/// Columns per tile of `Elements::Q8Tiled`.
pub const Q8_TILE_COLS: usize = 16;

/// Position of weight (row k, column c) in a `Q8Tiled` matrix with `cols` columns.
pub fn tiled_index(k: usize, c: usize, cols: usize) -> usize {
    let (block, in_block) = (k / Q8_BLOCK, k % Q8_BLOCK);
    block * Q8_BLOCK * cols
        + c / Q8_TILE_COLS * Q8_BLOCK * Q8_TILE_COLS
        + in_block / 4 * Q8_TILE_COLS * 4
        + c % Q8_TILE_COLS * 4
        + in_block % 4
}

/// Whether `Elements::Q8Tiled` runs on the fast VNNI kernel here (else a slow portable loop).
pub fn tiled_kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One block of 32 activations as int8 the way llama.cpp's Q8_0 does it: scale = max |x| / 127,
/// values rounded to nearest (ties to even). Returns the values, the scale and their sum.
pub fn quantize_block(x: &[f32]) -> ([i8; Q8_BLOCK], f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut q = [0i8; Q8_BLOCK];
    let mut sum = 0i32;
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v * inverse).round_ties_even() as i8;
        sum += *q as i32;
    }
    (q, scale, sum)
}

/// A weight matrix whose slice lengths have been checked against its shape.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    elements: Elements<'a>,
    rows: usize,
    cols: usize,
}

/// Int8 weights carry one scale per 32 inputs of each output.
fn check_scales(rows: usize, cols: usize, count: usize) -> Result<(), String> {
    let want = rows / Q8_BLOCK * cols;
    if count != want {
        return Err(format!(
            "int8 weight [{rows}, {cols}] needs {want} scales, got {count}"
        ));
    }
    Ok(())
}

impl<'a> Matrix<'a> {
    pub fn new(elements: Elements<'a>, rows: usize, cols: usize) -> Result<Self, String> {
        let cells = rows.checked_mul(cols).ok_or("matrix size overflows")?;
        let (name, len) = match elements {
            Elements::F32(w) => ("f32", w.len()),
            Elements::Bf16(w) => ("bf16", w.len()),
            Elements::F16(w) => ("f16", w.len()),
            Elements::Q8 { values, scales } => {
                if !rows.is_multiple_of(Q8_BLOCK) {
                    return Err(format!(
                        "int8 weight has {rows} inputs, not a multiple of {Q8_BLOCK}"
                    ));
                }
                check_scales(rows, cols, scales.len())?;
                ("int8", values.len())
            }
            Elements::Q8Tiled { values, scales } => {
                if !rows.is_multiple_of(Q8_BLOCK) || !cols.is_multiple_of(Q8_TILE_COLS) {
                    return Err(format!(
                        "tiled int8 weight [{rows}, {cols}] needs inputs in multiples of {Q8_BLOCK} and outputs in multiples of {Q8_TILE_COLS}"
                    ));
                }
                check_scales(rows, cols, scales.len())?;
                ("tiled int8", values.len())
            }
        };
        if len != cells {
            return Err(format!(
                "{name} weight [{rows}, {cols}] needs {cells} elements, got {len}"
            ));
        }
        Ok(Matrix {
            elements,
            rows,
            cols,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row ranges given to `matvec_rows` should start at multiples of this: whole int8 blocks,
    /// whole 4-row passes for float weights.
    pub fn row_alignment(&self) -> usize {
        match self.elements {
            Elements::Q8 { .. } | Elements::Q8Tiled { .. } => Q8_BLOCK,
            _ => 4,
        }
    }

    /// Bytes read from memory for one full product.
    pub fn bytes(&self) -> usize {
        let cells = self.rows * self.cols;
        match self.elements {
            Elements::F32(_) => cells * 4,
            Elements::Bf16(_) | Elements::F16(_) => cells * 2,
            Elements::Q8 { .. } | Elements::Q8Tiled { .. } => cells + cells / Q8_BLOCK * 4,
        }
    }
}

/// y = Σ_{k in rows} x[k] · W[k, :], accumulated in f32 (y is overwritten, one value per column).
///
/// For int8 weights `rows` must start and end on a 32-row block boundary.
/// Panics if x, y or `rows` do not fit the matrix (callers validate shapes first).
pub fn matvec_rows(matrix: &Matrix, x: &[f32], rows: Range<usize>, y: &mut [f32]) {
    assert_eq!(x.len(), matrix.rows, "input length");
    assert!(
        rows.start <= rows.end && rows.end <= matrix.rows,
        "row range"
    );
    assert_eq!(y.len(), matrix.cols, "output length");
    if let Elements::Q8 { .. } | Elements::Q8Tiled { .. } = matrix.elements {
        assert!(
            rows.start.is_multiple_of(Q8_BLOCK) && rows.end.is_multiple_of(Q8_BLOCK),
            "int8 rows must cover whole blocks"
        );
    }
    #[cfg(target_arch = "x86_64")]
    {
        if let Elements::Q8Tiled { values, scales } = matrix.elements {
            if tiled_kernel_available() {
                // SAFETY: the CPU has AVX-512 VNNI/BW; Matrix::new checked the slice lengths and
                // the asserts above the row range.
                unsafe { vnni::matvec_tiled(values, scales, matrix.cols, x, rows, y) };
                return;
            }
            return portable::matvec_rows(matrix, x, rows, y);
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, and the asserts above keep every access in bounds.
            unsafe { avx512::matvec_rows(matrix, x, rows, y) };
            return;
        }
        if let Elements::F16(w) = matrix.elements {
            if avx2_f16::available() {
                // SAFETY: the CPU has the features; the asserts above keep accesses in bounds.
                unsafe { avx2_f16::matvec_rows(w, matrix.cols, x, rows, y) };
                return;
            }
        }
    }
    portable::matvec_rows(matrix, x, rows, y);
}

/// F16 weights on CPUs without AVX-512: `portable::matvec_rows` widened eight values at a time.
/// The portable loop converts each value through a call (the `half` crate picks F16C at run
/// time), which kept 1B-shape f16 decode far below memory speed. Same operations in the same
/// order (a product, then a sum, each rounded), so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx2_f16 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("f16c")
        })
    }

    /// # Safety
    /// The CPU has AVX2 and F16C; `w` holds [x.len(), cols] values, `rows` lies within x and
    /// `y` holds `cols` values.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn matvec_rows(w: &[u16], cols: usize, x: &[f32], rows: Range<usize>, y: &mut [f32]) {
        y.fill(0.0);
        let whole = cols / 8 * 8;
        for k in rows {
            let row = &w[k * cols..(k + 1) * cols];
            let xk = _mm256_set1_ps(x[k]);
            for c in (0..whole).step_by(8) {
                // SAFETY: c + 8 <= cols, the length of both `row` and `y`.
                unsafe {
                    let v = _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(c) as *const __m128i));
                    let out = y.as_mut_ptr().add(c);
                    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), _mm256_mul_ps(xk, v)));
                }
            }
            for c in whole..cols {
                y[c] += x[k] * half::f16::from_bits(row[c]).to_f32();
            }
        }
    }
}

/// Plain loops, used on CPUs without AVX-512 and as the reference in tests.
pub mod portable {
    use super::{quantize_block, tiled_index, Elements, Matrix, Q8_BLOCK};
    use half::{bf16, f16};
    use std::ops::Range;

    pub fn matvec_rows(matrix: &Matrix, x: &[f32], rows: Range<usize>, y: &mut [f32]) {
        let cols = matrix.cols;
        y.fill(0.0);
        if let Elements::Q8Tiled { values, scales } = matrix.elements {
            for block in rows.step_by(Q8_BLOCK) {
                let (q, scale, _) = quantize_block(&x[block..block + Q8_BLOCK]);
                let s = &scales[block / Q8_BLOCK * cols..][..cols];
                for (c, out) in y.iter_mut().enumerate() {
                    let dot: i32 = (0..Q8_BLOCK)
                        .map(|u| {
                            (values[tiled_index(block + u, c, cols)] as i32 - 128) * q[u] as i32
                        })
                        .sum();
                    *out += dot as f32 * (s[c] * scale);
                }
            }
            return;
        }
        for k in rows {
            let xk = x[k];
            let row = k * cols..(k + 1) * cols;
            match matrix.elements {
                Elements::F32(w) => y.iter_mut().zip(&w[row]).for_each(|(o, v)| *o += xk * v),
                Elements::Bf16(w) => y
                    .iter_mut()
                    .zip(&w[row])
                    .for_each(|(o, v)| *o += xk * bf16::from_bits(*v).to_f32()),
                Elements::F16(w) => y
                    .iter_mut()
                    .zip(&w[row])
                    .for_each(|(o, v)| *o += xk * f16::from_bits(*v).to_f32()),
                Elements::Q8 { values, scales } => {
                    let s = &scales[k / Q8_BLOCK * cols..(k / Q8_BLOCK + 1) * cols];
                    y.iter_mut()
                        .zip(&values[row])
                        .zip(s)
                        .for_each(|((o, v), s)| *o += xk * (*v as f32 * s));
                }
                Elements::Q8Tiled { .. } => unreachable!("handled above"),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Elements, Matrix, PREFETCH_AHEAD, Q8_BLOCK};
    use std::arch::x86_64::*;
    use std::ops::Range;

    const LANES: usize = 16;

    /// Asks for the cache line PREFETCH_AHEAD bytes past `at` into L2. The address may lie past
    /// the matrix: a prefetch never faults, and `wrapping_add` keeps the pointer arithmetic defined.
    #[inline(always)]
    pub(super) unsafe fn prefetch_ahead(at: *const i8) {
        _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PREFETCH_AHEAD));
    }
    /// Rows per pass over an output too wide for L1 (more than 4096 columns).
    const ROWS_PER_PASS: usize = 4;
    const L1_OUTPUT_COLS: usize = 4096;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_f32(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_bf16(p: *const u16) -> __m512 {
        // bf16 is the top half of an f32: widen to 32 bits and shift into place.
        let halves = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_f16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_i8(p: *const i8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }

    /// y[c] (+)= scale[c] · Σ_{u<R} x[u] · W[row u][c] over full vectors of columns;
    /// `scale` is null for float weights. Returns the columns done (a multiple of 16).
    macro_rules! pass {
        ($name:ident, $elem:ty, $load:ident) => {
            #[inline]
            #[target_feature(enable = "avx512f")]
            unsafe fn $name<const R: usize>(
                w: [*const $elem; R],
                x: [f32; R],
                scale: *const f32,
                y: *mut f32,
                cols: usize,
                first: bool,
            ) -> usize {
                let xs = x.map(|v| _mm512_set1_ps(v));
                let mut c = 0;
                while c + LANES <= cols {
                    if (c * std::mem::size_of::<$elem>()).is_multiple_of(64) {
                        for row in w {
                            prefetch_ahead(row.add(c) as *const i8);
                        }
                    }
                    let mut sum = $load(w[0].add(c));
                    sum = _mm512_mul_ps(xs[0], sum);
                    for u in 1..R {
                        sum = _mm512_fmadd_ps(xs[u], $load(w[u].add(c)), sum);
                    }
                    let out = y.add(c);
                    let prev = if first {
                        _mm512_setzero_ps()
                    } else {
                        _mm512_loadu_ps(out)
                    };
                    let next = if scale.is_null() {
                        _mm512_add_ps(prev, sum)
                    } else {
                        _mm512_fmadd_ps(_mm512_loadu_ps(scale.add(c)), sum, prev)
                    };
                    _mm512_storeu_ps(out, next);
                    c += LANES;
                }
                c
            }
        };
    }

    pass!(pass_f32, f32, load_f32);
    pass!(pass_bf16, u16, load_bf16);
    pass!(pass_f16, u16, load_f16);
    pass!(pass_i8, i8, load_i8);

    /// Pointers to the starts of rows k..k + R of a row-major matrix with `cols` columns.
    #[inline(always)]
    unsafe fn row_starts<T, const R: usize>(w: &[T], k: usize, cols: usize) -> [*const T; R] {
        std::array::from_fn(|u| w.as_ptr().add((k + u) * cols))
    }

    /// Rows [k, k + R) added into y; the last columns (fewer than 16) go through scalar code.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn add_rows<const R: usize>(
        matrix: &Matrix,
        x: &[f32],
        k: usize,
        y: &mut [f32],
        first: bool,
    ) {
        let cols = matrix.cols;
        let xr: [f32; R] = std::array::from_fn(|u| x[k + u]);
        let out = y.as_mut_ptr();
        let done = match matrix.elements {
            Elements::F32(w) => pass_f32::<R>(
                row_starts(w, k, cols),
                xr,
                std::ptr::null(),
                out,
                cols,
                first,
            ),
            Elements::Bf16(w) => pass_bf16::<R>(
                row_starts(w, k, cols),
                xr,
                std::ptr::null(),
                out,
                cols,
                first,
            ),
            Elements::F16(w) => pass_f16::<R>(
                row_starts(w, k, cols),
                xr,
                std::ptr::null(),
                out,
                cols,
                first,
            ),
            Elements::Q8 { values, scales } => {
                let scale = scales.as_ptr().add(k / Q8_BLOCK * cols);
                pass_i8::<R>(row_starts(values, k, cols), xr, scale, out, cols, first)
            }
            // Dispatched to the VNNI or portable kernel before reaching here.
            Elements::Q8Tiled { .. } => 0,
        };
        if done < cols {
            let mut tail = vec![0.0f32; cols];
            super::portable::matvec_rows(matrix, x, k..k + R, &mut tail);
            for c in done..cols {
                y[c] = if first { tail[c] } else { y[c] + tail[c] };
            }
        }
    }

    /// y += x[k] · W[k, :] for each row in turn: one sequential read of the whole range, the
    /// output (at most 16 KB) staying in L1. Best when rows are short.
    macro_rules! stream_rows {
        ($name:ident, $elem:ty, $load:ident, $scalar:expr) => {
            #[inline]
            #[target_feature(enable = "avx512f")]
            unsafe fn $name(
                w: &[$elem],
                cols: usize,
                x: &[f32],
                rows: Range<usize>,
                y: &mut [f32],
            ) {
                y.fill(0.0);
                let out = y.as_mut_ptr();
                const STEP: usize = 4 * LANES * std::mem::size_of::<$elem>();
                for k in rows {
                    let xk = x[k];
                    let xv = _mm512_set1_ps(xk);
                    let row = w.as_ptr().add(k * cols);
                    let mut c = 0;
                    while c + 4 * LANES <= cols {
                        let next = row.add(c) as *const i8;
                        for line in (0..STEP).step_by(64) {
                            prefetch_ahead(next.wrapping_add(line));
                        }
                        for u in 0..4 {
                            let o = out.add(c + u * LANES);
                            _mm512_storeu_ps(
                                o,
                                _mm512_fmadd_ps(
                                    xv,
                                    $load(row.add(c + u * LANES)),
                                    _mm512_loadu_ps(o),
                                ),
                            );
                        }
                        c += 4 * LANES;
                    }
                    while c + LANES <= cols {
                        let o = out.add(c);
                        _mm512_storeu_ps(
                            o,
                            _mm512_fmadd_ps(xv, $load(row.add(c)), _mm512_loadu_ps(o)),
                        );
                        c += LANES;
                    }
                    for (o, v) in y[c..].iter_mut().zip(&w[k * cols + c..(k + 1) * cols]) {
                        *o += xk * $scalar(*v);
                    }
                }
            }
        };
    }

    stream_rows!(stream_f32, f32, load_f32, |v: f32| v);
    stream_rows!(stream_bf16, u16, load_bf16, |v: u16| half::bf16::from_bits(
        v
    )
    .to_f32());
    stream_rows!(stream_f16, u16, load_f16, |v: u16| half::f16::from_bits(v)
        .to_f32());
    stream_rows!(stream_i8, i8, load_i8, |v: i8| v as f32);

    /// Int8 rows streamed a block of 32 at a time into a partial sum, then scaled into y.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn stream_q8(
        values: &[i8],
        scales: &[f32],
        cols: usize,
        x: &[f32],
        rows: Range<usize>,
        y: &mut [f32],
    ) {
        y.fill(0.0);
        let mut part = vec![0.0f32; cols];
        let mut k = rows.start;
        while k < rows.end {
            stream_i8(values, cols, x, k..k + Q8_BLOCK, &mut part);
            let scale = &scales[k / Q8_BLOCK * cols..(k / Q8_BLOCK + 1) * cols];
            let (out, p, s) = (y.as_mut_ptr(), part.as_ptr(), scale.as_ptr());
            let mut c = 0;
            while c + LANES <= cols {
                let sum = _mm512_fmadd_ps(
                    _mm512_loadu_ps(s.add(c)),
                    _mm512_loadu_ps(p.add(c)),
                    _mm512_loadu_ps(out.add(c)),
                );
                _mm512_storeu_ps(out.add(c), sum);
                c += LANES;
            }
            for c in c..cols {
                y[c] += scale[c] * part[c];
            }
            k += Q8_BLOCK;
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn matvec_rows(matrix: &Matrix, x: &[f32], rows: Range<usize>, y: &mut [f32]) {
        if rows.is_empty() {
            y.fill(0.0);
            return;
        }
        let cols = matrix.cols;
        if cols <= L1_OUTPUT_COLS {
            match matrix.elements {
                Elements::F32(w) => stream_f32(w, cols, x, rows, y),
                Elements::Bf16(w) => stream_bf16(w, cols, x, rows, y),
                Elements::F16(w) => stream_f16(w, cols, x, rows, y),
                Elements::Q8 { values, scales } => stream_q8(values, scales, cols, x, rows, y),
                Elements::Q8Tiled { .. } => super::portable::matvec_rows(matrix, x, rows, y),
            }
            return;
        }
        // Wide outputs (the head) do not fit L1: four rows per pass quarter the output traffic.
        // Int8 blocks hold 32 rows, a multiple of 4, so a pass never spans two scales.
        let mut k = rows.start;
        let mut first = true;
        while k + ROWS_PER_PASS <= rows.end {
            add_rows::<ROWS_PER_PASS>(matrix, x, k, y, first);
            first = false;
            k += ROWS_PER_PASS;
        }
        while k < rows.end {
            add_rows::<1>(matrix, x, k, y, first);
            first = false;
            k += 1;
        }
    }
}

/// Tiled int8 weights times int8-quantized activations with AVX-512 VNNI (`vpdpbusd`).
#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{quantize_block, Q8_BLOCK, Q8_TILE_COLS};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// y = Σ over the blocks in `rows` of scale_w · scale_x · (Σ (w + 128) · q - 128 · Σ q).
    /// Each block's tiles are 512 contiguous bytes, so the weights stream strictly in order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn matvec_tiled(
        values: &[u8],
        scales: &[f32],
        cols: usize,
        x: &[f32],
        rows: Range<usize>,
        y: &mut [f32],
    ) {
        y.fill(0.0);
        let out = y.as_mut_ptr();
        for block in rows.step_by(Q8_BLOCK) {
            let (q, x_scale, q_sum) = quantize_block(&x[block..block + Q8_BLOCK]);
            if x_scale == 0.0 {
                continue;
            }
            // Each quad of four activations, broadcast to every 32-bit lane.
            let quads: [__m512i; 8] = std::array::from_fn(|j| {
                _mm512_set1_epi32(i32::from_le_bytes([
                    q[4 * j] as u8,
                    q[4 * j + 1] as u8,
                    q[4 * j + 2] as u8,
                    q[4 * j + 3] as u8,
                ]))
            });
            let offset = _mm512_set1_epi32(128 * q_sum);
            let xs = _mm512_set1_ps(x_scale);
            let tiles = values.as_ptr().add(block * cols);
            let scale_row = scales.as_ptr().add(block / Q8_BLOCK * cols);
            for t in 0..cols / Q8_TILE_COLS {
                let w = tiles.add(t * Q8_BLOCK * Q8_TILE_COLS) as *const __m512i;
                for line in 0..8 {
                    super::avx512::prefetch_ahead((w as *const i8).wrapping_add(64 * line));
                }
                // Two chains halve the dependency on vpdpbusd's latency.
                let mut even = _mm512_setzero_si512();
                let mut odd = _mm512_setzero_si512();
                for j in (0..8).step_by(2) {
                    even = _mm512_dpbusd_epi32(even, _mm512_loadu_si512(w.add(j)), quads[j]);
                    odd = _mm512_dpbusd_epi32(odd, _mm512_loadu_si512(w.add(j + 1)), quads[j + 1]);
                }
                let dot = _mm512_sub_epi32(_mm512_add_epi32(even, odd), offset);
                let c = t * Q8_TILE_COLS;
                let scale = _mm512_mul_ps(_mm512_loadu_ps(scale_row.add(c)), xs);
                let o = out.add(c);
                _mm512_storeu_ps(
                    o,
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, _mm512_loadu_ps(o)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator so tests need no extra crates.
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(w: &[f64], rows: usize, cols: usize, x: &[f32]) -> Vec<f64> {
        (0..cols)
            .map(|n| (0..rows).map(|k| x[k] as f64 * w[k * cols + n]).sum())
            .collect()
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_f16_rows_are_the_portable_bits() {
        if !super::avx2_f16::available() {
            eprintln!("skipped: this CPU has no AVX2 and F16C");
            return;
        }
        // 37 columns: four groups of eight and a tail of five.
        let (rows, cols) = (70, 37);
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let w: Vec<u16> = (0..rows * cols).map(|_| half::f16::from_f32(next()).to_bits()).collect();
        let x: Vec<f32> = (0..rows).map(|_| next()).collect();
        let matrix = Matrix::new(Elements::F16(&w), rows, cols).unwrap();
        for range in [0..rows, 3..41] {
            let mut fast = vec![f32::NAN; cols];
            let mut slow = vec![f32::NAN; cols];
            // SAFETY: checked above; shapes fit.
            unsafe { super::avx2_f16::matvec_rows(&w, cols, &x, range.clone(), &mut fast) };
            portable::matvec_rows(&matrix, &x, range, &mut slow);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&slow));
        }
    }

    fn check(matrix: Matrix, exact: &[f64], x: &[f32]) {
        let (rows, cols) = (matrix.rows(), matrix.cols());
        let step = if matches!(
            matrix.elements,
            Elements::Q8 { .. } | Elements::Q8Tiled { .. }
        ) {
            Q8_BLOCK
        } else {
            1
        };
        let mid = rows / 2 / step * step;
        for range in [0..rows, 0..mid, mid..rows] {
            let want = reference(
                &exact[range.start * cols..range.end * cols],
                range.len(),
                cols,
                &x[range.clone()],
            );
            let mut fast = vec![f32::NAN; cols];
            let mut slow = vec![f32::NAN; cols];
            matvec_rows(&matrix, x, range.clone(), &mut fast);
            portable::matvec_rows(&matrix, x, range.clone(), &mut slow);
            let tol = 1e-5 * (rows as f64).sqrt();
            for n in 0..cols {
                let bound = tol * (1.0 + want[n].abs());
                assert!(
                    (fast[n] as f64 - want[n]).abs() < bound,
                    "fast col {n} rows {range:?}: {} vs {}",
                    fast[n],
                    want[n]
                );
                assert!(
                    (slow[n] as f64 - want[n]).abs() < bound,
                    "portable col {n} rows {range:?}: {} vs {}",
                    slow[n],
                    want[n]
                );
            }
        }
    }

    // Shapes cover 1 and 4 rows per pass (more than 4096 columns), 16-wide vectors and ragged tails.
    // Column counts cover full 128-wide tiles, 16-wide tiles and a ragged tail.
    const SHAPES: [(usize, usize); 5] = [(64, 128), (96, 200), (576, 960), (32, 7), (64, 4100)];

    #[test]
    fn f32_matches_reference() {
        for (rows, cols) in SHAPES {
            let w = noise(1, rows * cols);
            let x = noise(2, rows);
            let exact: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            check(
                Matrix::new(Elements::F32(&w), rows, cols).unwrap(),
                &exact,
                &x,
            );
        }
    }

    #[test]
    fn bf16_and_f16_match_reference() {
        for (rows, cols) in SHAPES {
            let w = noise(3, rows * cols);
            let x = noise(4, rows);
            let b: Vec<u16> = w
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            let exact: Vec<f64> = b
                .iter()
                .map(|&v| half::bf16::from_bits(v).to_f64())
                .collect();
            check(
                Matrix::new(Elements::Bf16(&b), rows, cols).unwrap(),
                &exact,
                &x,
            );
            let h: Vec<u16> = w
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            let exact: Vec<f64> = h
                .iter()
                .map(|&v| half::f16::from_bits(v).to_f64())
                .collect();
            check(
                Matrix::new(Elements::F16(&h), rows, cols).unwrap(),
                &exact,
                &x,
            );
        }
    }

    /// Int8 values [rows, cols] re-laid as `Elements::Q8Tiled` wants them.
    fn tile(values: &[i8], rows: usize, cols: usize) -> Vec<u8> {
        let mut tiled = vec![0u8; rows * cols];
        for k in 0..rows {
            for c in 0..cols {
                tiled[tiled_index(k, c, cols)] = (values[k * cols + c] as i16 + 128) as u8;
            }
        }
        tiled
    }

    #[test]
    fn tiled_index_is_a_permutation() {
        let (rows, cols) = (64, 48);
        let mut seen = vec![false; rows * cols];
        for k in 0..rows {
            for c in 0..cols {
                let i = tiled_index(k, c, cols);
                assert!(!seen[i]);
                seen[i] = true;
            }
        }
    }

    #[test]
    fn q8_tiled_matches_reference_on_activations_int8_represents_exactly() {
        for (rows, cols) in [(64, 16), (96, 48), (576, 192), (1536, 576), (64, 4112)] {
            let values: Vec<i8> = noise(11, rows * cols)
                .iter()
                .map(|v| (v * 127.0) as i8)
                .collect();
            let scales: Vec<f32> = noise(12, rows / Q8_BLOCK * cols)
                .iter()
                .map(|v| v * 0.01)
                .collect();
            // Activations of the form q · d with one |q| = 127 per block: quantizing them is exact.
            let mut x: Vec<f32> = noise(13, rows)
                .iter()
                .map(|v| (v * 127.0).round())
                .collect();
            for (b, block) in x.chunks_mut(Q8_BLOCK).enumerate() {
                block[b % Q8_BLOCK] = if b % 2 == 0 { 127.0 } else { -127.0 };
                let d = 0.001 * (b + 1) as f32;
                block.iter_mut().for_each(|v| *v *= d);
            }
            let tiled = tile(&values, rows, cols);
            let exact: Vec<f64> = (0..rows * cols)
                .map(|i| values[i] as f64 * scales[(i / cols) / Q8_BLOCK * cols + i % cols] as f64)
                .collect();
            let matrix = Matrix::new(
                Elements::Q8Tiled {
                    values: &tiled,
                    scales: &scales,
                },
                rows,
                cols,
            )
            .unwrap();
            check(matrix, &exact, &x);
        }
    }

    #[test]
    fn q8_tiled_stays_within_activation_rounding_of_the_float_product() {
        let (rows, cols) = (576, 1536);
        let values: Vec<i8> = noise(14, rows * cols)
            .iter()
            .map(|v| (v * 127.0) as i8)
            .collect();
        let scales: Vec<f32> = noise(15, rows / Q8_BLOCK * cols)
            .iter()
            .map(|v| v.abs() * 0.01)
            .collect();
        let x = noise(16, rows);
        let tiled = tile(&values, rows, cols);
        let matrix = Matrix::new(
            Elements::Q8Tiled {
                values: &tiled,
                scales: &scales,
            },
            rows,
            cols,
        )
        .unwrap();
        let (mut fast, mut slow) = (vec![0.0; cols], vec![0.0; cols]);
        matvec_rows(&matrix, &x, 0..rows, &mut fast);
        portable::matvec_rows(&matrix, &x, 0..rows, &mut slow);
        for c in 0..cols {
            // Same integer sums: the two paths differ only in f32 rounding of the block sums.
            assert!(
                (fast[c] - slow[c]).abs() <= 1e-5 * (1.0 + slow[c].abs()),
                "col {c}"
            );
            // Each activation moves by at most half a quantization step (max |x| / 254 per block).
            let mut exact = 0.0f64;
            let mut bound = 0.0f64;
            for k in 0..rows {
                let w = values[k * cols + c] as f64 * scales[k / Q8_BLOCK * cols + c] as f64;
                exact += w * x[k] as f64;
                let amax = x[k / Q8_BLOCK * Q8_BLOCK..][..Q8_BLOCK]
                    .iter()
                    .fold(0.0f32, |m, v| m.max(v.abs()));
                bound += w.abs() * amax as f64 / 254.0;
            }
            assert!(
                (fast[c] as f64 - exact).abs() <= bound * 1.0001 + 1e-6,
                "col {c}: {} vs {exact}",
                fast[c]
            );
        }
    }

    #[test]
    fn q8_tiled_shapes_are_checked() {
        let (values, scales) = (vec![0u8; 32 * 24], vec![0f32; 24]);
        let err = Matrix::new(
            Elements::Q8Tiled {
                values: &values,
                scales: &scales,
            },
            32,
            24,
        )
        .unwrap_err();
        assert!(err.contains("multiples of 16"), "{err}");
        let (values, scales) = (vec![0u8; 32 * 16], vec![0f32; 15]);
        assert!(Matrix::new(
            Elements::Q8Tiled {
                values: &values,
                scales: &scales
            },
            32,
            16
        )
        .is_err());
    }

    #[test]
    fn q8_matches_reference() {
        for (rows, cols) in SHAPES {
            let values: Vec<i8> = noise(5, rows * cols)
                .iter()
                .map(|v| (v * 127.0) as i8)
                .collect();
            let scales: Vec<f32> = noise(6, rows / Q8_BLOCK * cols)
                .iter()
                .map(|v| v * 0.01)
                .collect();
            let x = noise(7, rows);
            let exact: Vec<f64> = (0..rows * cols)
                .map(|i| values[i] as f64 * scales[(i / cols) / Q8_BLOCK * cols + i % cols] as f64)
                .collect();
            check(
                Matrix::new(
                    Elements::Q8 {
                        values: &values,
                        scales: &scales,
                    },
                    rows,
                    cols,
                )
                .unwrap(),
                &exact,
                &x,
            );
        }
    }

    #[test]
    fn shapes_are_checked() {
        let w = vec![0.0f32; 12];
        assert!(Matrix::new(Elements::F32(&w), 3, 4).is_ok());
        assert!(Matrix::new(Elements::F32(&w), 4, 4)
            .unwrap_err()
            .contains("needs 16 elements"));
        let values = vec![0i8; 40];
        let scales = vec![0.0f32; 2];
        let err = Matrix::new(
            Elements::Q8 {
                values: &values,
                scales: &scales,
            },
            20,
            2,
        )
        .unwrap_err();
        assert!(err.contains("multiple of 32"), "{err}");
        let values = vec![0i8; 64];
        let err = Matrix::new(
            Elements::Q8 {
                values: &values,
                scales: &scales[..1],
            },
            32,
            2,
        )
        .unwrap_err();
        assert!(err.contains("needs 2 scales"), "{err}");
    }
}
