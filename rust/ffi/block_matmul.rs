//! The XLA FFI handler `lljx_block_matmul`: GGUF-format weights times f32 activations, called from compiled JAX programs on CPU.
//!
//! Call shape: x f32 [..., n_in], then one weight per result, each flat uint8: `skip` bytes,
//! then the n_out rows as its GGUF file stores them (blocks, or little-endian f32/f16/bf16
//! values). The int32 array attributes `ggml_types` and `skips` give each weight's ggml type
//! id and skip (a view of a mapped file starts at the 64-byte boundary before its tensor,
//! since XLA adopts host memory only from there). Result i is f32 [..., n_out_i]. All weights share x, so Q, K and V (or gate and up) cost one call and one
//! rounding of the activations per format.
//!
//! With the integer attribute `real_rows` set to 1, an int32 [batch] operand follows x: x is
//! [batch, seq, n_in] right-padded, and sequence b holds `real_rows[b]` real rows. Only those
//! are multiplied; the padding's results are zeros (`kernels::real_rows`).

use crate::ffi::xla::{
    dims, dtype_name, run_handler_with_attributes, Attributes, Buffer, CallFrame, ErrorPtr, F32,
    S32, U8,
};
use crate::kernels::block_matmul::{block_matmul, Output, Path};
use crate::kernels::ggml::{BlockWeight, GgmlType};
use crate::kernels::real_rows::block_matmul_real_rows;
use crate::kernels::workers;

/// The handler XLA calls; registered from Python under the name `lljx_block_matmul` for the CPU platform.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe extern "C" fn lljx_block_matmul(frame: *mut CallFrame) -> ErrorPtr {
    unsafe { run_handler_with_attributes(frame, "lljx_block_matmul", call) }
}

unsafe fn call(args: &[&Buffer], rets: &[&Buffer], attrs: &Attributes) -> Result<(), String> {
    let (x_buf, rest) = args.split_first().ok_or("no input")?;
    let (real_buf, weights) = match attrs.int_scalar("real_rows")? {
        0 => (None, rest),
        1 => {
            let (real, weights) = rest.split_first().ok_or("no real-row counts")?;
            (Some(*real), weights)
        }
        other => return Err(format!("real_rows must be 0 or 1, got {other}")),
    };
    let types = attrs.i32_array("ggml_types")?;
    let skips = attrs.i32_array("skips")?;
    if types.len() != weights.len() || skips.len() != weights.len() || rets.len() != weights.len() {
        return Err(format!(
            "{} weights, {} ggml types, {} skips and {} results; expected one of each per weight",
            weights.len(),
            types.len(),
            skips.len(),
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
    for (i, (((w, &id), &skip), ret)) in weights.iter().zip(types).zip(skips).zip(rets).enumerate()
    {
        let weight =
            unsafe { weight_view(w, id, skip, n_in) }.map_err(|e| format!("weight {i}: {e}"))?;
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
    let Some(real_buf) = real_buf else {
        // SAFETY: every result was checked to hold rows · n_out f32 values.
        return unsafe { block_matmul(x, rows, &views, &outputs, workers::threads(), Path::Fast) };
    };
    let batch = match (lead, dims(real_buf)?.as_slice()) {
        ([batch, _], [counts]) if real_buf.dtype == S32 && counts == batch => *batch,
        _ => {
            return Err(format!(
                "real-row counts must be int32 [batch] for x [batch, seq, n_in]; got {} {:?} for x {x_dims:?}",
                dtype_name(real_buf.dtype),
                dims(real_buf)?
            ))
        }
    };
    let counts = unsafe { std::slice::from_raw_parts(real_buf.data as *const i32, batch) };
    let real: Vec<usize> = counts.iter().map(|&n| n.max(0) as usize).collect();
    // SAFETY: as above.
    unsafe {
        block_matmul_real_rows(
            x,
            lead[1],
            &real,
            &views,
            &outputs,
            workers::threads(),
            Path::Fast,
        )
    }
}

/// A flat uint8 weight buffer as a checked `BlockWeight` of ggml type `id` with `n_in` inputs,
/// its rows starting `skip` bytes in.
///
/// # Safety
/// `w` must be a buffer from XLA's call frame.
pub unsafe fn weight_view(
    w: &Buffer,
    id: i32,
    skip: i32,
    n_in: usize,
) -> Result<BlockWeight<'static>, String> {
    let ty = GgmlType::from_id(id as i64).ok_or_else(|| format!("ggml type {id} has no kernel"))?;
    if w.dtype != U8 {
        return Err(format!("data must be uint8, got {}", dtype_name(w.dtype)));
    }
    let w_dims = dims(w)?;
    let [len] = w_dims[..] else {
        return Err(format!("data must be flat (1-D), got {w_dims:?}"));
    };
    let skip = usize::try_from(skip)
        .ok()
        .filter(|&s| s <= len && s % 4 == 0)
        .ok_or_else(|| format!("skip {skip} must be a multiple of 4 within the {len} bytes"))?;
    let row_bytes = ty.row_bytes(n_in)?;
    let stored = len - skip;
    if row_bytes == 0 || stored % row_bytes != 0 {
        return Err(format!(
            "{} rows of {n_in} inputs are {row_bytes} bytes, which do not divide the {stored} bytes given",
            ty.name()
        ));
    }
    let n_out = stored / row_bytes;
    let data: &'static [u8] = if stored == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts((w.data as *const u8).add(skip), stored) }
    };
    BlockWeight::new(ty, data, n_in, n_out)
}
