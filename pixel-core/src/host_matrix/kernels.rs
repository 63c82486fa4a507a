//! The products of [`super::HostMatrix`]: `y[r, o] = W[o, :] . x[r, :]` with `W` stored as f32,
//! bf16 or f16 and every sum accumulated in f32.
//!
//! Two kernels, both reading each weight row from memory once for all rows of `x`:
//! - AVX2 + FMA + F16C, chosen at run time when the CPU has them: 8 lanes; one row of `x` (a
//!   decoding step at batch 1) with two accumulators; several rows (a batch) two weight rows
//!   at a time against up to [`BLOCK`] rows of `x`, so that each load serves several FMAs;
//! - a portable scalar kernel with 16 independent lanes per row (the layout the compiler
//!   vectorizes without reassociating), used elsewhere.
//!
//! They add the same products in different orders, so they agree to f32 rounding: within
//! `1e-6 * sum_i |W[o, i] x[r, i]|` per output (tested against an f64 reference, and against
//! each other, in `tests`). The conversions are exact: bf16 and f16 values are f32 values.
use super::Rows;

/// Rows of `x` that share one converted weight vector in the SIMD kernel.
const BLOCK: usize = 4;

/// bf16 bits as the f32 they encode (bf16 is f32's upper half).
#[inline]
pub(super) fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

#[inline]
pub(super) fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// `y[o * rows + r] = W[o] . x[r]` for `W` `[out, inp]` in `storage`, `x` `[rows, inp]`: the
/// product transposed, so that a range of weight rows writes a contiguous part of `y`.
pub(super) fn matmul_t(storage: Rows<'_>, out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len() % inp.max(1), 0);
    debug_assert_eq!(y.len(), x.len() / inp.max(1) * out);
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: `available` checked that the CPU has every feature the kernel enables.
        unsafe { simd::matmul_t(storage, out, inp, x, y) };
        return;
    }
    scalar::matmul_t(storage, out, inp, x, y);
}

/// The portable kernel, public to the tests of this module.
pub(super) mod scalar {
    use super::{bf16_to_f32, f16_to_f32, Rows};

    pub fn matmul_t(storage: Rows<'_>, out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
        match storage {
            Rows::F32(w) => rows(w, out, inp, x, y, |v| v),
            Rows::Bf16(w) => rows(w, out, inp, x, y, bf16_to_f32),
            Rows::F16(w) => rows(w, out, inp, x, y, f16_to_f32),
        }
    }

    fn rows<T: Copy>(
        w: &[T],
        out: usize,
        inp: usize,
        x: &[f32],
        y: &mut [f32],
        widen: impl Fn(T) -> f32 + Copy,
    ) {
        let n = x.len() / inp;
        for (o, wr) in w.chunks_exact(inp).enumerate().take(out) {
            for r in 0..n {
                y[o * n + r] = dot(wr, &x[r * inp..(r + 1) * inp], widen);
            }
        }
    }

    /// Dot product with 16 independent lanes, so that it vectorizes without reassociation.
    #[inline]
    fn dot<T: Copy>(a: &[T], b: &[f32], widen: impl Fn(T) -> f32) -> f32 {
        let mut acc = [0.0f32; 16];
        let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(&w, x)| widen(w) * x)
            .sum();
        for (w, x) in ca.zip(cb) {
            for l in 0..16 {
                acc[l] += widen(w[l]) * x[l];
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{bf16_to_f32, f16_to_f32, Rows, BLOCK};
    use std::arch::x86_64::*;

    /// Whether this CPU runs the kernel (std caches the detection). Every AVX2 CPU has F16C;
    /// the check keeps that an observed fact rather than an assumption.
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// 8 weights as f32, from `w` at element `i`.
    trait Load: Copy {
        unsafe fn load8(w: *const Self) -> __m256;
        fn widen(self) -> f32;
    }

    impl Load for f32 {
        #[inline(always)]
        unsafe fn load8(w: *const f32) -> __m256 {
            _mm256_loadu_ps(w)
        }
        fn widen(self) -> f32 {
            self
        }
    }

    /// bf16 as u16 bits; f16 is its own type below so that the two cannot be mixed up.
    #[derive(Clone, Copy)]
    #[repr(transparent)]
    struct Bf16(u16);
    #[derive(Clone, Copy)]
    #[repr(transparent)]
    struct F16(u16);

    impl Load for Bf16 {
        #[inline(always)]
        unsafe fn load8(w: *const Bf16) -> __m256 {
            let bits = _mm_loadu_si128(w as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16))
        }
        fn widen(self) -> f32 {
            bf16_to_f32(self.0)
        }
    }

    impl Load for F16 {
        #[inline(always)]
        unsafe fn load8(w: *const F16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(w as *const __m128i))
        }
        fn widen(self) -> f32 {
            f16_to_f32(self.0)
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn matmul_t(storage: Rows<'_>, out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
        match storage {
            Rows::F32(w) => rows(w, out, inp, x, y),
            // SAFETY: `Bf16` and `F16` are `repr(transparent)` over u16.
            Rows::Bf16(w) => rows(
                std::slice::from_raw_parts(w.as_ptr() as *const Bf16, w.len()),
                out,
                inp,
                x,
                y,
            ),
            Rows::F16(w) => rows(
                std::slice::from_raw_parts(w.as_ptr() as *const F16, w.len()),
                out,
                inp,
                x,
                y,
            ),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows<T: Load>(w: &[T], out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
        let n = x.len() / inp;
        // Several rows of `x` (a batch): two weight rows at a time, so that each loaded `x`
        // vector serves two FMAs and each converted weight vector up to `BLOCK`.
        let pairs = if n > 1 { out / 2 } else { 0 };
        for p in 0..pairs {
            let o = 2 * p;
            let (w0, w1) = (&w[o * inp..(o + 1) * inp], &w[(o + 1) * inp..(o + 2) * inp]);
            let mut r = 0;
            while r < n {
                let b = (n - r).min(BLOCK);
                let mut sums = [[0.0f32; BLOCK]; 2];
                match b {
                    4 => pair_block::<T, 4>(w0, w1, x, r, inp, &mut sums),
                    3 => pair_block::<T, 3>(w0, w1, x, r, inp, &mut sums),
                    2 => pair_block::<T, 2>(w0, w1, x, r, inp, &mut sums),
                    _ => pair_block::<T, 1>(w0, w1, x, r, inp, &mut sums),
                }
                for i in 0..b {
                    y[o * n + r + i] = sums[0][i];
                    y[(o + 1) * n + r + i] = sums[1][i];
                }
                r += b;
            }
        }
        for (o, wr) in w.chunks_exact(inp).enumerate().take(out).skip(2 * pairs) {
            let mut r = 0;
            while r < n {
                let b = (n - r).min(BLOCK);
                let mut sums = [0.0f32; BLOCK];
                match b {
                    4 => block::<T, 4>(wr, x, r, inp, &mut sums),
                    3 => block::<T, 3>(wr, x, r, inp, &mut sums),
                    2 => block::<T, 2>(wr, x, r, inp, &mut sums),
                    _ => block::<T, 1>(wr, x, r, inp, &mut sums),
                }
                for (i, s) in sums.iter().take(b).enumerate() {
                    y[o * n + r + i] = *s;
                }
                r += b;
            }
        }
    }

    /// Dot products of weight rows `w0`, `w1` with rows `r..r + R` of `x`, one accumulator
    /// per pair (2R independent chains).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pair_block<T: Load, const R: usize>(
        w0: &[T],
        w1: &[T],
        x: &[f32],
        r: usize,
        inp: usize,
        sums: &mut [[f32; BLOCK]; 2],
    ) {
        let mut acc0 = [_mm256_setzero_ps(); R];
        let mut acc1 = [_mm256_setzero_ps(); R];
        let (p0, p1) = (w0.as_ptr(), w1.as_ptr());
        let xp: [*const f32; R] = std::array::from_fn(|i| x.as_ptr().add((r + i) * inp));
        let full = inp / 8 * 8;
        // Elements per cache line: the next pair of weight rows (`2 inp` on) is prefetched a
        // line at a time while this one is computed, so that memory latency overlaps the FMAs
        // of a batch (without it a batch-8 step waited on its weight loads a third of the time).
        let line = 64 / std::mem::size_of::<T>();
        let mut i = 0;
        while i < full {
            if i % line == 0 {
                // A hint: it never faults, and `wrapping_add` keeps the address arithmetic
                // defined past the last row.
                _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(2 * inp + i) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(p1.wrapping_add(2 * inp + i) as *const i8);
            }
            let a = T::load8(p0.add(i));
            let b = T::load8(p1.add(i));
            for k in 0..R {
                let xv = _mm256_loadu_ps(xp[k].add(i));
                acc0[k] = _mm256_fmadd_ps(a, xv, acc0[k]);
                acc1[k] = _mm256_fmadd_ps(b, xv, acc1[k]);
            }
            i += 8;
        }
        for k in 0..R {
            for (j, (acc, wr)) in [(acc0[k], w0), (acc1[k], w1)].into_iter().enumerate() {
                let mut lanes = [0.0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
                let tail: f32 = (full..inp).map(|t| wr[t].widen() * *xp[k].add(t)).sum();
                sums[j][k] = lanes.iter().sum::<f32>() + tail;
            }
        }
    }

    /// Dot products of one weight row with rows `r..r + R` of `x`: each 8-weight vector is
    /// loaded and converted once for all `R` rows.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block<T: Load, const R: usize>(
        w: &[T],
        x: &[f32],
        r: usize,
        inp: usize,
        sums: &mut [f32; BLOCK],
    ) {
        let mut acc0 = [_mm256_setzero_ps(); R];
        let mut acc1 = [_mm256_setzero_ps(); R];
        let wp = w.as_ptr();
        let xp: [*const f32; R] = std::array::from_fn(|i| x.as_ptr().add((r + i) * inp));
        let full = inp / 16 * 16;
        // The next weight row, a cache line at a time, as in `pair_block`.
        let line = 64 / std::mem::size_of::<T>();
        let mut i = 0;
        while i < full {
            if i % line == 0 {
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(inp + i) as *const i8);
            }
            let w0 = T::load8(wp.add(i));
            let w1 = T::load8(wp.add(i + 8));
            for k in 0..R {
                acc0[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp[k].add(i)), acc0[k]);
                acc1[k] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp[k].add(i + 8)), acc1[k]);
            }
            i += 16;
        }
        for k in 0..R {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc0[k], acc1[k]));
            let tail: f32 = (full..inp).map(|j| w[j].widen() * *xp[k].add(j)).sum();
            sums[k] = lanes.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_matrix::Storage;

    /// Values that are exact in bf16 and f16 (small integers over 8), so that every storage
    /// holds the same matrix.
    fn matrix(out: usize, inp: usize) -> Vec<f32> {
        (0..out * inp)
            .map(|i| ((i * 7919 + 13) % 29) as f32 / 8.0 - 1.75)
            .collect()
    }

    fn storages(w: &[f32]) -> [Storage; 3] {
        [
            Storage::F32(w.to_vec()),
            Storage::Bf16(
                w.iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect(),
            ),
            Storage::F16(
                w.iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect(),
            ),
        ]
    }

    /// Both kernels, for every storage, within `1e-6 * sum |w x|` of an f64 reference, over
    /// shapes with tails (inp not a multiple of 16) and row counts that are not multiples of 4.
    #[test]
    fn kernels_equal_an_f64_reference_within_f32_rounding() {
        for (out, inp, n) in [
            (37, 21, 3),
            (16, 64, 1),
            (9, 512, 8),
            (5, 100, 6),
            (3, 7, 13),
        ] {
            let w = matrix(out, inp);
            let x: Vec<f32> = (0..n * inp)
                .map(|i| ((i * 31) % 17) as f32 * 0.37 - 3.0)
                .collect();
            for storage in storages(&w) {
                let mut fast = vec![0.0; n * out];
                let mut portable = vec![0.0; n * out];
                matmul_t(storage.all(), out, inp, &x, &mut fast);
                scalar::matmul_t(storage.all(), out, inp, &x, &mut portable);
                for r in 0..n {
                    for o in 0..out {
                        let terms = (0..inp).map(|i| w[o * inp + i] as f64 * x[r * inp + i] as f64);
                        let want: f64 = terms.clone().sum();
                        let scale: f64 = terms.map(f64::abs).sum::<f64>().max(1e-30);
                        for got in [fast[o * n + r], portable[o * n + r]] {
                            assert!(
                                (got as f64 - want).abs() <= 1e-6 * scale,
                                "{out}x{inp}, {n} rows, [{r},{o}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn half_conversions_are_exact_for_representable_values() {
        for v in [0.0f32, 1.0, -2.5, 0.125, 65504.0, -3.0e-5] {
            assert_eq!(
                f16_to_f32(half::f16::from_f32(v).to_bits()),
                half::f16::from_f32(v).to_f32()
            );
            assert_eq!(
                bf16_to_f32(half::bf16::from_f32(v).to_bits()),
                half::bf16::from_f32(v).to_f32()
            );
        }
    }
}
