//! The XLA FFI handler `lljx_rms_norm`: RMSNorm of every row of x by one weight, each row alone.
//!
//! Call shape: x f32 [..., d], weight f32 [d], attribute `eps` (float); result f32 like x.
//! Rows are independent and summed in one fixed order (`kernels::norm`), so a row gets the
//! same numbers in a batch of any size.

use crate::ffi::xla::{
    dims, dtype_name, run_handler_with_attributes, Attributes, Buffer, CallFrame, ErrorPtr, F32,
};
use crate::kernels::norm::rms_norm_row;

/// The handler XLA calls; registered from Python under the name `lljx_rms_norm` for the CPU platform.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe extern "C" fn lljx_rms_norm(frame: *mut CallFrame) -> ErrorPtr {
    unsafe { run_handler_with_attributes(frame, "lljx_rms_norm", rms_norm_call) }
}

unsafe fn rms_norm_call(
    args: &[&Buffer],
    rets: &[&Buffer],
    attributes: &Attributes,
) -> Result<(), String> {
    let ([x, weight], [out]) = (args, rets) else {
        return Err(format!(
            "expected 2 arguments (x, weight) and 1 result, got {} and {}",
            args.len(),
            rets.len()
        ));
    };
    for (name, buffer) in [("x", x), ("weight", weight), ("result", out)] {
        if buffer.dtype != F32 {
            return Err(format!(
                "{name} must be f32, got {}",
                dtype_name(buffer.dtype)
            ));
        }
    }
    let x_dims = dims(x)?;
    let Some(&d) = x_dims.last() else {
        return Err("x must have at least one axis".into());
    };
    if dims(weight)? != [d] {
        return Err(format!("weight must be [{d}], got {:?}", dims(weight)?));
    }
    if dims(out)? != x_dims {
        return Err(format!("result must be {x_dims:?}, got {:?}", dims(out)?));
    }
    let eps = attributes.float_scalar("eps")?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(format!(
            "eps must be a finite non-negative number, got {eps}"
        ));
    }
    let n = x_dims.iter().product::<usize>();
    if d == 0 || n == 0 {
        return Ok(());
    }
    let x = unsafe { std::slice::from_raw_parts(x.data as *const f32, n) };
    let weight = unsafe { std::slice::from_raw_parts(weight.data as *const f32, d) };
    let out = unsafe { std::slice::from_raw_parts_mut(out.data as *mut f32, n) };
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        rms_norm_row(row, weight, eps, o);
    }
    Ok(())
}
