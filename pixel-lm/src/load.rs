//! HF checkpoints in and out: `config.json` + `model.safetensors` (or shards with
//! `model.safetensors.index.json`), and LoRA adapters in their own small file.
use crate::config::T5Config;
use crate::dims::T5Dims;
use crate::error::{LmError, Result};
use crate::t5::T5;
use dfdx::prelude::*;
use pixel_core::checkpoint::{
    load_params_from_shards, mismatch, save_params, ShardIndex, StoredTensor, TensorStore,
};
use pixel_core::params::{ParamTensor, ParamVisitor, Params};
use pixel_core::CoreError;
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The adapters of one attention's `q` and `v`.
type LoraPair<P, D> =
    [Option<pixel_core::nn::LoraAdapter<<P as T5Dims>::Model, <P as T5Dims>::Inner, D>>; 2];

/// Copies of `shared.weight` that HF may store for tied embeddings.
const EMBED_DUPLICATES: [&str; 2] = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"];

/// The checkpoint of an HF model folder: `model.safetensors`, else the index
/// `model.safetensors.index.json` naming its shards.
pub fn checkpoint_path(dir: &Path) -> Result<PathBuf> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() {
        Ok(single)
    } else if index.exists() {
        Ok(index)
    } else {
        Err(LmError::NoCheckpoint(dir.to_path_buf()))
    }
}

impl<P: T5Dims, D: Device<f32>> T5<P, D> {
    /// Loads `dir/config.json` and its checkpoint into this preset, strictly.
    pub fn from_pretrained(dir: &Path, dev: &D) -> Result<Self> {
        let config = T5Config::from_file(&dir.join("config.json"))?;
        let mut model = T5::new(dev, &config)?;
        model.load_checkpoint(dir)?;
        Ok(model)
    }

    /// Loads the checkpoint of an HF model folder ([`checkpoint_path`]), strictly, as
    /// [`Self::load_store`] does. A sharded checkpoint loads shard by shard, each read, loaded
    /// and dropped before the next, so that it is never in memory whole besides the model (a
    /// model keeping its frozen weights in bf16 loads a bf16 Flan-T5-XL in 5.7 GB plus one
    /// shard). f32, f16 and bf16 files all load; 16-bit values are exact in f32.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let path = checkpoint_path(dir)?;
        let sharded = path.extension().is_some_and(|e| e == "json");
        if !sharded {
            return self.load_store(&TensorStore::read(&path)?);
        }
        let index = ShardIndex::read(&path)?;
        let mut found = HashSet::new();
        let shards = index.shards.iter().map(|shard| {
            let store = TensorStore::read(shard)?;
            found.extend(store.tensors.keys().cloned());
            Ok(store)
        });
        self.load_shards(&path, shards)?;
        Ok(index.check_found(|name| found.contains(name))?)
    }

    /// Loads every parameter from `store`, strictly: one error lists every missing, unexpected
    /// and misshapen tensor. `encoder.embed_tokens.weight` / `decoder.embed_tokens.weight` are
    /// accepted when they equal `shared.weight` (HF stores them for tied embeddings); so is
    /// `lm_head.weight` equal to `shared.weight` in a tied model.
    pub fn load_store(&mut self, store: &TensorStore) -> Result<()> {
        self.load_shards(&store.origin, [Ok(store)])
    }

    /// [`Self::load_store`] over the shards of one checkpoint (`origin`), one at a time.
    fn load_shards<S: Borrow<TensorStore>>(
        &mut self,
        origin: &Path,
        shards: impl IntoIterator<Item = pixel_core::Result<S>>,
    ) -> Result<()> {
        let mut duplicates: Vec<&str> = EMBED_DUPLICATES.to_vec();
        if self.lm_head.is_none() {
            duplicates.push("lm_head.weight");
        }
        // Copies of `shared.weight` are checked once every shard has loaded, against the
        // loaded embedding (they may sit in another shard than it).
        let mut copies: Vec<(String, StoredTensor)> = Vec::new();
        let mut shared_seen = false;
        let loaded = load_params_from_shards(self, origin, shards, |store| {
            shared_seen |= store.get("shared.weight").is_some();
            duplicates
                .iter()
                .filter_map(|&name| {
                    copies.push((name.to_string(), store.get(name)?.clone()));
                    Some(name.to_string())
                })
                .collect()
        });
        let shared = self.shared.weight.as_vec();
        let differing = copies
            .iter()
            .filter(|(_, copy)| shared_seen && copy.to_f32() != shared)
            .map(|(name, _)| {
                format!("tensor `{name}` differs from `shared.weight`, but this model ties them")
            });
        let mut problems = match loaded {
            Ok(()) => Vec::new(),
            Err(CoreError::CheckpointMismatch { problems, .. }) => problems,
            Err(e) => return Err(e.into()),
        };
        problems.extend(differing);
        Ok(mismatch(origin, problems)?)
    }

    /// [`Self::load_checkpoint`] for a model with LoRA adapters: the base weights load
    /// strictly from the folder `dir` (a base checkpoint, without adapters), and the adapters
    /// stay as they are.
    pub fn load_base_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let lora = self.take_lora();
        let loaded = self.load_checkpoint(dir);
        self.put_lora(lora);
        loaded
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (f32), loadable by HF and by
    /// [`T5::from_pretrained`]. LoRA adapters, if any, are not included: see [`T5::save_lora`].
    pub fn save_pretrained(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
        let json = serde_json::to_string_pretty(&self.config)
            .map_err(|e| LmError::Invalid(format!("cannot serialize the config: {e}")))?;
        pixel_core::checkpoint::write_atomic(&dir.join("config.json"), json.as_bytes())?;
        let lora = self.take_lora();
        let saved = save_params(
            self,
            &dir.join("model.safetensors"),
            HashMap::from([("format".to_string(), "pt".to_string())]),
        );
        self.put_lora(lora);
        Ok(saved?)
    }

    /// Saves only the LoRA adapters (`*.lora_A.weight`, `*.lora_B.weight`) with their rank and
    /// scale in the file's metadata.
    pub fn save_lora(&mut self, path: &Path) -> Result<()> {
        let (rank, scale) = self
            .lora()
            .ok_or_else(|| LmError::Invalid("the model has no LoRA adapters to save".into()))?;
        let mut store = TensorStore {
            origin: path.to_path_buf(),
            ..Default::default()
        };
        store.metadata.insert("lora_rank".into(), rank.to_string());
        store
            .metadata
            .insert("lora_scale".into(), scale.to_string());
        let mut collector = LoraCollector { store: &mut store };
        self.visit_params("", &mut collector)?;
        Ok(store.write(path)?)
    }

    /// Loads adapters saved by [`T5::save_lora`], attaching them first (rank and scale from the
    /// file). Strict: every adapter tensor must be present with the right shape, and nothing else.
    pub fn load_lora(&mut self, path: &Path) -> Result<()> {
        let store = TensorStore::read(path)?;
        let meta = |key: &str| -> Result<String> {
            store.metadata.get(key).cloned().ok_or_else(|| {
                LmError::Invalid(format!(
                    "LoRA file `{}` lacks the `{key}` metadata entry",
                    path.display()
                ))
            })
        };
        let bad =
            |key: &str| LmError::Invalid(format!("LoRA file `{}`: bad `{key}`", path.display()));
        let rank: usize = meta("lora_rank")?.parse().map_err(|_| bad("lora_rank"))?;
        let scale: f32 = meta("lora_scale")?.parse().map_err(|_| bad("lora_scale"))?;
        let dev = self.device();
        self.add_lora(&dev, rank, scale);
        let mut loader = LoraLoader {
            store: &store,
            used: Vec::new(),
            problems: Vec::new(),
        };
        self.visit_params("", &mut loader)?;
        let mut problems = loader.problems;
        for name in store.tensors.keys() {
            if !loader.used.contains(name) {
                problems.push(format!(
                    "unexpected tensor `{name}` (the model has no such adapter)"
                ));
            }
        }
        Ok(mismatch(path, problems)?)
    }

    fn take_lora(&mut self) -> Vec<LoraPair<P, D>> {
        let mut out = Vec::new();
        for block in self
            .encoder
            .block
            .iter_mut()
            .chain(self.decoder.block.iter_mut())
        {
            out.push([
                block.self_attention.q.lora.take(),
                block.self_attention.v.lora.take(),
            ]);
            if let Some((cross, _)) = &mut block.cross_attention {
                out.push([cross.q.lora.take(), cross.v.lora.take()]);
            }
        }
        out
    }

    fn put_lora(&mut self, lora: Vec<LoraPair<P, D>>) {
        let mut lora = lora.into_iter();
        for block in self
            .encoder
            .block
            .iter_mut()
            .chain(self.decoder.block.iter_mut())
        {
            let [q, v] = lora.next().expect("as many adapters as taken");
            block.self_attention.q.lora = q;
            block.self_attention.v.lora = v;
            if let Some((cross, _)) = &mut block.cross_attention {
                let [q, v] = lora.next().expect("as many adapters as taken");
                cross.q.lora = q;
                cross.v.lora = v;
            }
        }
    }
}

fn is_lora(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

struct LoraCollector<'a> {
    store: &'a mut TensorStore,
}

impl<D: Device<f32>> ParamVisitor<D> for LoraCollector<'_> {
    fn visit(&mut self, name: &str, t: &mut dyn ParamTensor<D>) -> pixel_core::Result<()> {
        if is_lora(name) {
            self.store
                .insert(name, StoredTensor::f32(t.dims(), t.values()));
        }
        Ok(())
    }
}

struct LoraLoader<'a> {
    store: &'a TensorStore,
    used: Vec<String>,
    problems: Vec<String>,
}

impl<D: Device<f32>> ParamVisitor<D> for LoraLoader<'_> {
    fn visit(&mut self, name: &str, t: &mut dyn ParamTensor<D>) -> pixel_core::Result<()> {
        if !is_lora(name) {
            return Ok(());
        }
        match self.store.get(name) {
            None => self
                .problems
                .push(format!("missing tensor `{name}` (shape {:?})", t.dims())),
            Some(stored) if stored.shape != t.dims() => self.problems.push(format!(
                "tensor `{name}` has shape {:?}, the model expects {:?}",
                stored.shape,
                t.dims()
            )),
            Some(stored) => {
                t.set_values(&stored.to_f32())?;
                self.used.push(name.to_string());
            }
        }
        Ok(())
    }
}
