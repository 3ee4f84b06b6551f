//! The XLA FFI handler `lljx_columns`: embedding vectors read from the columns of a 16-bit or f32 head.
//!
//! A tied model looks token embeddings up as columns of its [d_model, vocab] head. XLA:CPU
//! gathers from a bf16/f16 table by converting the whole table to f32 first, and in a decode
//! loop it hoists that conversion out of the loop: a 113 MB copy per call for a 49152-token
//! head. This handler reads only the requested columns. Call shape: table [in, out] (f32, bf16
//! or f16), ids int32 [n]; result f32 [n, in]. An id outside the table is an error.

use crate::ffi::xla::{
    dims, dtype_name, run_handler, Buffer, CallFrame, ErrorPtr, BF16, F16, F32, S32,
};

/// The handler XLA calls; registered from Python under the name `lljx_columns` for the CPU platform.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe extern "C" fn lljx_columns(frame: *mut CallFrame) -> ErrorPtr {
    unsafe { run_handler(frame, "lljx_columns", columns_call) }
}

unsafe fn columns_call(args: &[&Buffer], rets: &[&Buffer]) -> Result<(), String> {
    let [table, ids] = args else {
        return Err(format!(
            "expected 2 arguments (table, ids), got {}",
            args.len()
        ));
    };
    let [out] = rets else {
        return Err(format!("expected 1 result, got {}", rets.len()));
    };
    let t_dims = dims(table)?;
    let [n_in, n_out] = t_dims[..] else {
        return Err(format!("table must be 2-D [in, out], got {t_dims:?}"));
    };
    let id_dims = dims(ids)?;
    let [n] = id_dims[..] else {
        return Err(format!("ids must be 1-D, got {id_dims:?}"));
    };
    if ids.dtype != S32 {
        return Err(format!("ids must be int32, got {}", dtype_name(ids.dtype)));
    }
    if out.dtype != F32 || dims(out)? != [n, n_in] {
        return Err(format!(
            "result must be f32 [{n}, {n_in}], got {} {:?}",
            dtype_name(out.dtype),
            dims(out)?
        ));
    }
    let ids = unsafe { std::slice::from_raw_parts(ids.data as *const i32, n) };
    let out = unsafe { std::slice::from_raw_parts_mut(out.data as *mut f32, n * n_in) };
    let cells = n_in * n_out;
    for (row, &id) in out.chunks_exact_mut(n_in.max(1)).zip(ids) {
        let column = usize::try_from(id)
            .ok()
            .filter(|&c| c < n_out)
            .ok_or_else(|| format!("id {id} is outside the table of {n_out}"))?;
        match table.dtype {
            F32 => {
                let t = unsafe { std::slice::from_raw_parts(table.data as *const f32, cells) };
                row.iter_mut()
                    .enumerate()
                    .for_each(|(k, o)| *o = t[k * n_out + column]);
            }
            BF16 => {
                let t = unsafe { std::slice::from_raw_parts(table.data as *const u16, cells) };
                row.iter_mut()
                    .enumerate()
                    .for_each(|(k, o)| *o = half::bf16::from_bits(t[k * n_out + column]).to_f32());
            }
            F16 => {
                let t = unsafe { std::slice::from_raw_parts(table.data as *const u16, cells) };
                row.iter_mut()
                    .enumerate()
                    .for_each(|(k, o)| *o = half::f16::from_bits(t[k * n_out + column]).to_f32());
            }
            other => {
                return Err(format!(
                    "table must be f32, bf16 or f16, got {}",
                    dtype_name(other)
                ))
            }
        }
    }
    Ok(())
}
