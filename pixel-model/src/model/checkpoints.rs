//! A PixelLLM composed from its components' own checkpoints (`[model.checkpoints]`): SAM's image
//! and prompt encoders from a HF `SamModel` folder or a segment-anything checkpoint, EVA02 from
//! a timm state dict, T5 from a HF folder. Each loads strictly: every missing, unexpected or
//! misshapen tensor is named in one error with its file and the config key. A folder's
//! `config.json` must also agree with the preset on what no tensor shape shows (epsilons,
//! activations, distances). What no checkpoint fills starts from scratch, and the
//! [`LoadReport`] lists it.
//!
//! The weights are read as f32 (16-bit files are widened exactly), one tensor at a time into
//! the model, and a sharded T5 one shard at a time. With `model.frozen_dtype` the frozen linear
//! weights were moved to the host when the model was built, so each loaded value is narrowed
//! into that storage as it arrives: a bf16 Flan-T5-XL loads bit for bit into 5.7 GB, and no
//! second copy of the checkpoint is held.
use crate::error::{ModelError, Result};
use crate::heads::HeadRegistry;
use crate::model::layout::{parameters_by_part, PartCount, PARTS};
use crate::model::{ComponentCheckpoints, ModelConfig, PixelLlm};
use crate::presets::PixelDims;
use dfdx::prelude::*;
use pixel_core::checkpoint::TensorStore;
use pixel_core::params::{list_params, Trainable};
use pixel_lm::config::T5Config;
use pixel_vision::sam::{SamConfig, SamVisionConfig};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// One component checkpoint that was read.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedCheckpoint {
    /// The config key that named it (`model.checkpoints.sam`).
    pub key: &'static str,
    pub path: PathBuf,
    /// The parts it filled ([`PARTS`] names).
    pub parts: Vec<&'static str>,
    /// Tensors loaded into the model.
    pub tensors: usize,
    /// Tensors of the file the model does not use (SAM's mask decoder).
    pub unused: Vec<String>,
}

/// What `PixelLlm::load_components` loaded and what starts from scratch.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub loaded: Vec<LoadedCheckpoint>,
    /// The parts no checkpoint filled, with their parameter counts.
    pub from_scratch: Vec<PartCount>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.loaded {
            write!(
                f,
                "loaded {} from `{}` ({}): {} tensors",
                c.parts.join(" and "),
                c.path.display(),
                c.key,
                c.tensors
            )?;
            if !c.unused.is_empty() {
                write!(f, "; {} tensors of the file not used", c.unused.len())?;
                if let Some(first) = c.unused.first() {
                    write!(f, " ({first}, ...)")?;
                }
            }
            writeln!(f)?;
        }
        for p in &self.from_scratch {
            writeln!(f, "from scratch: {} ({} parameters)", p.part, p.parameters)?;
        }
        Ok(())
    }
}

impl<P: PixelDims, D: Device<f32> + pixel_core::ThreadSafe> PixelLlm<P, D> {
    /// A model of `config` ([`Self::new`]) whose components are loaded from
    /// `config.checkpoints`, and the report of what was loaded and what starts from scratch.
    pub fn from_checkpoints(
        dev: &D,
        config: &ModelConfig,
        registry: &HeadRegistry<P, D>,
    ) -> Result<(Self, LoadReport)> {
        let mut model = Self::new(dev, config, registry)?;
        let report = model.load_components(&config.checkpoints)?;
        Ok((model, report))
    }

    /// Loads each component `checkpoints` names into this model, strictly (see the module
    /// docs); on error the model may be partly loaded.
    pub fn load_components(&mut self, checkpoints: &ComponentCheckpoints) -> Result<LoadReport> {
        let mut loaded = Vec::new();
        if let Some(path) = &checkpoints.sam {
            let key = "model.checkpoints.sam";
            let store = read_sam::<P>(path).map_err(|m| checkpoint_error(key, path, m))?;
            let unused = pixel_vision::sam::load_encoders(
                &mut self.image_encoder.sam,
                &mut self.prompt_encoder,
                &store,
            )
            .map_err(|e| checkpoint_error(key, path, e.to_string()))?;
            loaded.push(LoadedCheckpoint {
                key,
                path: path.clone(),
                parts: vec![PARTS[0], PARTS[2]],
                tensors: list_params(&mut self.image_encoder.sam).len()
                    + list_params(&mut self.prompt_encoder).len(),
                unused,
            });
        }
        if let Some(path) = &checkpoints.eva02 {
            let key = "model.checkpoints.eva02";
            let store =
                TensorStore::read(path).map_err(|e| checkpoint_error(key, path, e.to_string()))?;
            self.image_encoder
                .eva
                .load_store(&store)
                .map_err(|e| checkpoint_error(key, path, e.to_string()))?;
            loaded.push(LoadedCheckpoint {
                key,
                path: path.clone(),
                parts: vec![PARTS[1]],
                tensors: list_params(&mut self.image_encoder.eva).len(),
                unused: Vec::new(),
            });
        }
        if let Some(path) = &checkpoints.t5 {
            let key = "model.checkpoints.t5";
            check_t5_config::<P>(path).map_err(|m| checkpoint_error(key, path, m))?;
            self.language_model
                .load_base_checkpoint(path)
                .map_err(|e| checkpoint_error(key, path, e.to_string()))?;
            let lora = list_params(&mut self.language_model)
                .iter()
                .filter(|p| p.name.contains(".lora_"))
                .count();
            loaded.push(LoadedCheckpoint {
                key,
                path: path.clone(),
                parts: vec![PARTS[6]],
                tensors: list_params(&mut self.language_model).len() - lora,
                unused: Vec::new(),
            });
        }
        let filled: Vec<&str> = loaded.iter().flat_map(|c| c.parts.clone()).collect();
        let from_scratch = parameters_by_part(&list_params(self), &Trainable::all())
            .into_iter()
            .filter(|p| !filled.contains(&p.part))
            .collect();
        Ok(LoadReport {
            loaded,
            from_scratch,
        })
    }
}

fn checkpoint_error(key: &str, path: &Path, message: impl fmt::Display) -> ModelError {
    ModelError::Config {
        key: key.to_string(),
        message: format!("`{}`: {message}", path.display()),
    }
}

/// A SAM checkpoint: a HF `SamModel` folder (whose `config.json` must agree with the preset's
/// image encoder) or one safetensors file (HF or segment-anything names).
fn read_sam<P: PixelDims>(path: &Path) -> std::result::Result<TensorStore, String> {
    if !path.is_dir() {
        return TensorStore::read(path).map_err(|e| e.to_string());
    }
    let config_path = path.join("config.json");
    let theirs = SamConfig::from_file(&config_path).map_err(|e| e.to_string())?;
    let problems = differences(
        &resolved(P::sam()),
        &resolved(theirs.vision_config),
        "vision_config",
    );
    if !problems.is_empty() {
        return Err(format!(
            "config.json differs from preset {}: {}",
            P::NAME,
            problems.join("; ")
        ));
    }
    let index = path.join("model.safetensors.index.json");
    let read = if index.exists() {
        TensorStore::read_sharded(&index)
    } else {
        TensorStore::read(&path.join("model.safetensors"))
    };
    read.map_err(|e| e.to_string())
}

/// `mlp_dim` spelled out, so a config that derives it from `mlp_ratio` compares equal.
fn resolved(mut config: SamVisionConfig) -> SamVisionConfig {
    config.mlp_dim = Some(config.mlp_dim());
    config.mlp_ratio = config.mlp_dim() as f64 / config.hidden_size as f64;
    config
}

/// A HF T5 folder's `config.json` agrees with the preset's language model in every field the
/// model reads (dims and layer counts also show in the tensors; epsilon, buckets, distance and
/// activation do not).
fn check_t5_config<P: PixelDims>(dir: &Path) -> std::result::Result<(), String> {
    let theirs = T5Config::from_file(&dir.join("config.json")).map_err(|e| e.to_string())?;
    let ours = P::language_model();
    let fields = |c: &T5Config| {
        serde_json::json!({
            "vocab_size": c.vocab_size,
            "d_model": c.d_model,
            "d_kv": c.d_kv,
            "d_ff": c.d_ff,
            "num_layers": c.num_layers,
            "num_decoder_layers": c.decoder_layers(),
            "num_heads": c.num_heads,
            "relative_attention_num_buckets": c.relative_attention_num_buckets,
            "relative_attention_max_distance": c.relative_attention_max_distance,
            "layer_norm_epsilon": c.layer_norm_epsilon,
            "activation": format!("{:?}", c.activation()),
            "is_gated": c.is_gated(),
            "tie_word_embeddings": c.tie_word_embeddings,
        })
    };
    let problems = differences(&fields(&ours), &fields(&theirs), "");
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "config.json differs from preset {}'s language model: {}",
        P::NAME,
        problems.join("; ")
    ))
}

/// `key is <theirs>, the preset has <ours>` for each top-level field that differs.
fn differences<T: Serialize>(ours: &T, theirs: &T, prefix: &str) -> Vec<String> {
    let (Ok(serde_json::Value::Object(ours)), Ok(serde_json::Value::Object(theirs))) =
        (serde_json::to_value(ours), serde_json::to_value(theirs))
    else {
        return vec!["the configs cannot be compared".into()];
    };
    ours.iter()
        .filter(|(key, value)| theirs.get(*key) != Some(*value))
        .map(|(key, value)| {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            let theirs = theirs.get(key).map_or("absent".into(), |v| v.to_string());
            format!("{name} is {theirs}, the preset has {value}")
        })
        .collect()
}
