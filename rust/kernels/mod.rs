//! CPU kernels for decode and prompts: weight formats and matrix products, attention, and the
//! worker threads they share. Plain Rust over slices; `crate::ffi` exposes them to XLA.
//! `bandwidth` measures the memory read speed these kernels are bound by.

pub mod attention;
pub mod bandwidth;
pub mod matvec;
pub mod workers;
