//! lljx's native core: tokenizer, streaming detokenizer, chat templates and the host token
//! loop; `py` binds
//! them to Python when the `python` feature is on.

pub mod chat;
pub mod detokenize;
pub mod error;
pub mod token_loop;
pub mod tokenizer;

#[cfg(feature = "python")]
mod py;
