//! The XLA FFI handler `lljx_block_matmul`: GGUF-format weights times f32 activations, called from compiled JAX programs on CPU.
//!
//! Call shape: x f32 [..., n_in], then one weight per result, each as its GGUF file stores it:
//! uint8 [n_out, bytes per row] for block formats, or f32/f16/bf16 [n_out, n_in]. The int32
//! array attribute `ggml_types` gives each weight's ggml type id. Result i is f32
//! [..., n_out_i]. All weights share x, so Q, K and V (or gate and up) cost one call and one
//! rounding of the activations per format.

use crate::ffi::xla::{
    dims, dtype_name, run_handler_with_attributes, Attributes, Buffer, CallFrame, ErrorPtr, BF16,
    F16, F32, U8,
};
use crate::kernels::block_matmul::{block_matmul, Output, Path};
use crate::kernels::ggml::{BlockWeight, GgmlType};
use crate::kernels::workers;

/// The handler XLA calls; registered from Python under the name `lljx_block_matmul` for the CPU platform.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe extern "C" fn lljx_block_matmul(frame: *mut CallFrame) -> ErrorPtr {
    unsafe { run_handler_with_attributes(frame, "lljx_block_matmul", call) }
}

unsafe fn call(args: &[&Buffer], rets: &[&Buffer], attrs: &Attributes) -> Result<(), String> {
    let (x_buf, weights) = args.split_first().ok_or("no input")?;
    let types = attrs.i32_array("ggml_types")?;
    if types.len() != weights.len() || rets.len() != weights.len() {
        return Err(format!(
            "{} weights, {} ggml types and {} results; expected one of each per weight",
            weights.len(),
            types.len(),
            rets.len()
        ));
    }
    let x_dims = dims(x_buf)?;
    let (&n_in, lead) = x_dims
        .split_last()
        .ok_or("x must have at least one dimension")?;
    if x_buf.dtype != F32 {
        return Err(format!("x must be f32, got {}", dtype_name(x_buf.dtype)));
    }
    let rows: usize = lead.iter().product();
    if rows == 0 {
        return Ok(());
    }
    let mut views = Vec::with_capacity(weights.len());
    let mut outputs = Vec::with_capacity(weights.len());
    for (i, ((w, &id), ret)) in weights.iter().zip(types).zip(rets).enumerate() {
        let weight = unsafe { weight_view(w, id, n_in) }.map_err(|e| format!("weight {i}: {e}"))?;
        let want: Vec<usize> = lead.iter().copied().chain([weight.n_out]).collect();
        if ret.dtype != F32 || dims(ret)? != want {
            return Err(format!(
                "result {i} must be f32 {want:?}, got {} {:?}",
                dtype_name(ret.dtype),
                dims(ret)?
            ));
        }
        views.push(weight);
        outputs.push(Output(ret.data as *mut f32));
    }
    let x = unsafe { std::slice::from_raw_parts(x_buf.data as *const f32, rows * n_in) };
    // SAFETY: every result was checked to hold rows · n_out f32 values.
    unsafe { block_matmul(x, rows, &views, &outputs, workers::threads(), Path::Fast) }
}

/// A weight buffer as a checked `BlockWeight` of ggml type `id` with `n_in` inputs.
///
/// # Safety
/// `w` must be a buffer from XLA's call frame.
pub unsafe fn weight_view(
    w: &Buffer,
    id: i32,
    n_in: usize,
) -> Result<BlockWeight<'static>, String> {
    let ty = GgmlType::from_id(id as i64).ok_or_else(|| format!("ggml type {id} has no kernel"))?;
    let w_dims = dims(w)?;
    let [n_out, width] = w_dims[..] else {
        return Err(format!("must be 2-D [out, in or bytes], got {w_dims:?}"));
    };
    let want_dtype = match ty {
        GgmlType::F32 => F32,
        GgmlType::F16 => F16,
        GgmlType::Bf16 => BF16,
        _ => U8,
    };
    if w.dtype != want_dtype {
        return Err(format!(
            "{} data must be {}, got {}",
            ty.name(),
            dtype_name(want_dtype),
            dtype_name(w.dtype)
        ));
    }
    let row_bytes = ty.row_bytes(n_in)?;
    let elem = if ty.is_float() { ty.block_bytes() } else { 1 };
    if width * elem != row_bytes {
        return Err(format!(
            "{} rows of {n_in} inputs are {} wide, got [{n_out}, {width}]",
            ty.name(),
            row_bytes / elem
        ));
    }
    let len = n_out
        .checked_mul(row_bytes)
        .ok_or("weight size overflows")?;
    let data: &'static [u8] = if len == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(w.data as *const u8, len) }
    };
    BlockWeight::new(ty, data, n_in, n_out)
}
