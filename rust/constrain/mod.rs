//! Grammar constraints for structured output: JSON schemas compiled by llguidance over
//! lljx's tokenizer (`grammars`), and the per-row token masks the device-side sampler
//! applies at each step (`masks`).

pub mod grammars;
pub mod masks;
pub mod token_env;

pub use grammars::{Compiled, Grammar, Grammars, Limits};
pub use masks::{Allowed, Masks, RowConstraint};

#[cfg(test)]
mod tests;
