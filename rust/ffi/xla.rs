//! XLA's FFI seen from Rust: the C ABI structs lljx's handlers read, and the plumbing every handler shares.
//!
//! XLA's FFI is a C ABI (xla/ffi/api/c_api.h, API version 0.3). Only the structs the
//! handlers read are mirrored here. Every argument is checked before any pointer is read;
//! problems become XLA errors (raised in Python), never panics across the boundary.
//! The handlers themselves live beside this module: `matvec`, `attend`, `columns`, `argmax`,
//! `block_matmul` and `block_rows`. Handlers that take attributes (static values such as ggml
//! type ids) read them through `Attributes`.

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
struct ByteSpan {
    ptr: *const c_char,
    len: usize,
}

#[repr(C)]
struct ScalarAttr {
    dtype: i32,
    value: *const c_void,
}

#[repr(C)]
struct ArrayAttr {
    dtype: i32,
    size: usize,
    data: *const c_void,
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
const ATTR_ARRAY: i32 = 1;
const ATTR_SCALAR: i32 = 3;
const ERRC_INVALID_ARGUMENT: i32 = 3;
const ERRC_INTERNAL: i32 = 13;
const FFI_MAJOR: i32 = 0;
const FFI_MINOR: i32 = 3;

pub const S8: i32 = 2;
pub const S32: i32 = 4;
pub const S64: i32 = 5;
pub const U8: i32 = 6;
pub const F16: i32 = 10;
pub const F32: i32 = 11;
pub const F64: i32 = 12;
pub const BF16: i32 = 16;

// ---- the handler ----

/// The body of one handler: validated argument and result buffers in, an error message out.
pub type Body = unsafe fn(&[&Buffer], &[&Buffer]) -> Result<(), String>;

/// The body of a handler that also reads attributes.
pub type AttrBody = unsafe fn(&[&Buffer], &[&Buffer], &Attributes) -> Result<(), String>;

#[derive(Clone, Copy)]
enum AnyBody {
    Plain(Body),
    WithAttributes(AttrBody),
}

/// Runs `body` for an execute-stage call, answers XLA's metadata query, and turns errors and
/// panics into XLA errors prefixed with the handler's `name`.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe fn run_handler(frame: *mut CallFrame, name: &str, body: Body) -> ErrorPtr {
    unsafe { run_any(frame, name, AnyBody::Plain(body)) }
}

/// `run_handler` for a body that reads the call's attributes.
///
/// # Safety
/// `frame` must be a call frame built by XLA's FFI runtime (API 0.x).
pub unsafe fn run_handler_with_attributes(
    frame: *mut CallFrame,
    name: &str,
    body: AttrBody,
) -> ErrorPtr {
    unsafe { run_any(frame, name, AnyBody::WithAttributes(body)) }
}

unsafe fn run_any(frame: *mut CallFrame, name: &str, body: AnyBody) -> ErrorPtr {
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

unsafe fn handle(frame: *mut CallFrame, body: AnyBody) -> Result<(), String> {
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
    match body {
        AnyBody::Plain(body) => unsafe { body(&args, &rets) },
        AnyBody::WithAttributes(body) => {
            let attributes = unsafe { Attributes::read(&frame.attrs)? };
            unsafe { body(&args, &rets, &attributes) }
        }
    }
}

/// A call's attributes by name (XLA passes them sorted by name; lookups do not rely on it).
pub struct Attributes<'a> {
    entries: Vec<(&'a [u8], i32, *const c_void)>,
}

impl<'a> Attributes<'a> {
    unsafe fn read(attrs: &'a Attrs) -> Result<Attributes<'a>, String> {
        let size =
            usize::try_from(attrs.size).map_err(|_| "negative attribute count".to_string())?;
        if size > 0 && (attrs.types.is_null() || attrs.names.is_null() || attrs.attrs.is_null()) {
            return Err("attribute table is missing".into());
        }
        let entries = (0..size)
            .map(|i| {
                let name = unsafe { *attrs.names.add(i) } as *const ByteSpan;
                let value = unsafe { *attrs.attrs.add(i) } as *const c_void;
                if name.is_null() || value.is_null() {
                    return Err(format!("attribute {i} is missing"));
                }
                let span = unsafe { &*name };
                let bytes: &[u8] = if span.len == 0 {
                    &[]
                } else if span.ptr.is_null() {
                    return Err(format!("attribute {i} has no name"));
                } else {
                    unsafe { std::slice::from_raw_parts(span.ptr as *const u8, span.len) }
                };
                Ok((bytes, unsafe { *attrs.types.add(i) }, value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Attributes { entries })
    }

    fn find(&self, name: &str) -> Result<(i32, *const c_void), String> {
        self.entries
            .iter()
            .find(|(n, _, _)| *n == name.as_bytes())
            .map(|&(_, kind, value)| (kind, value))
            .ok_or_else(|| format!("attribute {name:?} is missing"))
    }

    /// An int32 array attribute (numpy int32 arrays passed to `ffi_call`).
    pub fn i32_array(&self, name: &str) -> Result<&'a [i32], String> {
        let (kind, value) = self.find(name)?;
        if kind != ATTR_ARRAY {
            return Err(format!("attribute {name:?} must be an int32 array"));
        }
        let array = unsafe { &*(value as *const ArrayAttr) };
        if array.dtype != S32 {
            return Err(format!(
                "attribute {name:?} must be an int32 array, got {}",
                dtype_name(array.dtype)
            ));
        }
        if array.size == 0 {
            return Ok(&[]);
        }
        if array.data.is_null() {
            return Err(format!("attribute {name:?} has no data"));
        }
        Ok(unsafe { std::slice::from_raw_parts(array.data as *const i32, array.size) })
    }

    /// An integer scalar attribute (int32 or int64).
    pub fn int_scalar(&self, name: &str) -> Result<i64, String> {
        let (dtype, value) = self.scalar(name, "an integer scalar")?;
        match dtype {
            S32 => Ok(unsafe { *(value as *const i32) } as i64),
            S64 => Ok(unsafe { *(value as *const i64) }),
            other => Err(format!(
                "attribute {name:?} must be an integer scalar, got {}",
                dtype_name(other)
            )),
        }
    }

    /// A float scalar attribute (f32, or f64 rounded to f32).
    pub fn float_scalar(&self, name: &str) -> Result<f32, String> {
        let (dtype, value) = self.scalar(name, "a float scalar")?;
        match dtype {
            F32 => Ok(unsafe { *(value as *const f32) }),
            F64 => Ok(unsafe { *(value as *const f64) } as f32),
            other => Err(format!(
                "attribute {name:?} must be a float scalar, got {}",
                dtype_name(other)
            )),
        }
    }

    /// A scalar attribute's dtype and (non-null) value pointer; `what` names the expected kind.
    fn scalar(&self, name: &str, what: &str) -> Result<(i32, *const c_void), String> {
        let (kind, value) = self.find(name)?;
        if kind != ATTR_SCALAR {
            return Err(format!("attribute {name:?} must be {what}"));
        }
        let scalar = unsafe { &*(value as *const ScalarAttr) };
        if scalar.value.is_null() {
            return Err(format!("attribute {name:?} has no value"));
        }
        Ok((scalar.dtype, scalar.value))
    }
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
        S32 => "int32".into(),
        S64 => "int64".into(),
        U8 => "uint8".into(),
        F16 => "f16".into(),
        F32 => "f32".into(),
        F64 => "f64".into(),
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
        assert_eq!(std::mem::offset_of!(Attrs, size), 16);
        assert_eq!(std::mem::offset_of!(Attrs, types), 24);
        assert_eq!(std::mem::offset_of!(Attrs, names), 32);
        assert_eq!(std::mem::offset_of!(Attrs, attrs), 40);
        assert_eq!(std::mem::offset_of!(ByteSpan, len), 8);
        assert_eq!(std::mem::offset_of!(ScalarAttr, value), 8);
        assert_eq!(std::mem::offset_of!(ArrayAttr, size), 8);
        assert_eq!(std::mem::offset_of!(ArrayAttr, data), 16);
    }

    #[test]
    fn attributes_are_read_by_name_and_checked() {
        let types_data = [12i32, 14];
        let array = ArrayAttr {
            dtype: S32,
            size: 2,
            data: types_data.as_ptr() as *const c_void,
        };
        let value = 30i64;
        let scalar = ScalarAttr {
            dtype: S64,
            value: &value as *const i64 as *const c_void,
        };
        let floats = ArrayAttr {
            dtype: F32,
            size: 0,
            data: std::ptr::null(),
        };
        let names = [
            ByteSpan {
                ptr: b"ggml_type".as_ptr() as *const c_char,
                len: 9,
            },
            ByteSpan {
                ptr: b"ggml_types".as_ptr() as *const c_char,
                len: 10,
            },
            ByteSpan {
                ptr: b"scales".as_ptr() as *const c_char,
                len: 6,
            },
        ];
        let name_ptrs: Vec<*mut c_void> = names
            .iter()
            .map(|n| n as *const ByteSpan as *mut c_void)
            .collect();
        let kinds = [ATTR_SCALAR, ATTR_ARRAY, ATTR_ARRAY];
        let values = [
            &scalar as *const ScalarAttr as *mut c_void,
            &array as *const ArrayAttr as *mut c_void,
            &floats as *const ArrayAttr as *mut c_void,
        ];
        let attrs = Attrs {
            struct_size: std::mem::size_of::<Attrs>(),
            extension_start: std::ptr::null_mut(),
            size: 3,
            types: kinds.as_ptr(),
            names: name_ptrs.as_ptr(),
            attrs: values.as_ptr(),
        };
        let read = unsafe { Attributes::read(&attrs) }.unwrap();
        assert_eq!(read.i32_array("ggml_types").unwrap(), &[12, 14]);
        assert_eq!(read.int_scalar("ggml_type").unwrap(), 30);
        assert!(read
            .i32_array("ggml_type")
            .unwrap_err()
            .contains("int32 array"));
        assert!(read
            .int_scalar("ggml_types")
            .unwrap_err()
            .contains("integer scalar"));
        assert!(read.i32_array("scales").unwrap_err().contains("got f32"));
        assert!(read.i32_array("missing").unwrap_err().contains("missing"));
        let broken = Attrs {
            types: std::ptr::null(),
            ..attrs
        };
        assert!(unsafe { Attributes::read(&broken) }.is_err());
    }
}
