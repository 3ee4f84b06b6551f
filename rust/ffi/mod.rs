//! XLA FFI handlers: `xla` mirrors the C ABI, and each other module checks one custom call's
//! buffers and runs its kernel from `crate::kernels`.

pub mod argmax;
pub mod attend;
pub mod columns;
pub mod matvec;
pub mod xla;
