//! lljx's native core: tokenizer, streaming detokenizer, chat templates, the host token loop,
//! and the decode kernels (matrix-vector product, attention) with their XLA FFI handlers; `py` binds them to Python
//! when the `python` feature is on.

pub mod attention;
pub mod chat;
pub mod detokenize;
pub mod error;
pub mod ffi_argmax;
pub mod ffi_attend;
pub mod ffi_columns;
pub mod ffi_matvec;
pub mod matvec;
pub mod token_loop;
pub mod tokenizer;
pub mod workers;
pub mod xla_ffi;

#[cfg(feature = "python")]
mod py;
