//! `gemm` 0.15's interface, as dfdx 0.13 calls it (`gemm::gemm`, `gemm::f16`,
//! `gemm::Parallelism`), served by `gemm` 0.18: the same function with the same arguments and
//! faster kernels. Nothing here but the re-export.
pub use gemm_next::*;
