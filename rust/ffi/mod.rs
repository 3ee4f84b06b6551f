//! XLA FFI handlers: `xla` mirrors the C ABI, and each other module checks one custom call's
//! buffers and runs its kernel from `crate::kernels`.

pub mod argmax;
pub mod attend;
pub mod block_matmul;
pub mod block_rows;
pub mod columns;
pub mod matvec;
pub mod rms_norm;
pub mod xla;
