//! lljx's native core in two halves. The text side: tokenizer, streaming detokenizer, chat
//! templates, grammar constraints and the host token loop. The compute side: CPU kernels
//! (`kernels`) and the XLA FFI handlers that call them from jitted code (`ffi`). `py` binds
//! both to Python when the `python` feature is on.

pub mod batch;
pub mod chat;
pub mod constrain;
pub mod detokenize;
pub mod error;
pub mod ffi;
pub mod gguf_strings;
pub mod kernels;
pub mod token_loop;
pub mod tokenizer;

#[cfg(feature = "python")]
mod py;
