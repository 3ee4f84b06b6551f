//! lljx's native core: tokenizer, streaming detokenizer, chat templates, the host token loop,
//! and the decode matrix-vector kernel with its XLA FFI handler; `py` binds them to Python
//! when the `python` feature is on.

pub mod chat;
pub mod detokenize;
pub mod error;
pub mod matvec;
pub mod token_loop;
pub mod tokenizer;
pub mod workers;
pub mod xla_ffi;

#[cfg(feature = "python")]
mod py;
