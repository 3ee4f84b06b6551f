//! CPU kernels for decode and prompts: weight formats and matrix products, attention, and the
//! worker threads they share. Plain Rust over slices; `crate::ffi` exposes them to XLA.

pub mod attention;
pub mod matvec;
pub mod workers;
