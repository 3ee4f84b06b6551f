//! XLA's FFI seen from Rust: the C ABI structs lljx's handlers read, and the plumbing every handler shares.
//!
//! XLA's FFI is a C ABI (xla/ffi/api/c_api.h, API version 0.3). Only the structs the
//! handlers read are mirrored here. Every argument is checked before any pointer is read;
//! problems become XLA errors (raised in Python), never panics across the boundary.
//! The handlers themselves live beside this module: `matvec`, `attend`, `columns` and `argmax`.

use std::ffi::{c_char, c_void, CString};

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

pub type ErrorPtr = *mut c_void;

#[repr(C)]
struct ErrorCreateArgs {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    message: *const c_char,
    errc: i32,
}

/// The start of XLA_FFI_Api: handlers only create errors, the first function in the table.
#[repr(C)]
pub struct Api {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    api_version: ApiVersion,
    internal_api: *const c_void,
    error_create: Option<unsafe extern "C" fn(*mut ErrorCreateArgs) -> ErrorPtr>,
}

#[repr(C)]
pub struct Buffer {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    pub dtype: i32,
    pub data: *mut c_void,
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

pub const S8: i32 = 2;
pub const S32: i32 = 4;
pub const U8: i32 = 6;
pub const F16: i32 = 10;
pub const F32: i32 = 11;
pub const BF16: i32 = 16;

// ---- the handler ----

/// The body of one handler: validated argument and result buffers in, an error message out.
pub type Body = unsafe fn(&[&Buffer], &[&Buffer]) -> Result<(), String>;

/// Runs `body` for an execute-stage call, answers XLA's metadata query, and turns errors and
/// panics into XLA errors prefixed with the handler's `name`.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe fn run_handler(frame: *mut CallFrame, name: &str, body: Body) -> ErrorPtr {
    let result = std::panic::catch_unwind(|| unsafe { handle(frame, body) });
    match result {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(message)) => unsafe {
            error(frame, ERRC_INVALID_ARGUMENT, &format!("{name}: {message}"))
        },
        Err(_) => unsafe { error(frame, ERRC_INTERNAL, &format!("{name}: internal error")) },
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

unsafe fn handle(frame: *mut CallFrame, body: Body) -> Result<(), String> {
    if frame.is_null() {
        return Err("no call frame".into());
    }
    let frame = unsafe { &*frame };
    if frame.struct_size < CALL_FRAME_SIZE {
        return Err(format!(
            "call frame of {} bytes, expected {CALL_FRAME_SIZE}",
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
    unsafe { body(&args, &rets) }
}

unsafe fn buffers<'a>(list: &'a List, what: &str) -> Result<Vec<&'a Buffer>, String> {
    let size = usize::try_from(list.size).map_err(|_| format!("negative {what} count"))?;
    (0..size)
        .map(|i| {
            let kind = unsafe { *list.types.add(i) };
            if kind != ARG_BUFFER {
                return Err(format!("{what} {i} is not a buffer"));
            }
            Ok(unsafe { &*(*list.items.add(i) as *const Buffer) })
        })
        .collect()
}

pub fn dims(buffer: &Buffer) -> Result<Vec<usize>, String> {
    let rank = usize::try_from(buffer.rank).map_err(|_| "negative rank".to_string())?;
    (0..rank)
        .map(|i| {
            usize::try_from(unsafe { *buffer.dims.add(i) })
                .map_err(|_| "negative dimension".to_string())
        })
        .collect()
}

pub fn dtype_name(dtype: i32) -> String {
    match dtype {
        S8 => "int8".into(),
        U8 => "uint8".into(),
        F16 => "f16".into(),
        F32 => "f32".into(),
        BF16 => "bf16".into(),
        other => format!("XLA type {other}"),
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
