//! Tests of the block kernels as a whole: every format and path against a float64 reference, invariance, threads, errors.

use super::activations::{quantize_q8, quantize_q8k};
use super::block_matmul::{block_matmul, Output, Path};
use super::blocks::dequantize_row;
use super::ggml::{ActFormat, BlockWeight, GgmlType, ALL_TYPES, QK32, QK_K};

/// A small deterministic generator so tests need no extra crates.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }

    /// Uniform in [-1, 1).
    pub fn float(&mut self) -> f32 {
        (self.next_u64() >> 29) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    pub fn floats(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.float()).collect()
    }
}

/// Where each format keeps its f16 scales (random bytes there could be inf or NaN).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        _ => &[],
    }
}

/// A random weight's bytes: random quants (every bit pattern is valid) with small f16 scales.
pub fn random_weight(ty: GgmlType, n_out: usize, n_in: usize, seed: u64) -> Vec<u8> {
    let mut noise = Noise::new(seed);
    let row_bytes = ty.row_bytes(n_in).unwrap();
    let mut data: Vec<u8> = (0..n_out * row_bytes)
        .map(|_| noise.next_u64() as u8)
        .collect();
    let put = |data: &mut [u8], at: usize, v: f32, ty: GgmlType| match ty {
        GgmlType::F32 => data[at..at + 4].copy_from_slice(&v.to_le_bytes()),
        GgmlType::Bf16 => {
            data[at..at + 2].copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes())
        }
        _ => data[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes()),
    };
    if ty.is_float() {
        for k in 0..n_out * n_in {
            put(&mut data, k * ty.block_bytes(), noise.float() * 0.1, ty);
        }
    } else {
        for block in 0..data.len() / ty.block_bytes() {
            for &field in f16_fields(ty) {
                let v = 0.001 + 0.02 * noise.float().abs();
                put(&mut data, block * ty.block_bytes() + field, v, ty);
            }
        }
    }
    data
}

/// What llama.cpp computes for one output, in float64, and the sum of |terms|.
fn reference(w: &BlockWeight, row: usize, x: &[f32]) -> (f64, f64) {
    let n = w.n_in;
    let mut dense = vec![0.0f32; n];
    dequantize_row(w.ty, w.row(row), &mut dense);
    let act: Vec<f64> = match w.ty.act_format() {
        ActFormat::F32 => x.iter().map(|&v| v as f64).collect(),
        ActFormat::F16 => x.iter().map(|&v| half::f16::from_f32(v).to_f64()).collect(),
        ActFormat::Bf16 => x
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f64())
            .collect(),
        ActFormat::Q8_0 | ActFormat::Q8_1 => {
            let q = quantize_q8(x, n, false);
            (0..n)
                .map(|k| q.qs[k] as f64 * q.d[k / QK32] as f64)
                .collect()
        }
        ActFormat::Q8K => {
            let q = quantize_q8k(x, n);
            (0..n)
                .map(|k| q.qs[k] as f64 * q.d[k / QK_K] as f64)
                .collect()
        }
    };
    let mut y: f64 = dense.iter().zip(&act).map(|(&w, &a)| w as f64 * a).sum();
    let scale: f64 = dense
        .iter()
        .zip(&act)
        .map(|(&w, &a)| (w as f64 * a).abs())
        .sum();
    if w.ty.act_format() == ActFormat::Q8_1 {
        // llama.cpp adds min · s, s being f16(unrounded scale · Σq), not min · d · Σq.
        let q = quantize_q8(x, n, true);
        for b in 0..n / QK32 {
            let block = &w.row(row)[b * w.ty.block_bytes()..];
            let m = half::f16::from_bits(u16::from_le_bytes([block[2], block[3]])).to_f64();
            y += m * (q.s[b] as f64 - q.d[b] as f64 * q.sum[b] as f64);
        }
    }
    (y, scale)
}

fn run(
    x: &[f32],
    rows: usize,
    weights: &[BlockWeight],
    threads: usize,
    path: Path,
) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = weights
        .iter()
        .map(|w| vec![f32::NAN; rows * w.n_out])
        .collect();
    let ptrs: Vec<Output> = outs.iter_mut().map(|o| Output(o.as_mut_ptr())).collect();
    unsafe { block_matmul(x, rows, weights, &ptrs, threads, path).unwrap() };
    outs
}

fn n_in_for(ty: GgmlType, blocks: usize) -> usize {
    if ty.is_float() {
        blocks * 16 + 7
    } else {
        blocks * ty.block_values()
    }
}

#[test]
fn every_format_matches_the_float64_reference_on_both_paths() {
    for ty in ALL_TYPES {
        for blocks in [1, 5] {
            let n_in = n_in_for(ty, blocks);
            for (rows, n_out) in [
                (1, 33),
                (3, 7),
                (9, 200),
                (8, 1),
                (1, 5000),
                (64, 17),
                (100, 5),
            ] {
                let data = random_weight(ty, n_out, n_in, 3 + rows as u64);
                let w = BlockWeight::new(ty, &data, n_in, n_out).unwrap();
                let mut noise = Noise::new(rows as u64);
                let mut x = noise.floats(rows * n_in);
                x[..n_in.min(32)].fill(0.0);
                for path in [Path::Fast, Path::Portable] {
                    let y = &run(&x, rows, &[w], 2, path)[0];
                    for t in 0..rows {
                        for r in 0..n_out {
                            let (want, scale) = reference(&w, r, &x[t * n_in..(t + 1) * n_in]);
                            let got = y[t * n_out + r] as f64;
                            let tol = 4e-7 * (blocks as f64 * 16.0).sqrt() * scale + 1e-30;
                            assert!(
                                (got - want).abs() <= tol,
                                "{} {path:?} rows {rows} n_in {n_in} out {r} token {t}: {got} vs {want}",
                                ty.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn fast_and_portable_paths_agree_bit_for_bit_except_bf16() {
    for ty in ALL_TYPES {
        // Float rows longer than one prompt pass over the inputs (1024) check the chunking.
        let widths = if ty.is_float() {
            vec![n_in_for(ty, 3), 2100]
        } else {
            vec![n_in_for(ty, 3)]
        };
        for n_in in widths {
            let data = random_weight(ty, 50, n_in, 9);
            let w = BlockWeight::new(ty, &data, n_in, 50).unwrap();
            // 37 rows: two groups of sixteen (AMX tiles, where the CPU has them) and five more.
            for rows in [3, 12, 37] {
                let x = Noise::new(4).floats(rows * n_in);
                let fast = run(&x, rows, &[w], 1, Path::Fast);
                let slow = run(&x, rows, &[w], 1, Path::Portable);
                if ty == GgmlType::Bf16 {
                    for (a, b) in fast[0].iter().zip(&slow[0]) {
                        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
                    }
                } else {
                    assert_eq!(fast, slow, "{} rows {rows} n_in {n_in}", ty.name());
                }
            }
        }
    }
}

#[test]
fn the_portable_tile_gives_each_rows_own_dot_across_token_chunks() {
    use super::activations::Activations;
    use super::portable_dot;
    // 70 activation rows cross two chunk boundaries of the tile's token loop; 1 and 2 take the
    // few-token (decode) forms of the AVX2 kernels.
    for (ty, tokens) in ALL_TYPES
        .into_iter()
        .flat_map(|ty| [(ty, 70), (ty, 1), (ty, 2)])
    {
        let (n_in, n_out) = (n_in_for(ty, 3), 20);
        let data = random_weight(ty, n_out, n_in, 13);
        let w = BlockWeight::new(ty, &data, n_in, n_out).unwrap();
        let x = Noise::new(8).floats(tokens * n_in);
        let acts = Activations::portable(&x, tokens, n_in, &[ty.act_format()]);
        let mut out = vec![f32::NAN; tokens * n_out];
        // SAFETY: `out` holds tokens · n_out values.
        unsafe { portable_dot::tile(&w, 3..17, &acts, out.as_mut_ptr()) };
        for t in 0..tokens {
            for r in 0..n_out {
                let got = out[t * n_out + r];
                if (3..17).contains(&r) {
                    let want = portable_dot::dot(&w, r, &acts, t);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{} token {t} row {r}",
                        ty.name()
                    );
                } else {
                    assert!(got.is_nan(), "{} wrote row {r} outside its tile", ty.name());
                }
            }
        }
    }
}

#[test]
fn long_float_prompts_cross_token_and_weight_blocks_bit_for_bit() {
    // 100 activation rows span several token blocks and every tile height (6, 4, 2, 1);
    // 8200 inputs give rows of 16-33 KB, so one call's rows fall into several weight blocks.
    for ty in [GgmlType::F32, GgmlType::F16] {
        let (n_in, n_out) = (8200, 150);
        let data = random_weight(ty, n_out, n_in, 21);
        let w = BlockWeight::new(ty, &data, n_in, n_out).unwrap();
        let x = Noise::new(6).floats(100 * n_in);
        let slow = &run(&x, 100, &[w], 1, Path::Portable)[0];
        for threads in [1, 2] {
            let fast = &run(&x, 100, &[w], threads, Path::Fast)[0];
            assert_eq!(fast, slow, "{} threads {threads}", ty.name());
        }
        for rows in [1, 7, 9, 53] {
            let part = &run(&x[..rows * n_in], rows, &[w], 2, Path::Fast)[0];
            assert_eq!(part[..], slow[..rows * n_out], "{} rows {rows}", ty.name());
        }
    }
}

#[test]
fn a_rows_result_is_the_same_alone_in_a_batch_and_across_paths_and_threads() {
    for ty in ALL_TYPES {
        // Nine blocks: two whole groups of four and a last group of one.
        let n_in = n_in_for(ty, 9);
        let data = random_weight(ty, 70, n_in, 11);
        let w = BlockWeight::new(ty, &data, n_in, 70).unwrap();
        let x = Noise::new(5).floats(100 * n_in);
        let all = &run(&x, 100, &[w], 2, Path::Fast)[0];
        let one_thread = &run(&x, 100, &[w], 1, Path::Fast)[0];
        assert_eq!(all, one_thread, "{}", ty.name());
        for (rows, t) in [(1, 0), (3, 2), (4, 3), (6, 1), (8, 5), (9, 8), (64, 63)] {
            let part = &run(&x[..rows * n_in], rows, &[w], 2, Path::Fast)[0];
            assert_eq!(
                &part[t * 70..(t + 1) * 70],
                &all[t * 70..(t + 1) * 70],
                "{} rows {rows}",
                ty.name()
            );
        }
    }
}

#[test]
fn several_weights_share_one_call() {
    let n_in = 512;
    let specs = [
        (GgmlType::Q4K, 48),
        (GgmlType::Q6K, 5000),
        (GgmlType::Q8_0, 40),
        (GgmlType::F16, 9),
        (GgmlType::Q4_1, 17),
    ];
    let datas: Vec<Vec<u8>> = specs
        .iter()
        .map(|&(ty, n)| random_weight(ty, n, n_in, n as u64))
        .collect();
    let weights: Vec<BlockWeight> = specs
        .iter()
        .zip(&datas)
        .map(|(&(ty, n), d)| BlockWeight::new(ty, d, n_in, n).unwrap())
        .collect();
    let x = Noise::new(8).floats(3 * n_in);
    let together = run(&x, 3, &weights, 2, Path::Fast);
    for (i, w) in weights.iter().enumerate() {
        assert_eq!(
            together[i],
            run(&x, 3, &[*w], 2, Path::Fast)[0],
            "{}",
            w.ty.name()
        );
    }
}

#[test]
fn bad_calls_are_errors() {
    let data = random_weight(GgmlType::Q4_0, 4, 64, 1);
    let w = BlockWeight::new(GgmlType::Q4_0, &data, 64, 4).unwrap();
    let mut out = vec![0.0f32; 8];
    let outs = [Output(out.as_mut_ptr())];
    unsafe {
        assert!(block_matmul(&[0.0; 100], 2, &[w], &outs, 1, Path::Fast)
            .unwrap_err()
            .contains("expected 2 rows of 64"));
        assert!(block_matmul(&[0.0; 128], 2, &[w], &[], 1, Path::Fast)
            .unwrap_err()
            .contains("0 outputs"));
        assert!(block_matmul(&[], 0, &[], &[], 1, Path::Fast)
            .unwrap_err()
            .contains("no weights"));
    }
    let data2 = random_weight(GgmlType::Q8_0, 4, 96, 1);
    let w2 = BlockWeight::new(GgmlType::Q8_0, &data2, 96, 4).unwrap();
    let outs2 = [Output(out.as_mut_ptr()), Output(out.as_mut_ptr())];
    let err = unsafe { block_matmul(&[0.0; 128], 2, &[w, w2], &outs2, 1, Path::Fast) }.unwrap_err();
    assert!(err.contains("one call shares x"), "{err}");
}

/// CPU time of the calling thread, in seconds (not counting time other processes ran).
fn thread_seconds() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

#[test]
#[ignore]
fn timing_probe() {
    let threads: usize = std::env::var("PROBE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let stream = vec![1u8; 256 << 20];
    let sum_stream = || {
        let t = thread_seconds();
        let mut acc = 0u64;
        for c in stream.chunks_exact(64) {
            acc = acc.wrapping_add(u64::from_le_bytes(c[..8].try_into().unwrap()));
        }
        std::hint::black_box(acc);
        stream.len() as f64 / (thread_seconds() - t) / 1e9
    };
    let only = std::env::var("PROBE_TYPE").unwrap_or_default();
    let rows_list: Vec<usize> = std::env::var("PROBE_ROWS")
        .map(|v| v.split(',').filter_map(|r| r.parse().ok()).collect())
        .unwrap_or_else(|_| vec![1, 128]);
    for ty in ALL_TYPES
        .into_iter()
        .filter(|t| only.is_empty() || t.name() == only)
    {
        let n_out: usize = std::env::var("PROBE_OUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(32768);
        let n_in: usize = std::env::var("PROBE_IN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048);
        let data = random_weight(ty, n_out, n_in, 1);
        let w = BlockWeight::new(ty, &data, n_in, n_out).unwrap();
        for &rows in &rows_list {
            let x = Noise::new(2).floats(rows * n_in);
            let mut times = vec![];
            let mut streams = vec![];
            for _ in 0..std::env::var("PROBE_REPS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(5)
            {
                if std::env::var("PROBE_STREAM").map_or(true, |v| v != "0") {
                    streams.push(sum_stream());
                } else {
                    streams.push(0.0);
                }
                let inner = (32768 / n_out).max(1);
                let t = thread_seconds();
                for _ in 0..inner {
                    run(&x, rows, &[w], threads, Path::Fast);
                }
                times.push((thread_seconds() - t) / inner as f64);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            streams.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let s = times[times.len() / 2];
            println!(
                "{} rows {rows} threads {threads}: {:.2} ms, {:.1} GB/s (1-thread stream {:.1} GB/s), {:.1} GMAC/s",
                ty.name(), s * 1e3, data.len() as f64 / s / 1e9, streams[streams.len() / 2], (rows * n_in * n_out) as f64 / s / 1e9
            );
        }
    }
}

#[test]
#[ignore]
fn call_overhead_probe() {
    for (ty, n_in, n_out) in [
        (GgmlType::Q4_1, 576, 576),
        (GgmlType::Q4_1, 576, 1536),
        (GgmlType::Q8_0, 576, 49152),
    ] {
        let data = random_weight(ty, n_out, n_in, 1);
        let w = BlockWeight::new(ty, &data, n_in, n_out).unwrap();
        let x = Noise::new(2).floats(n_in);
        for threads in [1, 2] {
            let reps = 2000usize * 576 / n_out;
            let mut out = vec![0.0f32; n_out];
            let outs = [Output(out.as_mut_ptr())];
            let t = std::time::Instant::now();
            for _ in 0..reps {
                unsafe { block_matmul(&x, 1, &[w], &outs, threads, Path::Fast).unwrap() };
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{} [{n_out}, {n_in}] threads {threads}: {:.1} us per call, {:.1} GB/s",
                ty.name(),
                s * 1e6,
                data.len() as f64 / s / 1e9
            );
        }
    }
}
