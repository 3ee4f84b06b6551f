//! Read bandwidth: how fast a number of threads stream a buffer of a given size, the bound batch-1 decode works against.
//!
//! Each thread reads its own contiguous share of the buffer front to back with the widest
//! loads the CPU has, asking for lines a few KB ahead as the matvec kernels do, so the
//! figure is what a weight-streaming kernel can reach on this machine: from DRAM for a
//! large buffer, from L3 or L2 when the buffer fits there. numpy's sum, the bench's earlier
//! measure, reached well under that on two cores, so decode could show more than 100% of it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// One cache line, so every share starts on a line boundary.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u64; 8]);

const LINE: usize = std::mem::size_of::<Line>();

/// The shortest span timed on its own: long enough that the barriers around it cost little,
/// short enough that many fit in a measurement and the best of them misses the moments when
/// another process had a core (decode rates average over such moments; a bound must not).
const UNIT_SECONDS: f64 = 0.002;

/// Why a measurement could not run (plain strings, mapped to Python errors by `py.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandwidthError(pub String);

/// What one measurement found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// The best timed unit, in GB/s (1e9 bytes per second).
    pub gbs: f64,
    /// Bytes in the buffer actually read (rounded up to whole lines per thread).
    pub bytes: usize,
    /// Passes over the buffer in each timed unit.
    pub passes: usize,
}

/// Streams a `bytes`-sized buffer with `threads` threads for about `seconds`, timing units of
/// whole passes (each at least a couple of milliseconds), and returns the fastest unit.
pub fn read_bandwidth(
    bytes: usize,
    threads: usize,
    seconds: f64,
) -> Result<Bandwidth, BandwidthError> {
    if bytes == 0 || threads == 0 || !(seconds >= 0.0) {
        return Err(BandwidthError(format!(
            "bytes and threads must be positive and seconds not negative (got {bytes}, {threads}, {seconds})"
        )));
    }
    let lines_per_thread = bytes.div_ceil(LINE).div_ceil(threads);
    let total = lines_per_thread * threads;
    let mut buffer: Vec<Line> = Vec::new();
    buffer.try_reserve_exact(total).map_err(|_| {
        BandwidthError(format!(
            "cannot allocate {} MB to measure bandwidth",
            total.saturating_mul(LINE) / 1_000_000
        ))
    })?;
    // Written once, so every page is mapped before the clock starts.
    buffer.resize(total, Line([1; 8]));

    let barrier = SpinBarrier::new(threads);
    let passes = AtomicUsize::new(1);
    let best_ns = AtomicU64::new(u64::MAX);
    let stop = AtomicBool::new(false);
    let sink = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for (index, share) in buffer.chunks(lines_per_thread).enumerate() {
            let (barrier, passes, best_ns, stop, sink) =
                (&barrier, &passes, &best_ns, &stop, &sink);
            scope.spawn(move || {
                let mut sum = 0u64;
                let began = Instant::now();
                // Unit 0 is one untimed pass that sets the passes per unit; the rest are timed.
                for unit in 0usize.. {
                    barrier.wait();
                    let start = Instant::now();
                    let n = if unit == 0 {
                        1
                    } else {
                        passes.load(Ordering::Acquire)
                    };
                    for _ in 0..n {
                        sum = sum.wrapping_add(read_all(share));
                    }
                    barrier.wait();
                    if index == 0 {
                        let elapsed = start.elapsed().as_secs_f64().max(1e-9);
                        if unit == 0 {
                            let wanted = (UNIT_SECONDS / elapsed).ceil().clamp(1.0, 1e6);
                            passes.store(wanted as usize, Ordering::Release);
                        } else {
                            best_ns.fetch_min((elapsed * 1e9 / n as f64) as u64, Ordering::AcqRel);
                            stop.store(began.elapsed().as_secs_f64() >= seconds, Ordering::Release);
                        }
                    }
                    barrier.wait(); // everyone sees thread 0's decision
                    if unit > 0 && stop.load(Ordering::Acquire) {
                        break;
                    }
                }
                sink.fetch_add(sum, Ordering::Relaxed);
            });
        }
    });
    std::hint::black_box(sink.load(Ordering::Relaxed));
    let per_pass = best_ns.load(Ordering::Acquire).max(1) as f64 / 1e9;
    let read = total * LINE;
    Ok(Bandwidth {
        gbs: read as f64 / per_pass / 1e9,
        bytes: read,
        passes: passes.load(Ordering::Acquire),
    })
}

/// A barrier whose waiters spin (then yield), so a timed unit starts within a few hundred
/// nanoseconds on every thread; a sleeping barrier's wake-up would be timed as reading.
struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    threads: usize,
}

impl SpinBarrier {
    fn new(threads: usize) -> Self {
        SpinBarrier {
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            threads,
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
            return;
        }
        crate::kernels::workers::wait_until(|| {
            self.generation.load(Ordering::Acquire) != generation
        });
    }
}

/// Reads every line once and returns a sum of them all (so the loads cannot be skipped).
fn read_all(lines: &[Line]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { avx512::read_all(lines) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { avx2::read_all(lines) };
        }
    }
    portable_read_all(lines)
}

fn portable_read_all(lines: &[Line]) -> u64 {
    let mut acc = [0u64; 8];
    for line in lines {
        for (a, v) in acc.iter_mut().zip(line.0) {
            *a = a.wrapping_add(v);
        }
    }
    acc.iter().fold(0, |s, &v| s.wrapping_add(v))
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Line;
    use crate::kernels::matvec::PREFETCH_AHEAD;
    use std::arch::x86_64::*;

    /// Four independent accumulators, so the adds never wait on each other and only loads limit the speed.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn read_all(lines: &[Line]) -> u64 {
        let mut acc = [_mm512_setzero_si512(); 4];
        let quads = lines.chunks_exact(4);
        let rest = quads.remainder();
        for quad in quads {
            let at = quad.as_ptr() as *const i8;
            _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PREFETCH_AHEAD));
            _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PREFETCH_AHEAD + 128));
            for (a, line) in acc.iter_mut().zip(quad) {
                *a = _mm512_add_epi64(*a, _mm512_load_si512(line.0.as_ptr() as *const __m512i));
            }
        }
        for line in rest {
            acc[0] = _mm512_add_epi64(acc[0], _mm512_load_si512(line.0.as_ptr() as *const __m512i));
        }
        let all = _mm512_add_epi64(
            _mm512_add_epi64(acc[0], acc[1]),
            _mm512_add_epi64(acc[2], acc[3]),
        );
        _mm512_reduce_add_epi64(all) as u64
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Line;
    use crate::kernels::matvec::PREFETCH_AHEAD;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn read_all(lines: &[Line]) -> u64 {
        let mut acc = [_mm256_setzero_si256(); 4];
        for pair in lines.chunks(2) {
            let at = pair.as_ptr() as *const i8;
            _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PREFETCH_AHEAD));
            for (i, line) in pair.iter().enumerate() {
                let p = line.0.as_ptr() as *const __m256i;
                acc[2 * i] = _mm256_add_epi64(acc[2 * i], _mm256_load_si256(p));
                acc[2 * i + 1] = _mm256_add_epi64(acc[2 * i + 1], _mm256_load_si256(p.add(1)));
            }
        }
        let mut out = [0u64; 4];
        let all = _mm256_add_epi64(
            _mm256_add_epi64(acc[0], acc[1]),
            _mm256_add_epi64(acc[2], acc[3]),
        );
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, all);
        out.iter().fold(0, |s, &v| s.wrapping_add(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_kernel_sums_every_word() {
        let lines: Vec<Line> = (0..37u64)
            .map(|i| Line(std::array::from_fn(|j| i * 8 + j as u64)))
            .collect();
        let expected: u64 = (0..37 * 8).sum();
        assert_eq!(portable_read_all(&lines), expected);
        assert_eq!(read_all(&lines), expected);
        for start in 0..4 {
            let part = &lines[start..];
            let want: u64 = (start as u64 * 8..37 * 8).sum();
            assert_eq!(read_all(part), want);
        }
    }

    #[test]
    fn measures_a_positive_rate_over_whole_lines_per_thread() {
        for threads in [1, 3] {
            let found = read_bandwidth(100_000, threads, 0.01).unwrap();
            assert!(found.gbs > 0.0 && found.gbs.is_finite());
            assert_eq!(found.bytes % (threads * LINE), 0);
            assert!(found.bytes >= 100_000 && found.passes >= 1);
        }
        // No time at all still times one unit.
        assert!(read_bandwidth(4096, 2, 0.0).unwrap().gbs > 0.0);
    }

    #[test]
    fn nonsense_sizes_are_errors_not_panics() {
        assert!(read_bandwidth(0, 1, 1.0).is_err());
        assert!(read_bandwidth(64, 0, 1.0).is_err());
        assert!(read_bandwidth(64, 1, -1.0).is_err());
        assert!(read_bandwidth(64, 1, f64::NAN).is_err());
        assert!(read_bandwidth(usize::MAX / 2, 1, 0.0).is_err());
    }
}
