//! A few helper threads that spin briefly between jobs, yielding to other threads, so a matvec call can be split without a wake-up cost.
//!
//! Decode issues one kernel call every few tens of microseconds; waking a sleeping thread
//! for each would cost as much as the work. Helpers therefore spin for a short while after
//! each job and only then park. The calling thread always works too, so a job completes
//! even if no helper ever runs (e.g. in a forked child, where the helpers do not exist).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Work that any number of threads can take pieces of until none are left.
pub trait SharedJob: Send + Sync {
    fn drain(&self);
}

/// How long an idle helper spins before it parks.
const SPIN: Duration = Duration::from_millis(2);

struct Pool {
    job: Mutex<Option<Arc<dyn SharedJob>>>,
    generation: AtomicU64,
    parked: AtomicUsize,
    wake: Condvar,
    threads: usize,
}

/// Threads a job may use, the caller included: the CPUs this process may run on, capped by
/// `LLJX_MATVEC_THREADS` (unset or 0: no cap).
pub fn threads() -> usize {
    pool().threads
}

/// Lets the helpers take pieces of `job`; the caller should then drain it too and wait for it.
pub fn share(job: Arc<dyn SharedJob>) {
    let pool = pool();
    if pool.threads < 2 {
        return;
    }
    {
        let mut slot = pool.job.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(job);
        pool.generation.fetch_add(1, Ordering::Release);
    }
    if pool.parked.load(Ordering::Acquire) > 0 {
        pool.wake.notify_all();
    }
}

/// Waits for pieces claimed by helpers: a short spin, then yields, since a helper descheduled
/// mid-piece needs a CPU to finish it.
pub fn wait_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins = spins.saturating_add(1);
        if spins < 4096 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cap = std::env::var("LLJX_MATVEC_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(usize::MAX);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            job: Mutex::new(None),
            generation: AtomicU64::new(0),
            parked: AtomicUsize::new(0),
            wake: Condvar::new(),
            threads: cpus.min(cap).max(1),
        }));
        for i in 1..pool.threads {
            // A helper that fails to start only costs speed: the caller drains every job itself.
            let _ = std::thread::Builder::new()
                .name(format!("lljx-matvec-{i}"))
                .spawn(move || helper(pool));
        }
        pool
    })
}

fn helper(pool: &'static Pool) {
    let mut seen = pool.generation.load(Ordering::Acquire);
    loop {
        let since = Instant::now();
        let mut spins = 0u32;
        while pool.generation.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            // Hand the core to any other runnable thread every few microseconds: on two cores
            // the server's event loop, JAX's dispatch thread and XLA's executor share them
            // with this spin. Embedded model, 2-core Xeon, two alternating pairs: decode
            // steps 7-9% faster in-process, `lljx bench serve` 18-20% more tok/s at 1 and 8
            // clients. With nothing else runnable the yield returns at once.
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            }
            if spins.is_multiple_of(1024) && since.elapsed() > SPIN {
                let mut slot = pool.job.lock().unwrap_or_else(|e| e.into_inner());
                pool.parked.fetch_add(1, Ordering::AcqRel);
                while pool.generation.load(Ordering::Acquire) == seen {
                    slot = pool.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                }
                pool.parked.fetch_sub(1, Ordering::AcqRel);
                drop(slot);
                break;
            }
        }
        seen = pool.generation.load(Ordering::Acquire);
        let job = pool.job.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(job) = job {
            // A panicking job must not take the helper down; the caller finishes the pieces.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.drain()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count {
        next: AtomicUsize,
        done: AtomicUsize,
        total: usize,
    }

    impl SharedJob for Count {
        fn drain(&self) {
            while self.next.fetch_add(1, Ordering::Relaxed) < self.total {
                std::thread::sleep(Duration::from_micros(50));
                self.done.fetch_add(1, Ordering::Release);
            }
        }
    }

    #[test]
    fn every_piece_runs_once_across_many_jobs() {
        for _ in 0..200 {
            let job = Arc::new(Count {
                next: AtomicUsize::new(0),
                done: AtomicUsize::new(0),
                total: 8,
            });
            share(job.clone());
            job.drain();
            while job.done.load(Ordering::Acquire) < job.total {
                std::hint::spin_loop();
            }
            assert_eq!(job.done.load(Ordering::Acquire), 8);
        }
        assert!(threads() >= 1);
    }
}
