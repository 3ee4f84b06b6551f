//! lljx's native core: tokenizer, streaming detokenizer and chat templates; `py` binds
//! them to Python when the `python` feature is on.

pub mod chat;
pub mod detokenize;
pub mod error;
pub mod tokenizer;

#[cfg(feature = "python")]
mod py;
