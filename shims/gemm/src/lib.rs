//! `gemm` 0.15's interface, as dfdx 0.13 calls it (`gemm::gemm`, `gemm::f16`,
//! `gemm::Parallelism`), served by `gemm` 0.18: the same function with the same arguments and
//! faster kernels, except that small products run on the calling thread.
pub use gemm_next::*;

/// Products of fewer multiply-adds than this run on one thread whatever dfdx asks: dfdx asks
/// for every thread on every product, and at `pixel-tiny`'s widths waking the other thread
/// cost more than it saved (the demo's training step took 351 ms on 2 threads against 284 ms
/// on one).
pub const PARALLEL_MIN_MULTIPLY_ADDS: usize = 1 << 22;

/// `gemm_next::gemm` with `parallelism` kept for products of at least
/// [`PARALLEL_MIN_MULTIPLY_ADDS`] multiply-adds and [`Parallelism::None`] below.
///
/// # Safety
///
/// As `gemm_next::gemm`: every pointer with its strides addresses valid memory for the sizes
/// given, and `dst` does not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub unsafe fn gemm<T: 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const T,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const T,
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: T,
    beta: T,
    conj_dst: bool,
    conj_lhs: bool,
    conj_rhs: bool,
    parallelism: Parallelism,
) {
    let small = m.saturating_mul(n).saturating_mul(k) < PARALLEL_MIN_MULTIPLY_ADDS;
    let parallelism = if small {
        Parallelism::None
    } else {
        parallelism
    };
    gemm_next::gemm(
        m,
        n,
        k,
        dst,
        dst_cs,
        dst_rs,
        read_dst,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        alpha,
        beta,
        conj_dst,
        conj_lhs,
        conj_rhs,
        parallelism,
    )
}
