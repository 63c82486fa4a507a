//! HF `T5Config`, deserialized from `config.json` field for field.
//!
//! The channel dims (`vocab_size`, `d_model`, `num_heads * d_kv`, `d_ff`) must agree with the
//! compile-time preset ([`crate::T5Dims`]); everything else (layer counts, heads, buckets, eps,
//! feed-forward variant, tying) is read at run time from here.
use crate::error::{LmError, Result};
use pixel_core::nn::Activation;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// `eos_token_id` is an int in T5 configs, a list in some newer ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(usize),
    Many(Vec<usize>),
}

impl TokenIds {
    pub fn first(&self) -> usize {
        match self {
            TokenIds::One(id) => *id,
            TokenIds::Many(ids) => ids.first().copied().unwrap_or(1),
        }
    }
}

/// HF `T5Config`. Defaults are HF's; fields HF stores but the model does not use (task
/// parameters, `architectures`, `torch_dtype`, ...) are kept in `other`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    #[serde(default = "d::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d::d_model")]
    pub d_model: usize,
    #[serde(default = "d::d_kv")]
    pub d_kv: usize,
    #[serde(default = "d::d_ff")]
    pub d_ff: usize,
    /// Encoder layers.
    #[serde(default = "d::num_layers")]
    pub num_layers: usize,
    /// Decoder layers; `num_layers` when absent.
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    #[serde(default = "d::num_heads")]
    pub num_heads: usize,
    #[serde(default = "d::buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "d::max_distance")]
    pub relative_attention_max_distance: usize,
    /// Unused: pixel-lm runs without dropout.
    #[serde(default = "d::dropout")]
    pub dropout_rate: f64,
    #[serde(default = "d::eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d::one")]
    pub initializer_factor: f64,
    /// `relu` (T5 v1.0) or `gated-gelu` (T5 v1.1, Flan-T5); generally `[gated-]<act>`.
    #[serde(default = "d::ff_proj")]
    pub feed_forward_proj: String,
    /// HF derives it from `feed_forward_proj` (`gated-gelu` -> `gelu_new`); a stored value wins.
    #[serde(default)]
    pub dense_act_fn: Option<String>,
    #[serde(default)]
    pub is_gated_act: Option<bool>,
    /// T5 v1.0 ties `lm_head` to `shared` and scales the decoder output by `d_model^-0.5`.
    #[serde(default = "d::yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "d::eos")]
    pub eos_token_id: TokenIds,
    #[serde(default)]
    pub decoder_start_token_id: usize,
    #[serde(default = "d::yes")]
    pub is_encoder_decoder: bool,
    #[serde(default = "d::yes")]
    pub use_cache: bool,
    #[serde(default = "d::model_type")]
    pub model_type: String,
    /// Every other key of `config.json`, kept so that a round trip loses nothing.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

mod d {
    use super::TokenIds;
    pub fn vocab_size() -> usize {
        32128
    }
    pub fn d_model() -> usize {
        512
    }
    pub fn d_kv() -> usize {
        64
    }
    pub fn d_ff() -> usize {
        2048
    }
    pub fn num_layers() -> usize {
        6
    }
    pub fn num_heads() -> usize {
        8
    }
    pub fn buckets() -> usize {
        32
    }
    pub fn max_distance() -> usize {
        128
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn ff_proj() -> String {
        "relu".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn eos() -> TokenIds {
        TokenIds::One(1)
    }
    pub fn model_type() -> String {
        "t5".into()
    }
}

impl Default for T5Config {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl T5Config {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LmError::Core(pixel_core::CoreError::io(path, e)))?;
        let config: T5Config = serde_json::from_str(&text).map_err(|e| LmError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| LmError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Checks what the model needs beyond parsing: a known activation, positive sizes.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.activation()?;
        if self.num_heads == 0 || self.d_kv == 0 || self.num_layers == 0 {
            return Err("`num_heads`, `d_kv` and `num_layers` must be positive".into());
        }
        if self.relative_attention_num_buckets < 4 {
            return Err("`relative_attention_num_buckets` must be at least 4".into());
        }
        Ok(())
    }

    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// `num_heads * d_kv`, the width of the attention projections.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    pub fn eos(&self) -> usize {
        self.eos_token_id.first()
    }

    /// Whether the feed-forward block is gated (`wi_0`, `wi_1`) as in T5 v1.1.
    pub fn is_gated(&self) -> bool {
        self.is_gated_act
            .unwrap_or_else(|| self.feed_forward_proj.starts_with("gated-"))
    }

    /// The feed-forward non-linearity, HF's `dense_act_fn`.
    pub fn activation(&self) -> std::result::Result<Activation, String> {
        let derived = match self.feed_forward_proj.as_str() {
            "gated-gelu" => "gelu_new",
            other => other.rsplit('-').next().unwrap_or(other),
        };
        let name = self.dense_act_fn.as_deref().unwrap_or(derived);
        match name {
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "silu" | "swish" => Ok(Activation::Silu),
            other => Err(format!(
                "activation `{other}` (from `feed_forward_proj` = `{}`) is not supported; \
                 use relu, gelu, gelu_new or silu",
                self.feed_forward_proj
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flan_t5_small_config_parses() {
        let json = r#"{"architectures":["T5ForConditionalGeneration"],"d_ff":1024,"d_kv":64,
            "d_model":512,"decoder_start_token_id":0,"dense_act_fn":"gelu_new","dropout_rate":0.1,
            "eos_token_id":1,"feed_forward_proj":"gated-gelu","initializer_factor":1.0,
            "is_encoder_decoder":true,"is_gated_act":true,"layer_norm_epsilon":1e-06,
            "model_type":"t5","n_positions":512,"num_decoder_layers":8,"num_heads":6,
            "num_layers":8,"output_past":true,"pad_token_id":0,
            "relative_attention_max_distance":128,"relative_attention_num_buckets":32,
            "task_specific_params":{},"tie_word_embeddings":false,"torch_dtype":"float32",
            "transformers_version":"4.23.1","use_cache":true,"vocab_size":32128}"#;
        let c: T5Config = serde_json::from_str(json).unwrap();
        assert_eq!(c.inner_dim(), 384);
        assert!(c.is_gated());
        assert_eq!(c.activation().unwrap(), Activation::GeluTanh);
        assert!(!c.tie_word_embeddings);
        assert!(c.other.contains_key("n_positions"));
    }

    #[test]
    fn t5_v1_0_defaults_are_relu_and_tied() {
        let c = T5Config::default();
        assert!(!c.is_gated());
        assert_eq!(c.activation().unwrap(), Activation::Relu);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.decoder_layers(), 6);
    }
}
