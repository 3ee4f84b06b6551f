//! CPU kernels for decode and prompts: weight formats and matrix products, attention, and the
//! worker threads they share. Plain Rust over slices; `crate::ffi` exposes them to XLA.
//!
//! Two families of products: `matvec` over weights laid out [in, out] (f32, bf16, f16, int8)
//! for explicit dtypes, and `block_matmul` over GGUF weights as their files store them
//! ([out, in] rows of blocks: `ggml`, `blocks`, `activations`, `portable_dot`).
//! `real_rows` skips a padded prompt's padding; `norm` is RMSNorm by rows. `bandwidth` measures
//! the memory read speed these kernels are bound by.

pub mod act_simd;
pub mod activations;
pub mod amx;
pub mod attention;
pub mod attention_avx2;
pub mod bandwidth;
pub mod block_matmul;
pub mod blocks;
pub mod caches;
pub mod float_avx2;
pub mod float_tiles;
pub mod ggml;
pub mod matvec;
pub mod norm;
pub mod portable_dot;
pub mod real_rows;
pub mod rows8_avx2;
pub mod scratch;
pub mod stream_32;
pub mod stream_k;
pub mod unpack;
pub mod vendor;
pub mod vnni;
pub mod workers;

#[cfg(test)]
mod block_tests;
#[cfg(all(test, target_arch = "x86_64"))]
mod stream_k_tests;
