//! Frozen weight matrices on the host in f32, bf16 or f16, multiplied with f32 accumulation.
//!
//! Inference that is bound by reading weights (decoding one token per sequence) runs at the
//! speed of the bytes it reads; storing the weights as 16-bit halves those bytes. A
//! [`HostMatrix`] keeps the 16-bit values as `u16` bits and never holds an f32 copy: the
//! matrix-vector kernels ([`kernels`]) widen each weight in registers, and products over many
//! rows (an encoder's tokens) widen one panel of weight rows at a time into a small buffer for
//! `gemm`. Checkpoints stored in the same 16-bit type load by copying their bits
//! ([`read_matrices`]).
//!
//! Rounding from f32 is round-to-nearest-even, as PyTorch's `.to(torch.bfloat16)`.
mod kernels;

use crate::error::{CoreError, Result};
use ::safetensors::tensor::{Dtype as SafeDtype, SafeTensors, TensorView};
use std::collections::BTreeMap;
use std::path::Path;

/// How a [`HostMatrix`] stores its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "f16" | "float16" => Ok(Dtype::F16),
            other => Err(format!("unknown dtype `{other}` (use f32, bf16 or f16)")),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The values, in the type they are kept in.
#[derive(Clone, PartialEq)]
enum Storage {
    F32(Vec<f32>),
    /// bf16 bits.
    Bf16(Vec<u16>),
    /// IEEE half bits.
    F16(Vec<u16>),
}

/// A row-major `[rows, cols]` matrix of frozen weights (a linear layer's `[out, in]`).
#[derive(Clone, PartialEq)]
pub struct HostMatrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

impl std::fmt::Debug for HostMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HostMatrix [{}, {}] {}",
            self.rows,
            self.cols,
            self.dtype()
        )
    }
}

/// The values of weight rows `start..end`, in their stored type: what the kernels read.
#[derive(Clone, Copy)]
enum Rows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    F16(&'a [u16]),
}

impl Storage {
    /// Rows `start..end` of a matrix with `cols` columns.
    fn rows(&self, start: usize, end: usize, cols: usize) -> Rows<'_> {
        let range = start * cols..end * cols;
        match self {
            Storage::F32(v) => Rows::F32(&v[range]),
            Storage::Bf16(v) => Rows::Bf16(&v[range]),
            Storage::F16(v) => Rows::F16(&v[range]),
        }
    }

    #[cfg(test)]
    fn all(&self) -> Rows<'_> {
        match self {
            Storage::F32(v) => Rows::F32(v),
            Storage::Bf16(v) => Rows::Bf16(v),
            Storage::F16(v) => Rows::F16(v),
        }
    }
}

/// Products with more rows than this (an encoder's tokens) go through `gemm`; fewer (decoding
/// steps, a batch's rows and beams) through the kernels that read each weight once. A chosen
/// value, not a tuned one: the T5 benches use 1, 8 and 64+ rows.
const GEMM_ROWS: usize = 16;

/// 16-bit weight rows widened to f32 at a time on the `gemm` path (4 MiB of f32). A
/// `gemm` call has a fixed cost (packing, waking its threads): 128-row panels made T5-small's
/// encoder 2.4x slower than one call per matrix.
const PANEL_ELEMENTS: usize = if cfg!(test) { 1 << 12 } else { 1 << 20 };

/// Matrices from this many bytes are read by all threads in the row kernels: one thread does
/// not reach the memory bandwidth two do (13 against 25 GB/s on the 2-core machine).
const PARALLEL_BYTES: usize = if cfg!(test) { 64 } else { 64 << 10 };

thread_local! {
    /// The widened panel, kept between products so that each does not fault in fresh pages.
    static PANEL: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

impl HostMatrix {
    /// Takes f32 values as they are (`Dtype::F32`, no copy) or rounds them to `dtype`.
    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>, dtype: Dtype) -> Self {
        assert_eq!(values.len(), rows * cols, "a [{rows}, {cols}] matrix");
        let storage = match dtype {
            Dtype::F32 => Storage::F32(values),
            _ => narrow(values.into_iter(), dtype),
        };
        HostMatrix {
            rows,
            cols,
            storage,
        }
    }

    /// A safetensors tensor (2-D, or 1-D as one row) stored as `dtype`: values already in
    /// `dtype` are copied bit for bit, others converted one value at a time.
    pub fn from_view(view: &TensorView<'_>, dtype: Dtype) -> std::result::Result<Self, String> {
        let (rows, cols) = match *view.shape() {
            [cols] => (1, cols),
            [rows, cols] => (rows, cols),
            ref other => return Err(format!("a matrix must be 1-D or 2-D, it is {other:?}")),
        };
        let data = view.data();
        let halves = || {
            data.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        let floats = || {
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let storage = match (view.dtype(), dtype) {
            (SafeDtype::BF16, Dtype::Bf16) => Storage::Bf16(halves().collect()),
            (SafeDtype::F16, Dtype::F16) => Storage::F16(halves().collect()),
            (SafeDtype::BF16, _) => narrow(halves().map(kernels::bf16_to_f32), dtype),
            (SafeDtype::F16, _) => narrow(halves().map(kernels::f16_to_f32), dtype),
            (SafeDtype::F32, _) => narrow(floats(), dtype),
            (other, _) => {
                return Err(format!(
                    "dtype {other:?} cannot be a weight matrix (use f32, bf16 or f16)"
                ))
            }
        };
        Ok(HostMatrix {
            rows,
            cols,
            storage,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn dtype(&self) -> Dtype {
        match self.storage {
            Storage::F32(_) => Dtype::F32,
            Storage::Bf16(_) => Dtype::Bf16,
            Storage::F16(_) => Dtype::F16,
        }
    }

    /// Bytes the values take (what one full product reads).
    pub fn bytes(&self) -> usize {
        self.rows * self.cols * self.dtype().bytes()
    }

    /// Row `r` widened into `out` (`cols` values): an embedding lookup.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.storage {
            Storage::F32(v) => out.copy_from_slice(&v[range]),
            Storage::Bf16(v) => out
                .iter_mut()
                .zip(&v[range])
                .for_each(|(o, &b)| *o = kernels::bf16_to_f32(b)),
            Storage::F16(v) => out
                .iter_mut()
                .zip(&v[range])
                .for_each(|(o, &b)| *o = kernels::f16_to_f32(b)),
        }
    }

    /// Every value widened to f32 (for tests and conversions; products never need it).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.row_into(r, row);
        }
        out
    }

    /// `x W^T`: `x` is `[n, cols]`, the result `[n, rows]`, accumulated in f32.
    pub fn matmul_t(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len().checked_div(self.cols).unwrap_or(0);
        assert_eq!(n * self.cols, x.len(), "x must be [n, {}]", self.cols);
        if n <= GEMM_ROWS {
            let parts = if self.bytes() < PARALLEL_BYTES {
                1
            } else {
                rayon::current_num_threads()
            };
            return self.matmul_t_rows(x, n, parts);
        }
        let mut y = vec![0.0f32; n * self.rows];
        self.matmul_t_gemm(x, n, &mut y, false);
        y
    }

    /// `y += x W^T` (`x` `[n, cols]`, `y` `[n, rows]`): a bias or a residual already in `y`
    /// is added without another pass over the product.
    pub fn matmul_t_add(&self, x: &[f32], y: &mut [f32]) {
        let n = x.len().checked_div(self.cols).unwrap_or(0);
        assert_eq!(n * self.cols, x.len(), "x must be [n, {}]", self.cols);
        assert_eq!(y.len(), n * self.rows, "y must be [{n}, {}]", self.rows);
        if n <= GEMM_ROWS {
            for (acc, v) in y.iter_mut().zip(self.matmul_t(x)) {
                *acc += v;
            }
            return;
        }
        self.matmul_t_gemm(x, n, y, true);
    }

    /// `x W^T` (`[n, rows]`) by the row kernels, the weight rows split into up to `parts`
    /// ranges of even length computed in parallel, each writing its own part of the transposed
    /// product. Each output is the same sum whatever the split: the kernels pair weight rows
    /// from an even index.
    fn matmul_t_rows(&self, x: &[f32], n: usize, parts: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let (out, inp) = (self.rows, self.cols);
        let mut yt = vec![0.0f32; n * out];
        if n == 0 || out == 0 {
            return yt;
        }
        let pairs = out.div_ceil(2);
        let part_rows = pairs.div_ceil(parts.clamp(1, pairs)) * 2;
        if part_rows >= out {
            kernels::matmul_t(self.storage.rows(0, out, inp), out, inp, x, &mut yt);
        } else {
            yt.par_chunks_mut(part_rows * n)
                .enumerate()
                .for_each(|(p, part)| {
                    let (start, end) = (p * part_rows, p * part_rows + part.len() / n);
                    let rows = self.storage.rows(start, end, inp);
                    kernels::matmul_t(rows, end - start, inp, x, part);
                });
        }
        if n == 1 {
            return yt;
        }
        let mut y = vec![0.0f32; n * out];
        for (o, column) in yt.chunks_exact(n).enumerate() {
            for (r, v) in column.iter().enumerate() {
                y[r * out + o] = *v;
            }
        }
        y
    }

    /// Calls `work(start, end, rows)` on consecutive panels of weight rows `start..end` as f32:
    /// f32 storage in place, as one panel; 16-bit storage widened [`PANEL_ELEMENTS`] values
    /// at a time into a buffer kept per thread.
    fn for_each_panel(&self, mut work: impl FnMut(usize, usize, &[f32])) {
        let inp = self.cols;
        if let Storage::F32(v) = &self.storage {
            work(0, self.rows, v);
            return;
        }
        let panel = (PANEL_ELEMENTS / inp.max(1)).max(1);
        // Taken, not borrowed: a product that runs inside `work` on this thread (rayon may
        // run other tasks while it waits) then widens into its own buffer.
        let mut buffer = PANEL.take();
        for start in (0..self.rows).step_by(panel) {
            let end = (start + panel).min(self.rows);
            self.widen_rows(start, end, &mut buffer);
            work(start, end, &buffer);
        }
        PANEL.set(buffer);
    }

    /// Weight rows `start..end` widened into `buffer`, row-major, chunks of rows in parallel.
    fn widen_rows(&self, start: usize, end: usize, buffer: &mut Vec<f32>) {
        use rayon::prelude::*;
        let inp = self.cols.max(1);
        buffer.resize((end - start) * inp, 0.0);
        let chunk_rows = (PANEL_ELEMENTS / 8 / inp).max(1);
        buffer
            .par_chunks_mut(chunk_rows * inp)
            .enumerate()
            .for_each(|(c, chunk)| {
                let first = start + c * chunk_rows;
                for (i, row) in chunk.chunks_exact_mut(inp).enumerate() {
                    self.row_into(first + i, row);
                }
            });
    }

    /// `dy W`: `dy` is `[n, rows]`, the result `[n, cols]`, accumulated in f32: the gradient
    /// of `x W^T` with respect to `x`. `gemm` on panels of weight rows as [`Self::matmul_t`],
    /// each panel's product added to the result.
    pub fn matmul(&self, dy: &[f32]) -> Vec<f32> {
        let (out, inp) = (self.rows, self.cols);
        let n = dy.len().checked_div(out).unwrap_or(0);
        assert_eq!(n * out, dy.len(), "dy must be [n, {out}]");
        let mut dx = vec![0.0f32; n * inp];
        self.for_each_panel(|start, end, w| {
            // SAFETY: `dst` = `dx` [n, inp] (row stride `inp`), `lhs` = columns `start..end`
            // of `dy` [n, out] (row stride `out`), `rhs` = `w` [end - start, inp]; all in
            // bounds. The first panel writes `dx`, the others add to it.
            unsafe {
                gemm::gemm(
                    n,
                    inp,
                    end - start,
                    dx.as_mut_ptr(),
                    1,
                    inp as isize,
                    start > 0,
                    dy.as_ptr().add(start),
                    1,
                    out as isize,
                    w.as_ptr(),
                    1,
                    inp as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                );
            }
        });
        dx
    }

    /// Many rows: `gemm` on panels of weight rows, widened into one reused buffer for 16-bit
    /// storage (f32 storage is read in place). `y = x W^T`, or `y += x W^T` when `accumulate`.
    fn matmul_t_gemm(&self, x: &[f32], n: usize, y: &mut [f32], accumulate: bool) {
        let (out, inp) = (self.rows, self.cols);
        self.for_each_panel(|start, end, w| {
            // SAFETY: `dst` [n, end - start] at column `start` of `y` [n, out] (row stride
            // `out`), `lhs` = `x` [n, inp], `rhs` = `w^T` [inp, end - start]; all in bounds.
            unsafe {
                gemm::gemm(
                    n,
                    end - start,
                    inp,
                    y.as_mut_ptr().add(start),
                    1,
                    out as isize,
                    accumulate,
                    x.as_ptr(),
                    1,
                    inp as isize,
                    w.as_ptr(),
                    inp as isize,
                    1,
                    if accumulate { 1.0 } else { 0.0 },
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                );
            }
        });
    }
}

/// `values` stored as `dtype`, each rounded to nearest even where `dtype` is 16-bit.
fn narrow(values: impl Iterator<Item = f32>, dtype: Dtype) -> Storage {
    match dtype {
        Dtype::F32 => Storage::F32(values.collect()),
        Dtype::Bf16 => Storage::Bf16(values.map(|v| half::bf16::from_f32(v).to_bits()).collect()),
        Dtype::F16 => Storage::F16(values.map(|v| half::f16::from_f32(v).to_bits()).collect()),
    }
}

/// The float tensors of a safetensors checkpoint as matrices: one file, or the shards of an HF
/// `*.index.json`. `dtype_of(name)` says how to keep each (e.g. weights in bf16, norms in f32).
/// Errors name the file and tensor.
pub fn read_matrices(
    path: &Path,
    dtype_of: impl Fn(&str) -> Dtype,
) -> Result<BTreeMap<String, HostMatrix>> {
    let files = if path.extension().is_some_and(|e| e == "json") {
        shard_files(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = BTreeMap::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| CoreError::io(&file, e))?;
        let format_error = |message: String| CoreError::CheckpointFormat {
            path: file.clone(),
            message,
        };
        let tensors =
            SafeTensors::deserialize(&bytes).map_err(|e| format_error(format!("{e:?}")))?;
        for (name, view) in tensors.tensors() {
            let m = HostMatrix::from_view(&view, dtype_of(&name))
                .map_err(|m| format_error(format!("tensor `{name}`: {m}")))?;
            out.insert(name, m);
        }
    }
    Ok(out)
}

/// The shard files named in an HF `model.safetensors.index.json`, each once.
fn shard_files(index: &Path) -> Result<Vec<std::path::PathBuf>> {
    let text = crate::text::read_text(index).map_err(|e| CoreError::io(index, e))?;
    let format_error = |message: &str| CoreError::CheckpointFormat {
        path: index.to_path_buf(),
        message: message.into(),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| format_error("index is not JSON"))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format_error("index has no `weight_map` object"))?;
    let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    shards.sort_unstable();
    shards.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::Bf16, Dtype::F16];

    /// Deterministic values in `[-2, 2)`, a different run for each `seed`.
    fn spread(seed: u64, i: usize) -> f32 {
        (((i as u64 * 2654435761 + seed) % 1000) as f32 - 500.0) / 250.0
    }

    fn reference(w: &[f32], x: &[f32], out: usize, inp: usize) -> Vec<f32> {
        let n = x.len() / inp;
        let mut y = vec![0.0; n * out];
        for r in 0..n {
            for o in 0..out {
                y[r * out + o] = (0..inp)
                    .map(|i| w[o * inp + i] as f64 * x[r * inp + i] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    proptest! {
        /// `dy W` (the input gradient of `x W^T`) is the product of the stored values, to f32
        /// rounding, across panel boundaries (wide rows make panels of few rows).
        #[test]
        fn the_input_gradient_product_equals_the_stored_values_product(
            out in 1usize..40, inp in 1usize..70, n in 1usize..20, dtype_index in 0usize..3,
            wide in proptest::bool::ANY, seed in 0u64..1000,
        ) {
            let dtype = DTYPES[dtype_index];
            let inp = if wide { inp + PANEL_ELEMENTS / 8 } else { inp };
            let value = |i: usize| spread(seed, i);
            let w: Vec<f32> = (0..out * inp).map(value).collect();
            let dy: Vec<f32> = (0..n * out).map(|i| value(i + 3)).collect();
            let m = HostMatrix::from_f32(out, inp, w, dtype);
            let got = m.matmul(&dy);
            let stored = m.to_f32();
            for r in 0..n {
                for i in (0..inp).step_by(1 + inp / 97) {
                    let terms = (0..out).map(|o| dy[r * out + o] as f64 * stored[o * inp + i] as f64);
                    let want: f64 = terms.clone().sum();
                    let scale: f64 = terms.map(f64::abs).sum();
                    let g = got[r * inp + i] as f64;
                    prop_assert!((g - want).abs() <= 2e-6 * scale.max(1e-20), "[{r},{i}] {g} vs {want}");
                }
            }
        }
    }

    proptest! {
        /// The kernel and the `gemm` path compute the product of the stored (rounded) values,
        /// to f32 rounding, whatever the row count.
        #[test]
        fn products_equal_the_product_of_the_stored_values(
            out in 1usize..40, inp in 1usize..70, n in 1usize..40, dtype_index in 0usize..3,
            seed in 0u64..1000,
        ) {
            let dtype = DTYPES[dtype_index];
            let value = |i: usize| spread(seed, i);
            let w: Vec<f32> = (0..out * inp).map(value).collect();
            let x: Vec<f32> = (0..n * inp).map(|i| value(i + 7)).collect();
            let m = HostMatrix::from_f32(out, inp, w, dtype);
            let got = m.matmul_t(&x);
            let want = reference(&m.to_f32(), &x, out, inp);
            let stored = m.to_f32();
            for r in 0..n {
                for o in 0..out {
                    let scale: f32 = (0..inp).map(|i| (stored[o * inp + i] * x[r * inp + i]).abs()).sum();
                    let (g, w) = (got[r * out + o], want[r * out + o]);
                    prop_assert!((g - w).abs() <= 2e-6 * scale.max(1e-20), "[{r},{o}] {g} vs {w}");
                }
            }
        }
    }

    proptest! {
        /// `matmul_t_add` adds to what `y` held exactly the product `matmul_t` computes, to
        /// f32 rounding of the one addition, on both paths (few and many rows).
        #[test]
        fn the_accumulating_product_adds_the_product(
            out in 1usize..40, inp in 1usize..70, n in 1usize..40, dtype_index in 0usize..3,
            seed in 0u64..1000,
        ) {
            let dtype = DTYPES[dtype_index];
            let value = |i: usize| spread(seed, i);
            let m = HostMatrix::from_f32(out, inp, (0..out * inp).map(value).collect(), dtype);
            let x: Vec<f32> = (0..n * inp).map(|i| value(i + 11)).collect();
            let before: Vec<f32> = (0..n * out).map(|i| value(i + 13) * 4.0).collect();
            let mut y = before.clone();
            m.matmul_t_add(&x, &mut y);
            for ((got, b), p) in y.iter().zip(&before).zip(m.matmul_t(&x)) {
                let want = b + p;
                prop_assert!((got - want).abs() <= 2e-6 * (b.abs() + p.abs()).max(1e-20), "{got} vs {want}");
            }
        }
    }

    proptest! {
        /// Splitting the weight rows between threads changes no bit of the row kernels' result.
        #[test]
        fn a_split_product_equals_the_whole_one_bit_for_bit(
            out in 1usize..40, inp in 1usize..70, n in 1usize..=GEMM_ROWS, parts in 2usize..6,
            dtype_index in 0usize..3, seed in 0u64..1000,
        ) {
            let dtype = DTYPES[dtype_index];
            let value = |i: usize| spread(seed, i);
            let m = HostMatrix::from_f32(out, inp, (0..out * inp).map(value).collect(), dtype);
            let x: Vec<f32> = (0..n * inp).map(|i| value(i + 5)).collect();
            prop_assert_eq!(m.matmul_t_rows(&x, n, 1), m.matmul_t_rows(&x, n, parts));
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_and_kept_as_bits() {
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one (1.0).
        let m = HostMatrix::from_f32(1, 3, vec![1.0 + 1.0 / 256.0, 3.0e-3, -7.0], Dtype::Bf16);
        assert_eq!(m.dtype(), Dtype::Bf16);
        assert_eq!(m.bytes(), 6);
        assert_eq!(
            m.to_f32(),
            vec![1.0, half::bf16::from_f32(3.0e-3).to_f32(), -7.0]
        );
    }

    #[test]
    fn a_bf16_file_loads_bit_for_bit_and_f32_files_round() {
        let dir = tempfile::tempdir().unwrap();
        let values = [0.1f32, -2.7, 3.3e-3, 1e4, 0.0, -0.5];
        let bits: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let floats: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = [
            (
                "w",
                TensorView::new(SafeDtype::BF16, vec![2, 3], &bits).unwrap(),
            ),
            (
                "norm",
                TensorView::new(SafeDtype::F32, vec![6], &floats).unwrap(),
            ),
        ];
        let path = dir.path().join("m.safetensors");
        ::safetensors::serialize_to_file(views, &None, &path).unwrap();
        let read = read_matrices(
            &path,
            |name| {
                if name == "w" {
                    Dtype::Bf16
                } else {
                    Dtype::F32
                }
            },
        )
        .unwrap();
        let want: Vec<f32> = values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!((read["w"].rows(), read["w"].cols()), (2, 3));
        assert_eq!(read["w"].to_f32(), want);
        assert_eq!(read["norm"].to_f32(), values);
        let f16 = read_matrices(&path, |_| Dtype::F16).unwrap();
        assert_eq!(f16["w"].dtype(), Dtype::F16);
        assert_eq!(f16["w"].to_f32()[1], half::f16::from_f32(want[1]).to_f32());
    }

    #[test]
    fn a_bad_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.safetensors");
        std::fs::write(&path, b"not a checkpoint").unwrap();
        let err = read_matrices(&path, |_| Dtype::Bf16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken.safetensors"), "{err}");
    }
}
