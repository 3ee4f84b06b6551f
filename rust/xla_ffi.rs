//! The XLA FFI handler `lljx_matvec`: the matvec kernel called from compiled JAX programs on CPU.
//!
//! XLA's FFI is a C ABI (xla/ffi/api/c_api.h, API version 0.3). Only the structs this
//! handler reads are mirrored here. Every argument is checked before any pointer is read;
//! problems become XLA errors (raised in Python), never panics across the boundary.
//!
//! Call shape: one input x [..., in] (f32, bf16 or f16), then one weight per output: a float
//! matrix [in, out] (f32, bf16 or f16), or an int8 [in, out] matrix followed by its f32
//! scales [in / 32, out]. Output i is [..., out_i] in f32, bf16 or f16. All outputs share x,
//! so Q, K and V (or gate and up) cost one call. Each product is split into row ranges that
//! the calling thread and lljx's spinning helpers (`workers`) claim from a shared counter;
//! the partial outputs of a split product are summed once every range is done.

use crate::matvec::{matvec_rows, Elements, Matrix, Q8_BLOCK};
use crate::workers::{self, SharedJob};
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

// ---- C ABI mirror (names follow c_api.h) ----

#[repr(C)]
pub struct ExtensionBase {
    struct_size: usize,
    kind: i32,
    next: *mut ExtensionBase,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ApiVersion {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    major: i32,
    minor: i32,
}

type ErrorPtr = *mut c_void;

#[repr(C)]
struct ErrorCreateArgs {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    message: *const c_char,
    errc: i32,
}

/// The start of XLA_FFI_Api: the handler only creates errors, the first function in the table.
#[repr(C)]
pub struct Api {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    api_version: ApiVersion,
    internal_api: *const c_void,
    error_create: Option<unsafe extern "C" fn(*mut ErrorCreateArgs) -> ErrorPtr>,
}

#[repr(C)]
struct Buffer {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    dtype: i32,
    data: *mut c_void,
    rank: i64,
    dims: *const i64,
}

#[repr(C)]
struct List {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    size: i64,
    types: *const i32,
    items: *const *mut c_void,
}

#[repr(C)]
struct Attrs {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    size: i64,
    types: *const i32,
    names: *const *mut c_void,
    attrs: *const *mut c_void,
}

#[repr(C)]
pub struct CallFrame {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    api: *const Api,
    ctx: *mut c_void,
    stage: i32,
    args: List,
    rets: List,
    attrs: Attrs,
    future: *mut c_void,
}

#[repr(C)]
struct Metadata {
    struct_size: usize,
    api_version: ApiVersion,
    traits: u32,
    state_type_id: i64,
}

#[repr(C)]
struct MetadataExtension {
    extension_base: ExtensionBase,
    metadata: *mut Metadata,
}

// c_api.h sizes a struct up to the end of its last field (no tail padding).
const API_VERSION_SIZE: usize = std::mem::offset_of!(ApiVersion, minor) + 4;
const ERROR_CREATE_ARGS_SIZE: usize = std::mem::offset_of!(ErrorCreateArgs, errc) + 4;
// c_api.h sizes the call frame up to `attrs`; `future` is not read here.
const CALL_FRAME_SIZE: usize = std::mem::offset_of!(CallFrame, future);

const EXTENSION_METADATA: i32 = 1;
const STAGE_EXECUTE: i32 = 3;
const ARG_BUFFER: i32 = 1;
const ERRC_INVALID_ARGUMENT: i32 = 3;
const ERRC_INTERNAL: i32 = 13;
const FFI_MAJOR: i32 = 0;
const FFI_MINOR: i32 = 3;

const S8: i32 = 2;
const F16: i32 = 10;
const F32: i32 = 11;
const BF16: i32 = 16;

// ---- the handler ----

/// The handler XLA calls; registered from Python under the name `lljx_matvec` for the CPU platform.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe extern "C" fn lljx_matvec(frame: *mut CallFrame) -> ErrorPtr {
    let result = std::panic::catch_unwind(|| unsafe { handle(frame) });
    match result {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(message)) => unsafe { error(frame, ERRC_INVALID_ARGUMENT, &message) },
        Err(_) => unsafe { error(frame, ERRC_INTERNAL, "lljx_matvec: internal error") },
    }
}

unsafe fn error(frame: *mut CallFrame, errc: i32, message: &str) -> ErrorPtr {
    let api = unsafe { &*(*frame).api };
    let Some(create) = api.error_create else {
        return std::ptr::null_mut();
    };
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let mut args = ErrorCreateArgs {
        struct_size: ERROR_CREATE_ARGS_SIZE,
        extension_start: std::ptr::null_mut(),
        message: text.as_ptr(),
        errc,
    };
    // XLA copies the message, so `text` may be dropped afterwards.
    unsafe { create(&mut args) }
}

unsafe fn handle(frame: *mut CallFrame) -> Result<(), String> {
    if frame.is_null() {
        return Err("lljx_matvec: no call frame".into());
    }
    let frame = unsafe { &*frame };
    if frame.struct_size < CALL_FRAME_SIZE {
        return Err(format!(
            "lljx_matvec: call frame of {} bytes, expected {CALL_FRAME_SIZE}",
            frame.struct_size
        ));
    }
    let extension = frame.extension_start;
    if !extension.is_null() && unsafe { (*extension).kind } == EXTENSION_METADATA {
        let metadata = unsafe { &mut *(*(extension as *mut MetadataExtension)).metadata };
        metadata.api_version = ApiVersion {
            struct_size: API_VERSION_SIZE,
            extension_start: std::ptr::null_mut(),
            major: FFI_MAJOR,
            minor: FFI_MINOR,
        };
        metadata.traits = 0;
        // Older runtimes size the metadata up to `traits`; the state type id is optional.
        if metadata.struct_size >= std::mem::size_of::<Metadata>() {
            metadata.state_type_id = 0;
        }
        return Ok(());
    }
    if frame.stage != STAGE_EXECUTE {
        return Ok(());
    }
    let args = unsafe { buffers(&frame.args, "argument")? };
    let rets = unsafe { buffers(&frame.rets, "result")? };
    let call = unsafe { Call::parse(&args, &rets)? };
    call.run(workers::threads());
    Ok(())
}

unsafe fn buffers<'a>(list: &'a List, what: &str) -> Result<Vec<&'a Buffer>, String> {
    let size =
        usize::try_from(list.size).map_err(|_| format!("lljx_matvec: negative {what} count"))?;
    (0..size)
        .map(|i| {
            let kind = unsafe { *list.types.add(i) };
            if kind != ARG_BUFFER {
                return Err(format!("lljx_matvec: {what} {i} is not a buffer"));
            }
            Ok(unsafe { &*(*list.items.add(i) as *const Buffer) })
        })
        .collect()
}

fn dims(buffer: &Buffer) -> Result<Vec<usize>, String> {
    let rank =
        usize::try_from(buffer.rank).map_err(|_| "lljx_matvec: negative rank".to_string())?;
    (0..rank)
        .map(|i| {
            usize::try_from(unsafe { *buffer.dims.add(i) })
                .map_err(|_| "lljx_matvec: negative dimension".to_string())
        })
        .collect()
}

fn dtype_name(dtype: i32) -> String {
    match dtype {
        S8 => "int8".into(),
        F16 => "f16".into(),
        F32 => "f32".into(),
        BF16 => "bf16".into(),
        other => format!("XLA type {other}"),
    }
}

/// One weight and the output it fills.
struct Product {
    matrix: Matrix<'static>,
    out: *mut c_void,
    out_dtype: i32,
}

/// A validated call: x as f32 rows, and each weight with its output.
struct Call {
    x: Vec<f32>,
    rows: usize,
    products: Vec<Product>,
}

// Raw pointers into XLA's buffers, which outlive the call; chunks write disjoint output ranges.
unsafe impl Send for Call {}
unsafe impl Sync for Call {}

impl Call {
    unsafe fn parse(args: &[&Buffer], rets: &[&Buffer]) -> Result<Call, String> {
        let (x_buf, weights) = args.split_first().ok_or("lljx_matvec: no input")?;
        let x_dims = dims(x_buf)?;
        let (&n_in, lead) = x_dims
            .split_last()
            .ok_or("lljx_matvec: input must have at least one dimension")?;
        let rows: usize = lead.iter().product();
        let count = rows * n_in;
        let x: Vec<f32> = match x_buf.dtype {
            F32 => unsafe { std::slice::from_raw_parts(x_buf.data as *const f32, count) }.to_vec(),
            BF16 => unsafe { std::slice::from_raw_parts(x_buf.data as *const u16, count) }
                .iter()
                .map(|&b| half::bf16::from_bits(b).to_f32())
                .collect(),
            F16 => unsafe { std::slice::from_raw_parts(x_buf.data as *const u16, count) }
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect(),
            other => {
                return Err(format!(
                    "lljx_matvec: input must be f32, bf16 or f16, got {}",
                    dtype_name(other)
                ))
            }
        };
        let mut products = Vec::with_capacity(rets.len());
        let mut next = 0;
        for (i, ret) in rets.iter().enumerate() {
            let w = weights
                .get(next)
                .ok_or_else(|| format!("lljx_matvec: no weight for result {i}"))?;
            next += 1;
            let w_dims = dims(w)?;
            let [w_in, w_out] = w_dims[..] else {
                return Err(format!(
                    "lljx_matvec: weight {i} must be 2-D [in, out], got {w_dims:?}"
                ));
            };
            if w_in != n_in {
                return Err(format!(
                    "lljx_matvec: weight {i} has {w_in} inputs, x has {n_in}"
                ));
            }
            let cells = w_in * w_out;
            let elements = match w.dtype {
                F32 => Elements::F32(unsafe {
                    std::slice::from_raw_parts(w.data as *const f32, cells)
                }),
                BF16 => Elements::Bf16(unsafe {
                    std::slice::from_raw_parts(w.data as *const u16, cells)
                }),
                F16 => Elements::F16(unsafe {
                    std::slice::from_raw_parts(w.data as *const u16, cells)
                }),
                S8 => {
                    let s = weights
                        .get(next)
                        .ok_or_else(|| format!("lljx_matvec: int8 weight {i} has no scales"))?;
                    next += 1;
                    let s_dims = dims(s)?;
                    if s.dtype != F32 || s_dims != [w_in / Q8_BLOCK, w_out] {
                        return Err(format!(
                            "lljx_matvec: int8 weight {i} [{w_in}, {w_out}] needs f32 scales [{}, {w_out}], got {} {s_dims:?}",
                            w_in / Q8_BLOCK,
                            dtype_name(s.dtype)
                        ));
                    }
                    let values = unsafe { std::slice::from_raw_parts(w.data as *const i8, cells) };
                    let scales = unsafe {
                        std::slice::from_raw_parts(s.data as *const f32, s_dims[0] * w_out)
                    };
                    Elements::Q8 { values, scales }
                }
                other => {
                    return Err(format!(
                        "lljx_matvec: weight {i} has unsupported type {}",
                        dtype_name(other)
                    ))
                }
            };
            let matrix = Matrix::new(elements, w_in, w_out)
                .map_err(|e| format!("lljx_matvec: weight {i}: {e}"))?;
            let r_dims = dims(ret)?;
            let want: Vec<usize> = lead.iter().copied().chain([w_out]).collect();
            if r_dims != want {
                return Err(format!(
                    "lljx_matvec: result {i} is {r_dims:?}, expected {want:?}"
                ));
            }
            if !matches!(ret.dtype, F32 | BF16 | F16) {
                return Err(format!(
                    "lljx_matvec: result {i} must be f32, bf16 or f16, got {}",
                    dtype_name(ret.dtype)
                ));
            }
            products.push(Product {
                matrix,
                out: ret.data,
                out_dtype: ret.dtype,
            });
        }
        if next != weights.len() {
            return Err(format!(
                "lljx_matvec: {} weights for {} results",
                weights.len(),
                rets.len()
            ));
        }
        Ok(Call { x, rows, products })
    }

    /// Row ranges sized so that each thread gets about four, whole int8 blocks each.
    fn chunks(&self, threads: usize) -> Vec<Chunk> {
        let total: usize = self
            .products
            .iter()
            .map(|p| p.matrix.bytes())
            .sum::<usize>()
            * self.rows;
        let target = (total / (threads * 4)).max(MIN_CHUNK_BYTES);
        let mut chunks = Vec::new();
        for (product, p) in self.products.iter().enumerate() {
            let n_in = p.matrix.rows();
            let align = p.matrix.row_alignment();
            let pieces = (p.matrix.bytes() / target).clamp(1, (n_in / align).max(1));
            let step = n_in.div_ceil(pieces).div_ceil(align) * align;
            for row in 0..self.rows {
                let first = chunks.len();
                let mut start = 0;
                while start < n_in {
                    let end = (start + step).min(n_in);
                    chunks.push(Chunk {
                        product,
                        row,
                        rows: start..end,
                        first_of_group: first,
                    });
                    start = end;
                }
            }
        }
        chunks
    }
}

/// Below this many bytes a product is not split further.
const MIN_CHUNK_BYTES: usize = 128 * 1024;

struct Chunk {
    product: usize,
    row: usize,
    rows: std::ops::Range<usize>,
    /// Index of the group's first chunk: chunks of one (product, row) are consecutive.
    first_of_group: usize,
}

/// Shared by the calling thread and the helpers; a helper that comes late finds nothing left to claim.
struct Work {
    call: Call,
    chunks: Vec<Chunk>,
    /// One output-sized slot per chunk, written only by the thread that claimed that chunk.
    partial_offsets: Vec<usize>,
    partials: *mut f32,
    partials_owner: Vec<f32>,
    next: AtomicUsize,
    done: AtomicUsize,
}

unsafe impl Send for Work {}
unsafe impl Sync for Work {}

impl Work {
    fn new(call: Call, threads: usize) -> Work {
        let chunks = call.chunks(threads);
        let mut partial_offsets = Vec::with_capacity(chunks.len());
        let mut size = 0;
        for chunk in &chunks {
            partial_offsets.push(size);
            size += call.products[chunk.product].matrix.cols();
        }
        let mut partials_owner = vec![0.0f32; size];
        let partials = partials_owner.as_mut_ptr();
        Work {
            call,
            chunks,
            partial_offsets,
            partials,
            partials_owner,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        }
    }

    fn drain(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(chunk) = self.chunks.get(i) else {
                return;
            };
            let p = &self.call.products[chunk.product];
            let n_in = p.matrix.rows();
            let x = &self.call.x[chunk.row * n_in..(chunk.row + 1) * n_in];
            // SAFETY: each chunk owns its own slot of the partials buffer.
            let y = unsafe {
                std::slice::from_raw_parts_mut(
                    self.partials.add(self.partial_offsets[i]),
                    p.matrix.cols(),
                )
            };
            matvec_rows(&p.matrix, x, chunk.rows.clone(), y);
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    /// Sums each (product, row) group's partial outputs into XLA's result buffer at its dtype.
    fn reduce(&self) {
        let _ = &self.partials_owner;
        let mut i = 0;
        while i < self.chunks.len() {
            let chunk = &self.chunks[i];
            let mut end = i + 1;
            while end < self.chunks.len() && self.chunks[end].first_of_group == chunk.first_of_group
            {
                end += 1;
            }
            let p = &self.call.products[chunk.product];
            let cols = p.matrix.cols();
            let slot = |j: usize| unsafe {
                std::slice::from_raw_parts(self.partials.add(self.partial_offsets[j]), cols)
            };
            let mut sum = slot(i).to_vec();
            for j in i + 1..end {
                sum.iter_mut().zip(slot(j)).for_each(|(a, b)| *a += b);
            }
            let offset = chunk.row * cols;
            // SAFETY: parse() checked every result's shape; groups write disjoint rows.
            unsafe {
                match p.out_dtype {
                    F32 => std::slice::from_raw_parts_mut((p.out as *mut f32).add(offset), cols)
                        .copy_from_slice(&sum),
                    BF16 => std::slice::from_raw_parts_mut((p.out as *mut u16).add(offset), cols)
                        .iter_mut()
                        .zip(&sum)
                        .for_each(|(o, v)| *o = half::bf16::from_f32(*v).to_bits()),
                    _ => std::slice::from_raw_parts_mut((p.out as *mut u16).add(offset), cols)
                        .iter_mut()
                        .zip(&sum)
                        .for_each(|(o, v)| *o = half::f16::from_f32(*v).to_bits()),
                }
            }
            i = end;
        }
    }
}

impl SharedJob for Work {
    fn drain(&self) {
        Work::drain(self)
    }
}

impl Call {
    fn run(self, threads: usize) {
        let work = Arc::new(Work::new(self, threads));
        if threads > 1 && work.chunks.len() > 1 {
            workers::share(work.clone());
        }
        work.drain();
        // Chunks claimed by helpers may still be running; their partials must land first.
        while work.done.load(Ordering::Acquire) < work.chunks.len() {
            std::hint::spin_loop();
        }
        work.reduce();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Offsets from c_api.h on 64-bit targets, so a drifted mirror fails here, not inside XLA.
    #[test]
    fn abi_layout_matches_c_api() {
        assert_eq!(API_VERSION_SIZE, 24);
        assert_eq!(ERROR_CREATE_ARGS_SIZE, 28);
        assert_eq!(std::mem::offset_of!(CallFrame, api), 16);
        assert_eq!(std::mem::offset_of!(CallFrame, stage), 32);
        assert_eq!(std::mem::offset_of!(CallFrame, args), 40);
        assert_eq!(std::mem::offset_of!(CallFrame, rets), 80);
        assert_eq!(std::mem::offset_of!(CallFrame, attrs), 120);
        assert_eq!(std::mem::offset_of!(CallFrame, future), 168);
        assert_eq!(std::mem::offset_of!(Buffer, dims), 40);
        assert_eq!(std::mem::offset_of!(Metadata, traits), 32);
        assert_eq!(std::mem::offset_of!(Api, error_create), 48);
    }
}
