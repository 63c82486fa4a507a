//! Safetensors checkpoints: strict loading into [`Params`] modules, atomic saving.
//!
//! Loading reports every missing, unexpected and misshapen tensor in one error, so a user
//! fixing a converted checkpoint sees the whole list at once. Half-precision tensors (f16, bf16)
//! are converted to f32 on load, since dfdx computes in f32 here.
use crate::error::{CoreError, Result};
use crate::params::{glob_match, ParamTensor, ParamVisitor, Params};
use ::safetensors::tensor::{Dtype as SafeDtype, SafeTensors, TensorView};
use dfdx::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Values of one stored tensor: floats are widened to f32, integers to i64.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorValues {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One tensor read from a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    pub values: TensorValues,
    /// The dtype it had on disk, e.g. "BF16".
    pub disk_dtype: String,
}

impl StoredTensor {
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Self {
        StoredTensor {
            shape,
            values: TensorValues::F32(values),
            disk_dtype: "F32".into(),
        }
    }

    pub fn i64(shape: Vec<usize>, values: Vec<i64>) -> Self {
        StoredTensor {
            shape,
            values: TensorValues::I64(values),
            disk_dtype: "I64".into(),
        }
    }

    /// The values as f32; integer tensors are converted.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.values {
            TensorValues::F32(v) => v.clone(),
            TensorValues::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as i64, or `None` for a float tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.values {
            TensorValues::I64(v) => Some(v),
            TensorValues::F32(_) => None,
        }
    }
}

/// Named tensors from one safetensors file or a sharded checkpoint, with where they came from.
#[derive(Debug, Clone, Default)]
pub struct TensorStore {
    pub tensors: BTreeMap<String, StoredTensor>,
    pub metadata: HashMap<String, String>,
    /// The file (or index) the tensors were read from, for error messages.
    pub origin: PathBuf,
}

impl TensorStore {
    /// Reads a `.safetensors` file, or a sharded checkpoint through its `*.index.json`.
    pub fn read(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "json") {
            return Self::read_sharded(path);
        }
        let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
        let mut store = TensorStore {
            origin: path.to_path_buf(),
            ..Default::default()
        };
        store.add_file(path, &bytes)?;
        Ok(store)
    }

    /// Reads every shard named in a HF `model.safetensors.index.json`.
    pub fn read_sharded(index_path: &Path) -> Result<Self> {
        let index = ShardIndex::read(index_path)?;
        let mut store = TensorStore {
            origin: index_path.to_path_buf(),
            ..Default::default()
        };
        for shard_path in &index.shards {
            let bytes = std::fs::read(shard_path).map_err(|e| CoreError::io(shard_path, e))?;
            store.add_file(shard_path, &bytes)?;
        }
        index.check_found(|name| store.tensors.contains_key(name))?;
        Ok(store)
    }

    fn add_file(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let format_error = |message: String| CoreError::CheckpointFormat {
            path: path.to_path_buf(),
            message,
        };
        let explain = |e| format_error(explain_safetensors_error(e, bytes.len()));
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(explain)?;
        if let Some(meta) = header.metadata() {
            self.metadata.extend(meta.clone());
        }
        let file = SafeTensors::deserialize(bytes).map_err(explain)?;
        for (name, view) in file.tensors() {
            let tensor =
                decode(&view).map_err(|m| format_error(format!("tensor `{name}`: {m}")))?;
            self.tensors.insert(name, tensor);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.get(name)
    }

    /// The tensor called `name`, or an error naming the file.
    pub fn require(&self, name: &str) -> Result<&StoredTensor> {
        self.get(name).ok_or_else(|| CoreError::CheckpointMismatch {
            path: self.origin.clone(),
            problems: vec![format!("missing tensor `{name}`")],
        })
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: StoredTensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Writes all tensors (as f32 / i64) and the metadata; atomic, see [`write_atomic`].
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes: Vec<(String, Vec<u8>, SafeDtype, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let (data, dtype) = match &t.values {
                    TensorValues::F32(v) => (
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        SafeDtype::F32,
                    ),
                    TensorValues::I64(v) => (
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        SafeDtype::I64,
                    ),
                };
                (name.clone(), data, dtype, t.shape.clone())
            })
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for (name, data, dtype, shape) in &bytes {
            let view = TensorView::new(*dtype, shape.clone(), data).map_err(|e| {
                CoreError::CheckpointFormat {
                    path: path.to_path_buf(),
                    message: format!("tensor `{name}`: {e:?}"),
                }
            })?;
            views.push((name.clone(), view));
        }
        let metadata = (!self.metadata.is_empty()).then(|| self.metadata.clone());
        let serialized = ::safetensors::tensor::serialize(views, &metadata).map_err(|e| {
            CoreError::CheckpointFormat {
                path: path.to_path_buf(),
                message: format!("{e:?}"),
            }
        })?;
        write_atomic(path, &serialized)
    }
}

fn decode(view: &TensorView<'_>) -> std::result::Result<StoredTensor, String> {
    let data = view.data();
    let shape = view.shape().to_vec();
    let dtype = view.dtype();
    let values = match dtype {
        SafeDtype::F32 => TensorValues::F32(chunks(data, f32::from_le_bytes)),
        SafeDtype::F64 => {
            TensorValues::F32(chunks(data, |b: [u8; 8]| f64::from_le_bytes(b) as f32))
        }
        SafeDtype::F16 => TensorValues::F32(chunks(data, |b: [u8; 2]| {
            half::f16::from_le_bytes(b).to_f32()
        })),
        SafeDtype::BF16 => TensorValues::F32(chunks(data, |b: [u8; 2]| {
            half::bf16::from_le_bytes(b).to_f32()
        })),
        SafeDtype::I64 => TensorValues::I64(chunks(data, i64::from_le_bytes)),
        SafeDtype::I32 => {
            TensorValues::I64(chunks(data, |b: [u8; 4]| i32::from_le_bytes(b) as i64))
        }
        SafeDtype::BOOL | SafeDtype::U8 => {
            TensorValues::I64(data.iter().map(|&b| b as i64).collect())
        }
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (use f32, f16, bf16, f64, i64, i32, u8 or bool)"
            ))
        }
    };
    Ok(StoredTensor {
        shape,
        values,
        disk_dtype: format!("{dtype:?}"),
    })
}

fn chunks<const N: usize, T>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            f(b)
        })
        .collect()
}

/// Writes `bytes` to `path` through a temporary file in the same folder, synced, then renamed
/// over `path` (tempfile's `persist`), so a crash mid-write leaves the previous file intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let write = || -> std::io::Result<()> {
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(bytes)?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|e| CoreError::io(path, e))
}

/// How strictly a checkpoint must match a module.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Stored tensors matching any of these globs are not reported as unexpected.
    pub ignore_unexpected: Vec<String>,
    /// When false, tensors the model has but the file lacks keep their values.
    pub allow_missing: bool,
}

impl LoadOptions {
    pub fn strict() -> Self {
        LoadOptions::default()
    }
}

/// The shards a HF `model.safetensors.index.json` names, and the tensors it lists.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    pub path: PathBuf,
    /// The shard files, in name order.
    pub shards: Vec<PathBuf>,
    /// Every tensor the index lists.
    pub tensors: Vec<String>,
}

impl ShardIndex {
    pub fn read(index_path: &Path) -> Result<Self> {
        let text = crate::text::read_text(index_path).map_err(|e| CoreError::io(index_path, e))?;
        let index: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CoreError::CheckpointFormat {
                path: index_path.to_path_buf(),
                message: format!("index is not JSON: {e}"),
            })?;
        let weight_map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| CoreError::CheckpointFormat {
                path: index_path.to_path_buf(),
                message: "index has no `weight_map` object".into(),
            })?;
        let mut shards: Vec<&str> = weight_map.values().filter_map(|v| v.as_str()).collect();
        shards.sort_unstable();
        shards.dedup();
        let dir = index_path.parent().unwrap_or(Path::new("."));
        Ok(ShardIndex {
            path: index_path.to_path_buf(),
            shards: shards.into_iter().map(|s| dir.join(s)).collect(),
            tensors: weight_map.keys().cloned().collect(),
        })
    }

    /// An error naming every listed tensor that `found` says no shard held.
    pub fn check_found(&self, found: impl Fn(&str) -> bool) -> Result<()> {
        let missing: Vec<String> = self
            .tensors
            .iter()
            .filter(|name| !found(name))
            .map(|name| format!("`{name}` is listed in the index but in no shard"))
            .collect();
        mismatch(&self.path, missing)
    }
}

/// What value problems and unexpected tensors one store (a checkpoint, or one shard of it)
/// showed, and which tensors it loaded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartialLoad {
    pub loaded: Vec<String>,
    pub problems: Vec<String>,
}

/// What a safetensors parse error means for a file of `len` bytes, and what to do about it.
fn explain_safetensors_error(e: ::safetensors::SafeTensorError, len: usize) -> String {
    use ::safetensors::SafeTensorError as E;
    let damaged = "the file is damaged or was cut short (an interrupted copy or download?); \
                   write or fetch it again";
    match e {
        E::HeaderTooSmall => format!(
            "it has {len} bytes, fewer than the 8-byte header length a safetensors file starts with: {damaged}"
        ),
        E::HeaderTooLarge | E::InvalidHeaderLength => format!(
            "its first 8 bytes declare a header longer than the file ({len} bytes) allows: it is not a safetensors file, or {damaged}"
        ),
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization | E::JsonError(_) => format!(
            "its header is not the JSON object a safetensors file holds (not UTF-8, not starting with `{{`, or not valid JSON): {damaged}"
        ),
        E::InvalidOffset(name) => format!(
            "the header puts tensor `{name}` at byte offsets that overlap another tensor or leave the file: {damaged}"
        ),
        E::TensorInvalidInfo | E::InvalidTensorView(..) | E::ValidationOverflow => format!(
            "the header gives a tensor a shape and dtype that do not fit its byte range: {damaged}"
        ),
        E::MetadataIncompleteBuffer => format!(
            "its tensors do not cover the data after the header exactly ({len} bytes in all): {damaged}"
        ),
        E::TensorNotFound(name) => format!("it has no tensor `{name}`"),
        E::IoError(err) => format!("cannot read it: {err}"),
    }
}

struct Loader<'a> {
    store: &'a TensorStore,
    prefix: &'a str,
    used: Vec<String>,
    problems: Vec<String>,
    allow_missing: bool,
}

impl<'a, D: Device<f32>> ParamVisitor<D> for Loader<'a> {
    fn visit(&mut self, name: &str, tensor: &mut dyn ParamTensor<D>) -> Result<()> {
        let stored_name = crate::params::join(self.prefix, name);
        let Some(stored) = self.store.get(&stored_name) else {
            if !self.allow_missing {
                self.problems.push(format!(
                    "missing tensor `{stored_name}` (shape {:?})",
                    tensor.dims()
                ));
            }
            return Ok(());
        };
        self.used.push(stored_name.clone());
        let expected = tensor.dims();
        if stored.shape != expected {
            self.problems.push(format!(
                "tensor `{stored_name}` has shape {:?}, the model expects {expected:?}",
                stored.shape
            ));
            return Ok(());
        }
        match &stored.values {
            TensorValues::F32(v) => match v.iter().position(|x| !x.is_finite()) {
                Some(at) => self.problems.push(format!(
                    "tensor `{stored_name}` holds a non-finite value ({} at index {at}; {} of {} entries are NaN or inf): the checkpoint is poisoned, load an earlier one",
                    v[at],
                    v.iter().filter(|x| !x.is_finite()).count(),
                    v.len()
                )),
                None => tensor.set_values(v)?,
            },
            TensorValues::I64(_) => self.problems.push(format!(
                "tensor `{stored_name}` holds integers ({}), the model expects floats",
                stored.disk_dtype
            )),
        }
        Ok(())
    }
}

/// Loads the tensors of `store` that `module` has (named `prefix.<param name>`) and says which;
/// the module's other parameters are left as they are. Problems are misshapen, integer and
/// non-finite tensors, and tensors under `prefix` that the module lacks unless
/// `ignore_unexpected` matches them (globs).
pub fn load_params_present<D: Device<f32>, M: Params<D> + ?Sized>(
    module: &mut M,
    store: &TensorStore,
    prefix: &str,
    ignore_unexpected: &[String],
) -> Result<PartialLoad> {
    let mut loader = Loader {
        store,
        prefix,
        used: Vec::new(),
        problems: Vec::new(),
        allow_missing: true,
    };
    module.visit_params("", &mut loader)?;
    let mut problems = loader.problems;
    problems.extend(unexpected(store, prefix, &loader.used, ignore_unexpected));
    Ok(PartialLoad {
        loaded: loader.used,
        problems,
    })
}

/// The tensors of `store` under `prefix` that are neither `used` nor ignored, as problems.
fn unexpected(
    store: &TensorStore,
    prefix: &str,
    used: &[String],
    ignore_unexpected: &[String],
) -> Vec<String> {
    let used: std::collections::HashSet<&String> = used.iter().collect();
    store
        .tensors
        .keys()
        .filter(|name| {
            let under_prefix = prefix.is_empty() || name.starts_with(&format!("{prefix}."));
            let ignored = ignore_unexpected.iter().any(|p| glob_match(p, name));
            under_prefix && !used.contains(name) && !ignored
        })
        .map(|name| format!("unexpected tensor `{name}` (the model has no such parameter)"))
        .collect()
}

/// Loads every parameter of `module` from the stores `shards` yields, strictly over all of
/// them: each parameter must be in one of them. A store is dropped before the next is read,
/// so a sharded checkpoint is never in memory whole besides the model. `ignore(store)` names
/// the tensors of a store that are not unexpected (globs). Every problem of every shard is
/// gathered into one [`CoreError::CheckpointMismatch`] naming `origin`.
pub fn load_params_from_shards<D, M, S>(
    module: &mut M,
    origin: &Path,
    shards: impl IntoIterator<Item = Result<S>>,
    mut ignore: impl FnMut(&TensorStore) -> Vec<String>,
) -> Result<()>
where
    D: Device<f32>,
    M: Params<D> + ?Sized,
    S: std::borrow::Borrow<TensorStore>,
{
    let mut loaded = std::collections::HashSet::new();
    let mut problems = Vec::new();
    for shard in shards {
        let shard = shard?;
        let store = shard.borrow();
        let part = load_params_present(module, store, "", &ignore(store))?;
        loaded.extend(part.loaded);
        problems.extend(part.problems);
    }
    for param in crate::params::list_params(module) {
        if !loaded.contains(&param.name) {
            problems.push(format!(
                "missing tensor `{}` (shape {:?})",
                param.name, param.shape
            ));
        }
    }
    mismatch(origin, problems)
}

/// Loads the tensors named `prefix.<param name>` from `store` into `module`.
///
/// Every problem (missing, unexpected, misshapen, wrong dtype, NaN or inf values) is gathered
/// into one [`CoreError::CheckpointMismatch`]. Unexpected tensors are those under `prefix` that
/// the module does not have. On error the module may be partly loaded.
pub fn load_params<D: Device<f32>, M: Params<D> + ?Sized>(
    module: &mut M,
    store: &TensorStore,
    prefix: &str,
    options: &LoadOptions,
) -> Result<()> {
    let mut loader = Loader {
        store,
        prefix,
        used: Vec::new(),
        problems: Vec::new(),
        allow_missing: options.allow_missing,
    };
    module.visit_params("", &mut loader)?;
    let mut problems = loader.problems;
    problems.extend(unexpected(
        store,
        prefix,
        &loader.used,
        &options.ignore_unexpected,
    ));
    mismatch(&store.origin, problems)
}

/// `Ok` without `problems`, else one [`CoreError::CheckpointMismatch`] listing them for `path`.
pub fn mismatch(path: &Path, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CoreError::CheckpointMismatch {
            path: path.to_path_buf(),
            problems,
        })
    }
}

struct Collector<'a> {
    store: &'a mut TensorStore,
    prefix: &'a str,
}

impl<'a, D: Device<f32>> ParamVisitor<D> for Collector<'a> {
    fn visit(&mut self, name: &str, tensor: &mut dyn ParamTensor<D>) -> Result<()> {
        self.store.insert(
            crate::params::join(self.prefix, name),
            StoredTensor::f32(tensor.dims(), tensor.values()),
        );
        Ok(())
    }
}

/// Copies every parameter of `module` into `store` as `prefix.<name>`.
pub fn collect_params<D: Device<f32>, M: Params<D> + ?Sized>(
    module: &mut M,
    store: &mut TensorStore,
    prefix: &str,
) -> Result<()> {
    module.visit_params("", &mut Collector { store, prefix })
}

/// Saves all parameters of `module` (and `metadata`) to `path`, atomically.
pub fn save_params<D: Device<f32>, M: Params<D> + ?Sized>(
    module: &mut M,
    path: &Path,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut store = TensorStore {
        metadata,
        origin: path.to_path_buf(),
        ..Default::default()
    };
    collect_params(module, &mut store, "")?;
    store.write(path)
}

/// Loads all parameters of `module` from the file at `path`, strictly.
pub fn load_params_file<D: Device<f32>, M: Params<D> + ?Sized>(
    module: &mut M,
    path: &Path,
) -> Result<TensorStore> {
    let store = TensorStore::read(path)?;
    load_params(module, &store, "", &LoadOptions::strict())?;
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Linear;

    #[test]
    fn a_checkpoint_with_nan_or_inf_is_refused_naming_the_tensor() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let mut lin = Linear::<Const<2>, Const<3>, Cpu>::new(&dev, true);
        let mut store = TensorStore::default();
        collect_params(&mut lin, &mut store, "").unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            let mut poisoned = store.clone();
            poisoned.insert("bias", StoredTensor::f32(vec![3], vec![0.0, bad, 1.0]));
            let err = load_params(&mut lin, &poisoned, "", &LoadOptions::strict())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("tensor `bias` holds a non-finite value") && err.contains("index 1"),
                "{err}"
            );
        }
        load_params(&mut lin, &store, "", &LoadOptions::strict()).unwrap();
    }

    /// A valid two-tensor file's bytes: 8-byte header length, JSON header, data.
    fn valid_file() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TensorStore::default();
        store.insert("a", StoredTensor::f32(vec![2], vec![1.0, 2.0]));
        store.insert("b", StoredTensor::f32(vec![2], vec![3.0, 4.0]));
        store.write(&dir.path().join("x.safetensors")).unwrap();
        std::fs::read(dir.path().join("x.safetensors")).unwrap()
    }

    fn header_of(bytes: &[u8]) -> (usize, String) {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (n, String::from_utf8(bytes[8..8 + n].to_vec()).unwrap())
    }

    /// `bytes` with its header replaced (padded with spaces to the old length).
    fn with_header(bytes: &[u8], header: &str) -> Vec<u8> {
        let (n, _) = header_of(bytes);
        assert!(header.len() <= n);
        let mut out = bytes[..8].to_vec();
        out.extend(format!("{header:<n$}").bytes());
        out.extend(&bytes[8 + n..]);
        out
    }

    #[test]
    fn corrupt_safetensors_files_are_explained_in_words() {
        let good = valid_file();
        let (n, header) = header_of(&good);
        let mut huge_length = good.clone();
        huge_length[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let overlapping = with_header(
            &good,
            &header.replace("\"data_offsets\":[8,16]", "\"data_offsets\":[4,12]"),
        );
        let outside = with_header(
            &good,
            &header.replace("\"data_offsets\":[8,16]", "\"data_offsets\":[8,99]"),
        );
        assert_ne!(overlapping, good, "the header layout changed: {header}");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "fewer than the 8-byte header length"),
            (
                "truncated header",
                good[..8 + n / 2].to_vec(),
                "declare a header longer than the file",
            ),
            (
                "truncated data",
                good[..good.len() - 3].to_vec(),
                "do not cover the data",
            ),
            (
                "huge header length",
                huge_length,
                "declare a header longer than the file",
            ),
            (
                "not JSON",
                with_header(&good, "{not json"),
                "not the JSON object",
            ),
            (
                "overlapping offsets",
                overlapping,
                "overlap another tensor or leave the file",
            ),
            ("offsets past the end", outside, "do not"),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (what, bytes, expected) in cases {
            let path = dir.path().join("bad.safetensors");
            std::fs::write(&path, &bytes).unwrap();
            let err = TensorStore::read(&path).unwrap_err().to_string();
            assert!(
                err.contains("bad.safetensors")
                    && err.contains(expected)
                    && !err.contains("InvalidOffset"),
                "{what}: {err}"
            );
        }
    }
}
