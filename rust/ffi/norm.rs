//! The XLA FFI handler `lljx_rms_norm`: RMSNorm of each row with `kernels::norm`, whose result
//! does not depend on the rows beside it (batched decoding relies on that).
//!
//! Call shape: x f32 [rows, d], weight f32 [d], eps f32 [] -> f32 [rows, d].

use crate::ffi::xla::{dims, dtype_name, run_handler, Buffer, CallFrame, ErrorPtr, F32};
use crate::kernels::norm::rms_norm_row;

/// The handler XLA calls; registered from Python under the name `lljx_rms_norm` for the CPU platform.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe extern "C" fn lljx_rms_norm(frame: *mut CallFrame) -> ErrorPtr {
    unsafe { run_handler(frame, "lljx_rms_norm", norm_call) }
}

unsafe fn norm_call(args: &[&Buffer], rets: &[&Buffer]) -> Result<(), String> {
    let ([x, weight, eps], [out]) = (args, rets) else {
        return Err(format!(
            "expected 3 arguments (x, weight, eps) and 1 result, got {} and {}",
            args.len(),
            rets.len()
        ));
    };
    for (name, buffer) in [("x", x), ("weight", weight), ("eps", eps), ("result", out)] {
        if buffer.dtype != F32 {
            return Err(format!("{name} must be f32, got {}", dtype_name(buffer.dtype)));
        }
    }
    let x_dims = dims(x)?;
    let [rows, d] = x_dims[..] else {
        return Err(format!("x must be 2-D [rows, d], got {x_dims:?}"));
    };
    if dims(weight)? != [d] || !dims(eps)?.is_empty() || dims(out)? != x_dims {
        return Err(format!("weight must be [{d}], eps a scalar and the result {x_dims:?}"));
    }
    if rows == 0 || d == 0 {
        return Ok(());
    }
    let xs = unsafe { std::slice::from_raw_parts(x.data as *const f32, rows * d) };
    let w = unsafe { std::slice::from_raw_parts(weight.data as *const f32, d) };
    let eps = unsafe { *(eps.data as *const f32) };
    let ys = unsafe { std::slice::from_raw_parts_mut(out.data as *mut f32, rows * d) };
    for (row, y) in xs.chunks_exact(d).zip(ys.chunks_exact_mut(d)) {
        rms_norm_row(row, w, eps, y);
    }
    Ok(())
}
