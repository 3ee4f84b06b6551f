//! The XLA FFI handler `lljx_attend`: decode attention (one new token per row) over lljx's KV cache,
//! after writing that token's keys and values into it.
//!
//! Call shape: q [batch, heads, d_head] and the new keys [batch, kv_heads, d_head], both before
//! their rotary embedding; the new values [batch, kv_heads, d_head]; the layer's K cache [batch,
//! kv_heads, max_len, d_head] and its V cache transposed [batch, kv_heads, d_head, max_len]; each
//! row's position [batch] (int32); and each row's rotary cos and sin [batch, d_head / 2]. Results:
//! the output [batch, heads, d_head] and both caches, which the caller aliases to the cache
//! arguments so the write is in place. All f32 but the positions and the caches, which are both
//! f32 or both f16 (rounded to nearest on write; the kernel widens each vector as it loads it,
//! reading half the bytes: 8 rows at position 400 attended 30% faster than widening each
//! group's rows into an f32 copy first).
//!
//! A prompt chunk calls it too: q rows [chunk, heads, d_head] at their own positions share one
//! cache row ([1, kv_heads, ...]). Every row's key and value is written first, then each row
//! attends up to its position, so the chunk sees itself causally and never reads the masked
//! rest of its bucket (XLA's prompt attention scored every query against the whole bucket: a
//! 16-token chunk of a 2,048-position prompt took 86 ms of the embedded model, against 22 ms in
//! a 64-position bucket). A row at position -1 is padding (a prompt right-padded to its
//! bucket): it writes nothing and attends to nothing, and its output is zeros; attending up to
//! its padded position made a 2,120-token prompt in a 4,096 bucket cost 3.7 times its own
//! attention.
//!
//! Rotating and writing here rather than in XLA saves XLA ops per layer: two per row for the
//! write (an 8-row step of a 30-layer model ran 480 of them), and the rotations, into each of
//! which XLA fused its own evaluation of the cos and sin tables. Query heads are grouped by the
//! KV head they share (grouped-query attention); groups are spread over the calling thread and
//! lljx's helpers when the cache is large.

use crate::ffi::xla::{dims, dtype_name, run_handler, Buffer, CallFrame, ErrorPtr, F16, F32};
use crate::kernels::attention::{attend_group, attend_group_f16};
use crate::kernels::workers::{self, SharedJob};
use half::f16;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Below this many cache bytes per call one thread does all groups.
const PARALLEL_BYTES: usize = 32 * 1024;

/// The handler XLA calls; registered from Python under the name `lljx_attend` for the CPU platform.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe extern "C" fn lljx_attend(frame: *mut CallFrame) -> ErrorPtr {
    unsafe { run_handler(frame, "lljx_attend", attend_call) }
}

struct Attend {
    q: *const f32,
    cos: *const f32,
    sin: *const f32,
    new_k: *const f32,
    new_v: *const f32,
    k: *mut u8,
    v: *mut u8,
    half: bool,
    out: *mut f32,
    lens: Vec<usize>,
    /// Every q row reads cache row 0 (a prompt chunk), whose keys and values are all written
    /// before any row attends.
    shared: bool,
    kv_heads: usize,
    rep: usize,
    d: usize,
    t_max: usize,
    next: AtomicUsize,
    done: AtomicUsize,
}

// Raw pointers into XLA's buffers, which outlive the call; each group writes its own rows.
unsafe impl Send for Attend {}
unsafe impl Sync for Attend {}

impl Attend {
    fn groups(&self) -> usize {
        self.lens.len() * self.kv_heads
    }

    /// Rotates group g's queries and new key, writes the key and value at its row's position,
    /// then attends over the cache.
    fn run_group(&self, g: usize, work: &mut Scratch) {
        let (b, kvh) = (g / self.kv_heads, g % self.kv_heads);
        let (d, t_max, rep) = (self.d, self.t_max, self.rep);
        let heads = self.kv_heads * rep;
        let q_at = (b * heads + kvh * rep) * d;
        let cache_at = if self.shared { kvh } else { g } * t_max * d;
        if self.lens[b] == 0 {
            // A padding row: nothing written, nothing attended, zeros out.
            // SAFETY: as below.
            unsafe { std::slice::from_raw_parts_mut(self.out.add(q_at), rep * d).fill(0.0) };
            return;
        }
        let (at, len) = (self.lens[b] - 1, self.lens[b]);
        work.queries.resize(rep * d, 0.0);
        work.key.resize(d, 0.0);
        // SAFETY: attend_call checked every shape and position; each group writes only its own
        // cache rows and output rows, and reads only its own.
        unsafe {
            let cos = std::slice::from_raw_parts(self.cos.add(b * d / 2), d / 2);
            let sin = std::slice::from_raw_parts(self.sin.add(b * d / 2), d / 2);
            let new_k = std::slice::from_raw_parts(self.new_k.add(g * d), d);
            let new_v = std::slice::from_raw_parts(self.new_v.add(g * d), d);
            let q = std::slice::from_raw_parts(self.q.add(q_at), rep * d);
            for (head, out) in q.chunks_exact(d).zip(work.queries.chunks_exact_mut(d)) {
                rotate(head, cos, sin, out);
            }
            let out = std::slice::from_raw_parts_mut(self.out.add(q_at), rep * d);
            let write = !self.shared; // a chunk's rows were all written first (`write_shared`)
            if write {
                rotate(new_k, cos, sin, &mut work.key);
            }
            if self.half {
                let (k, v) = self.cache_rows::<f16>(cache_at);
                if write {
                    write_row(k, v, at, t_max, &work.key, new_v, f16::from_f32);
                }
                attend_group_f16(
                    &work.queries,
                    k,
                    v,
                    d,
                    len,
                    out,
                    &mut work.scores,
                    &mut work.widened,
                );
            } else {
                let (k, v) = self.cache_rows::<f32>(cache_at);
                if write {
                    write_row(k, v, at, t_max, &work.key, new_v, |x| x);
                }
                attend_group(&work.queries, k, v, d, len, out, &mut work.scores);
            }
        }
    }
}

impl Attend {
    /// A prompt chunk's keys (rotated) and values, every row's, into the shared cache row.
    fn write_shared(&self) {
        let (d, t_max) = (self.d, self.t_max);
        let mut key = vec![0.0; d];
        for (b, &len) in self.lens.iter().enumerate() {
            if len == 0 {
                continue; // a padding row
            }
            for kvh in 0..self.kv_heads {
                let g = b * self.kv_heads + kvh;
                // SAFETY: as in run_group; no group attends yet.
                unsafe {
                    let cos = std::slice::from_raw_parts(self.cos.add(b * d / 2), d / 2);
                    let sin = std::slice::from_raw_parts(self.sin.add(b * d / 2), d / 2);
                    let new_k = std::slice::from_raw_parts(self.new_k.add(g * d), d);
                    let new_v = std::slice::from_raw_parts(self.new_v.add(g * d), d);
                    rotate(new_k, cos, sin, &mut key);
                    if self.half {
                        let (k, v) = self.cache_rows::<f16>(kvh * t_max * d);
                        write_row(k, v, len - 1, t_max, &key, new_v, f16::from_f32);
                    } else {
                        let (k, v) = self.cache_rows::<f32>(kvh * t_max * d);
                        write_row(k, v, len - 1, t_max, &key, new_v, |x| x);
                    }
                }
            }
        }
    }

    /// Asks for the cache lines group g's new value goes into (a decode step's; a chunk's rows
    /// were all written before any group runs).
    fn prefetch_write(&self, g: usize) {
        let b = g / self.kv_heads;
        if self.shared || self.lens[b] == 0 {
            return;
        }
        let size = self.elem_size();
        prefetch_column(
            self.v,
            (g * self.t_max * self.d + self.lens[b] - 1) * size,
            self.t_max * size,
            self.d,
        );
    }

    /// Bytes per cache element.
    fn elem_size(&self) -> usize {
        if self.half {
            2
        } else {
            4
        }
    }

    /// One group's K [t_max, d] and V [d, t_max], elements of type T, from element `at` on.
    ///
    /// # Safety
    /// T must be the caches' element type and `at` a group's start (attend_call checked both).
    #[allow(clippy::mut_from_ref)]
    unsafe fn cache_rows<T>(&self, at: usize) -> (&mut [T], &mut [T]) {
        let cells = self.t_max * self.d;
        unsafe {
            (
                std::slice::from_raw_parts_mut((self.k as *mut T).add(at), cells),
                std::slice::from_raw_parts_mut((self.v as *mut T).add(at), cells),
            )
        }
    }
}

/// The new key [d] into K's row `at`, and the new value [d] into V's column `at`.
fn write_row<T>(
    k: &mut [T],
    v: &mut [T],
    at: usize,
    t_max: usize,
    key: &[f32],
    value: &[f32],
    cast: impl Fn(f32) -> T,
) {
    let d = key.len();
    for (slot, &x) in k[at * d..(at + 1) * d].iter_mut().zip(key) {
        *slot = cast(x);
    }
    for (c, &x) in value.iter().enumerate() {
        v[c * t_max + at] = cast(x);
    }
}

/// Asks for the `count` cache lines `stride` bytes apart from byte `at` of `base`, to be
/// written: the new value's column of the transposed V cache, one line per element. Written
/// cold, those lines were a store miss each (64 per group); asked for first, an 8-row step of
/// the embedded model took 6-7% less (13.8 → 12.9 ms, 2-core Xeon).
fn prefetch_column(base: *mut u8, at: usize, stride: usize, count: usize) {
    #[cfg(target_arch = "x86_64")]
    for c in 0..count {
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
            _mm_prefetch::<_MM_HINT_ET0>(base.wrapping_add(at + c * stride) as *const i8);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, at, stride, count);
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// One thread's buffers, reused across its groups.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    queries: Vec<f32>,
    key: Vec<f32>,
    widened: (Vec<f32>, Vec<f32>),
}

/// One head's rotary embedding in rotate-half form (`lljx.core.rope.apply_rope`): the first half
/// of x pairs with the second.
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = cos.len();
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for j in 0..half {
        o1[j] = x1[j] * cos[j] - x2[j] * sin[j];
        o2[j] = x2[j] * cos[j] + x1[j] * sin[j];
    }
}

impl SharedJob for Attend {
    fn drain(&self) {
        // The thread's buffers from its last call: allocating and zeroing them per call cost
        // about as much as a group's scores at short contexts.
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            // Each thread claims its next group before running this one and asks for that
            // group's write lines, so they arrive while this one attends: asked for just before
            // the write, the prefetches waited on full fill buffers (1-2% more of an 8-row step).
            let groups = self.groups();
            let mut g = self.next.fetch_add(1, Ordering::Relaxed);
            if g < groups {
                self.prefetch_write(g);
            }
            while g < groups {
                let next = self.next.fetch_add(1, Ordering::Relaxed);
                if next < groups {
                    self.prefetch_write(next);
                }
                self.run_group(g, &mut scratch);
                self.done.fetch_add(1, Ordering::Release);
                g = next;
            }
        })
    }
}

unsafe fn attend_call(args: &[&Buffer], rets: &[&Buffer]) -> Result<(), String> {
    let [q, k_new, v_new, k_in, v_in, pos, cos, sin] = args else {
        return Err(format!(
            "expected 8 arguments (q, new keys, new values, k cache, v cache, positions, cos, sin), got {}",
            args.len()
        ));
    };
    let [out, k, v] = rets else {
        return Err(format!(
            "expected 3 results (output, k cache, v cache), got {}",
            rets.len()
        ));
    };
    for (name, buffer) in [
        ("q", q),
        ("new keys", k_new),
        ("new values", v_new),
        ("cos", cos),
        ("sin", sin),
        ("result", out),
    ] {
        if buffer.dtype != F32 {
            return Err(format!(
                "{name} must be f32, got {}",
                dtype_name(buffer.dtype)
            ));
        }
    }
    let cache_dtype = k_in.dtype;
    if !matches!(cache_dtype, F32 | F16) || [v_in.dtype, k.dtype, v.dtype] != [cache_dtype; 3] {
        return Err(format!(
            "the caches must be both f32 or both f16, got {} and {}",
            dtype_name(k_in.dtype),
            dtype_name(v_in.dtype)
        ));
    }
    let (q_dims, k_dims, v_dims, pos_dims) = (dims(q)?, dims(k_in)?, dims(v_in)?, dims(pos)?);
    let [batch, heads, d] = q_dims[..] else {
        return Err(format!("q must be [batch, heads, d_head], got {q_dims:?}"));
    };
    let [kb, kv_heads, t_max, kd] = k_dims[..] else {
        return Err(format!(
            "k cache must be [batch, kv_heads, max_len, d_head], got {k_dims:?}"
        ));
    };
    // One cache row for several q rows: a prompt chunk.
    let shared = kb == 1 && batch > 1;
    if (kb != batch && !shared) || kd != d || kv_heads == 0 || heads % kv_heads != 0 || d % 2 != 0 {
        return Err(format!("k cache {k_dims:?} does not fit q {q_dims:?}"));
    }
    if v_dims != [kb, kv_heads, d, t_max] {
        return Err(format!(
            "v cache must be {:?}, got {v_dims:?}",
            [kb, kv_heads, d, t_max]
        ));
    }
    for (name, buffer) in [("new keys", k_new), ("new values", v_new)] {
        if dims(buffer)? != [batch, kv_heads, d] {
            return Err(format!(
                "{name} must be {:?}, got {:?}",
                [batch, kv_heads, d],
                dims(buffer)?
            ));
        }
    }
    for (name, buffer) in [("cos", cos), ("sin", sin)] {
        if dims(buffer)? != [batch, d / 2] {
            return Err(format!(
                "{name} must be {:?}, got {:?}",
                [batch, d / 2],
                dims(buffer)?
            ));
        }
    }
    if dims(k)? != k_dims || dims(v)? != v_dims {
        return Err("the cache results must have the caches' shapes".into());
    }
    if pos_dims != [batch] || pos.dtype != crate::ffi::xla::S32 {
        return Err(format!(
            "positions must be int32 [{batch}], got {} {pos_dims:?}",
            dtype_name(pos.dtype)
        ));
    }
    if dims(out)? != q_dims {
        return Err(format!("result must be {q_dims:?}, got {:?}", dims(out)?));
    }
    let positions = unsafe { std::slice::from_raw_parts(pos.data as *const i32, batch) };
    let lens = positions
        .iter()
        .map(|&p| match usize::try_from(p) {
            Ok(p) if p < t_max => Ok(p + 1),
            _ if p == -1 => Ok(0), // a padding row
            _ => Err(format!("position {p} is outside the cache of {t_max}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let half = cache_dtype == F16;
    let bytes = kb * kv_heads * t_max * d * if half { 2 } else { 4 };
    // Aliased results share the arguments' memory; were they not, the results start as copies.
    for (from, to) in [(k_in, k), (v_in, v)] {
        if from.data != to.data {
            unsafe {
                std::ptr::copy_nonoverlapping(from.data as *const u8, to.data as *mut u8, bytes)
            };
        }
    }
    let work = Arc::new(Attend {
        q: q.data as *const f32,
        cos: cos.data as *const f32,
        sin: sin.data as *const f32,
        new_k: k_new.data as *const f32,
        new_v: v_new.data as *const f32,
        k: k.data as *mut u8,
        v: v.data as *mut u8,
        half,
        out: out.data as *mut f32,
        lens,
        shared,
        kv_heads,
        rep: heads / kv_heads,
        d,
        t_max,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    });
    if shared {
        work.write_shared();
    }
    let cache_bytes: usize =
        work.lens.iter().sum::<usize>() * kv_heads * d * if half { 4 } else { 8 };
    if work.groups() > 1 && cache_bytes >= PARALLEL_BYTES {
        workers::share(work.clone());
    }
    work.drain();
    workers::wait_until(|| work.done.load(Ordering::Acquire) >= work.groups());
    Ok(())
}
