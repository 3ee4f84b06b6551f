//! The XLA FFI handler `lljx_attend`: decode attention (one new token per row) over lljx's KV cache,
//! after writing that token's keys and values into it.
//!
//! Call shape: q [batch, heads, d_head], the new keys and values [batch, kv_heads, d_head], the
//! layer's K cache [batch, kv_heads, max_len, d_head], its V cache transposed [batch, kv_heads,
//! d_head, max_len], and each row's position [batch] (int32). Results: the output [batch, heads,
//! d_head] and both caches, which the caller aliases to the cache arguments so the write is in
//! place. All f32. Writing here rather than in XLA saves two ops per row per layer (an 8-row
//! step of a 30-layer model ran 480 of them). Query heads are grouped by the KV head they share
//! (grouped-query attention); groups are spread over the calling thread and lljx's helpers when
//! the cache is large.

use crate::ffi::xla::{dims, dtype_name, run_handler, Buffer, CallFrame, ErrorPtr, F32};
use crate::kernels::attention::attend_group;
use crate::kernels::workers::{self, SharedJob};
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
    k: *const f32,
    v: *const f32,
    out: *mut f32,
    lens: Vec<usize>,
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

    fn run_group(&self, g: usize, scratch: &mut Vec<f32>) {
        let (b, kvh) = (g / self.kv_heads, g % self.kv_heads);
        let (d, t_max, rep) = (self.d, self.t_max, self.rep);
        let heads = self.kv_heads * rep;
        let q_at = (b * heads + kvh * rep) * d;
        let cache_at = (b * self.kv_heads + kvh) * t_max * d;
        // SAFETY: attend_call checked every shape; groups cover disjoint output rows.
        unsafe {
            let q = std::slice::from_raw_parts(self.q.add(q_at), rep * d);
            let k = std::slice::from_raw_parts(self.k.add(cache_at), t_max * d);
            let v = std::slice::from_raw_parts(self.v.add(cache_at), d * t_max);
            let out = std::slice::from_raw_parts_mut(self.out.add(q_at), rep * d);
            attend_group(q, k, v, d, self.lens[b], out, scratch);
        }
    }
}

impl SharedJob for Attend {
    fn drain(&self) {
        let mut scratch = Vec::new();
        loop {
            let g = self.next.fetch_add(1, Ordering::Relaxed);
            if g >= self.groups() {
                return;
            }
            self.run_group(g, &mut scratch);
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

unsafe fn attend_call(args: &[&Buffer], rets: &[&Buffer]) -> Result<(), String> {
    let [q, k_new, v_new, k_in, v_in, pos] = args else {
        return Err(format!(
            "expected 6 arguments (q, new keys, new values, k cache, v cache, positions), got {}",
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
        ("k cache", k_in),
        ("v cache", v_in),
        ("result", out),
        ("k cache result", k),
        ("v cache result", v),
    ] {
        if buffer.dtype != F32 {
            return Err(format!(
                "{name} must be f32, got {}",
                dtype_name(buffer.dtype)
            ));
        }
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
    if kb != batch || kd != d || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(format!("k cache {k_dims:?} does not fit q {q_dims:?}"));
    }
    if v_dims != [batch, kv_heads, d, t_max] {
        return Err(format!(
            "v cache must be {:?}, got {v_dims:?}",
            [batch, kv_heads, d, t_max]
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
            _ => Err(format!("position {p} is outside the cache of {t_max}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cells = batch * kv_heads * t_max * d;
    // Aliased results share the arguments' memory; were they not, the results start as copies.
    for (from, to) in [(k_in, k), (v_in, v)] {
        if from.data != to.data {
            unsafe {
                std::ptr::copy_nonoverlapping(from.data as *const f32, to.data as *mut f32, cells)
            };
        }
    }
    let (k_cache, v_cache) = unsafe {
        (
            std::slice::from_raw_parts_mut(k.data as *mut f32, cells),
            std::slice::from_raw_parts_mut(v.data as *mut f32, cells),
        )
    };
    let rows = batch * kv_heads;
    let new_k = unsafe { std::slice::from_raw_parts(k_new.data as *const f32, rows * d) };
    let new_v = unsafe { std::slice::from_raw_parts(v_new.data as *const f32, rows * d) };
    for row in 0..rows {
        let at = lens[row / kv_heads] - 1;
        let head = row * t_max * d;
        k_cache[head + at * d..head + (at + 1) * d].copy_from_slice(&new_k[row * d..(row + 1) * d]);
        for (c, &value) in new_v[row * d..(row + 1) * d].iter().enumerate() {
            v_cache[head + c * t_max + at] = value;
        }
    }
    let work = Arc::new(Attend {
        q: q.data as *const f32,
        k: k.data as *const f32,
        v: v.data as *const f32,
        out: out.data as *mut f32,
        lens,
        kv_heads,
        rep: heads / kv_heads,
        d,
        t_max,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    });
    let cache_bytes: usize = work.lens.iter().sum::<usize>() * kv_heads * d * 8;
    if work.groups() > 1 && cache_bytes >= PARALLEL_BYTES {
        workers::share(work.clone());
    }
    work.drain();
    workers::wait_until(|| work.done.load(Ordering::Acquire) >= work.groups());
    Ok(())
}
