//! The XLA FFI handler `lljx_argmax`: greedy sampling's index of the largest logit, per row.
//!
//! XLA:CPU's argmax is a paired (value, index) reduction that takes about 0.2 ms over a
//! 49152-token vocabulary, 2% of a decode step; two plain passes here take a few microseconds.
//! Semantics follow `jnp.argmax`: the first index of the maximum, and a NaN counts as the
//! maximum (the first NaN wins). Call shape: logits f32 [rows, n] -> int32 [rows].

use crate::ffi::xla::{dims, dtype_name, run_handler, Buffer, CallFrame, ErrorPtr, F32, S32};

/// The handler XLA calls; registered from Python under the name `lljx_argmax` for the CPU platform.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe extern "C" fn lljx_argmax(frame: *mut CallFrame) -> ErrorPtr {
    unsafe { run_handler(frame, "lljx_argmax", argmax_call) }
}

/// The first index of the largest value; the first NaN if there is one; 0 for an empty row.
pub fn argmax(values: &[f32]) -> usize {
    if let Some(nan) = values.iter().position(|v| v.is_nan()) {
        return nan;
    }
    // Sixteen running maxima so the pass vectorises; no NaN is left to order.
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    let top = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    values.iter().position(|&v| v == top).unwrap_or(0)
}

unsafe fn argmax_call(args: &[&Buffer], rets: &[&Buffer]) -> Result<(), String> {
    let ([logits], [out]) = (args, rets) else {
        return Err(format!(
            "expected 1 argument and 1 result, got {} and {}",
            args.len(),
            rets.len()
        ));
    };
    let l_dims = dims(logits)?;
    let [rows, n] = l_dims[..] else {
        return Err(format!("logits must be 2-D [rows, vocab], got {l_dims:?}"));
    };
    if logits.dtype != F32 {
        return Err(format!(
            "logits must be f32, got {}",
            dtype_name(logits.dtype)
        ));
    }
    if out.dtype != S32 || dims(out)? != [rows] {
        return Err(format!("result must be int32 [{rows}]"));
    }
    if n > i32::MAX as usize {
        return Err(format!("{n} logits per row do not fit int32 indices"));
    }
    let values = unsafe { std::slice::from_raw_parts(logits.data as *const f32, rows * n) };
    let out = unsafe { std::slice::from_raw_parts_mut(out.data as *mut i32, rows) };
    for (o, row) in out.iter_mut().zip(values.chunks_exact(n.max(1))) {
        *o = argmax(row) as i32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn first_maximum_and_first_nan_win() {
        let mut v: Vec<f32> = (0..100).map(|i| ((i * 37) % 101) as f32).collect();
        let top = v.iter().cloned().fold(f32::MIN, f32::max);
        assert_eq!(argmax(&v), v.iter().position(|&x| x == top).unwrap());
        v[90] = 1e9;
        v[95] = 1e9;
        assert_eq!(argmax(&v), 90);
        v[40] = f32::NAN;
        v[7] = f32::NAN;
        assert_eq!(argmax(&v), 7);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 5]), 0);
        assert_eq!(argmax(&[-3.0, f32::INFINITY, f32::INFINITY]), 1);
        assert_eq!(argmax(&[]), 0);
    }
}
