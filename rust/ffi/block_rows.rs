//! The XLA FFI handler `lljx_block_rows`: rows of a GGUF-format table dequantized to f32 (embedding lookups).
//!
//! Call shape: the table as flat uint8 (`skip` bytes, then its rows as its GGUF file stores
//! them), then ids int32 of any shape; the integer attributes `ggml_type` and `skip` give the
//! table's ggml type id and where its rows start. The result is f32 [*ids.shape, n_in], each row bit-equal to the
//! `gguf` package's dequantization of that row. An id outside the table is an error.

use crate::ffi::block_matmul::weight_view;
use crate::ffi::xla::{
    dims, dtype_name, run_handler_with_attributes, Attributes, Buffer, CallFrame, ErrorPtr, F32,
    S32,
};
use crate::kernels::blocks::dequantize_row;

/// The handler XLA calls; registered from Python under the name `lljx_block_rows` for the CPU platform.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe extern "C" fn lljx_block_rows(frame: *mut CallFrame) -> ErrorPtr {
    unsafe { run_handler_with_attributes(frame, "lljx_block_rows", call) }
}

unsafe fn call(args: &[&Buffer], rets: &[&Buffer], attrs: &Attributes) -> Result<(), String> {
    let [table, ids] = args else {
        return Err(format!(
            "expected 2 arguments (table, ids), got {}",
            args.len()
        ));
    };
    let [out] = rets else {
        return Err(format!("expected 1 result, got {}", rets.len()));
    };
    let id = attrs.int_scalar("ggml_type")?;
    let id = i32::try_from(id).map_err(|_| format!("ggml type {id} has no kernel"))?;
    if ids.dtype != S32 {
        return Err(format!("ids must be int32, got {}", dtype_name(ids.dtype)));
    }
    let id_dims = dims(ids)?;
    let out_dims = dims(out)?;
    let (&n_in, lead) = out_dims
        .split_last()
        .ok_or("result must have at least one dimension")?;
    if out.dtype != F32 || lead != id_dims {
        return Err(format!(
            "result must be f32 [*ids.shape, n_in] with ids {id_dims:?}, got {} {out_dims:?}",
            dtype_name(out.dtype)
        ));
    }
    let skip = attrs.int_scalar("skip")?;
    let skip = i32::try_from(skip).map_err(|_| format!("skip {skip} is out of range"))?;
    let table = unsafe { weight_view(table, id, skip, n_in) }.map_err(|e| format!("table: {e}"))?;
    let n: usize = id_dims.iter().product();
    if n == 0 {
        return Ok(());
    }
    let ids = unsafe { std::slice::from_raw_parts(ids.data as *const i32, n) };
    let out = unsafe { std::slice::from_raw_parts_mut(out.data as *mut f32, n * n_in) };
    for (row, &id) in out.chunks_exact_mut(n_in).zip(ids) {
        let i = usize::try_from(id)
            .ok()
            .filter(|&i| i < table.n_out)
            .ok_or_else(|| format!("id {id} is outside the table of {} rows", table.n_out))?;
        dequantize_row(table.ty, table.row(i), row);
    }
    Ok(())
}
