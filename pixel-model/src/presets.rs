//! Model presets: the compile-time widths of a PixelLLM and the run-time configs of its parts.
use dfdx::prelude::*;
use pixel_lm::config::T5Config;
use pixel_lm::presets::T5Dims;
use pixel_vision::eva02::Eva02Config;
use pixel_vision::sam::config::SamPromptEncoderConfig;
use pixel_vision::sam::SamVisionConfig;

/// The language model's width of preset `P` (the decoder features every head reads).
pub type LmWidth<P> = <<P as PixelDims>::Lm as T5Dims>::Model;
/// The language model's vocabulary of preset `P`.
pub type LmVocab<P> = <<P as PixelDims>::Lm as T5Dims>::Vocab;

/// The widths of a PixelLLM as types, and its parts' run-time configs.
pub trait PixelDims: 'static + Copy + Clone + Default + std::fmt::Debug {
    const NAME: &'static str;
    /// SAM ViT width and its neck's output width.
    type SamHidden: ConstDim;
    type SamOut: ConstDim;
    /// EVA02 width.
    type Eva: ConstDim;
    /// `SamOut + Eva`: the concatenated image features.
    type Visual: ConstDim;
    /// Width of the location prompt encoder and of the prompt feature extractor's transformer.
    type Prompt: ConstDim;
    /// The language model.
    type Lm: T5Dims;
    /// Hidden width of the point head (and of the other built-in heads' MLPs).
    type PointHidden: ConstDim;

    fn sam() -> SamVisionConfig;
    fn eva() -> Eva02Config;
    fn prompt_encoder() -> SamPromptEncoderConfig;
    fn language_model() -> T5Config;
    /// `(heads, mlp_dim, attention downsample rate)` of the two-way transformer.
    fn two_way() -> (usize, usize, usize);
    /// The words whose T5 pieces make the model's sub-vocabulary; `None` = all of T5's.
    fn vocabulary_words() -> Option<Vec<&'static str>>;
}

/// The tiny language model of `pixel-tiny`: Flan-T5's architecture (gated GELU, untied head)
/// with d_model 128 over a 256-piece sub-vocabulary: ShapesLN's pieces (about 60) and room for
/// what a text-coordinate head writes (up to 100 bin tokens, or about 130 number pieces).
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelTinyLm;

impl T5Dims for PixelTinyLm {
    const NAME: &'static str = "pixel-tiny-t5";
    type Vocab = Const<256>;
    type Model = Const<128>;
    type Inner = Const<128>;
    type Ff = Const<256>;
}

/// The presets `model.preset` may name.
pub const PRESETS: &[&str] = &[PixelTiny::NAME];

/// A PixelLLM small enough to train on a 2-core CPU in minutes: 64 px images, SAM and EVA02
/// with 2 blocks of width 64 at patch 8 (an 8 x 8 grid), a 2-block two-way transformer and a
/// 2 + 2 layer T5.
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelTiny;

impl PixelDims for PixelTiny {
    const NAME: &'static str = "pixel-tiny";
    type SamHidden = Const<64>;
    type SamOut = Const<32>;
    type Eva = Const<64>;
    type Visual = Const<96>;
    type Prompt = Const<64>;
    type Lm = PixelTinyLm;
    type PointHidden = Const<128>;

    fn sam() -> SamVisionConfig {
        SamVisionConfig {
            hidden_size: 64,
            output_channels: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            image_size: 64,
            patch_size: 8,
            mlp_dim: Some(128),
            window_size: 4,
            global_attn_indexes: vec![1],
            num_pos_feats: 16,
            ..Default::default()
        }
    }

    fn eva() -> Eva02Config {
        let mut eva = Eva02Config::sized(64, 64, 2, 4, false, true);
        eva.patch_size = 8;
        eva.ref_feat_shape = 8;
        eva
    }

    fn prompt_encoder() -> SamPromptEncoderConfig {
        SamPromptEncoderConfig {
            hidden_size: 64,
            image_size: 64,
            patch_size: 8,
            mask_input_channels: 4,
            num_point_embeddings: 4,
            layer_norm_eps: 1e-6,
        }
    }

    fn language_model() -> T5Config {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 256,
            "d_model": 128,
            "d_kv": 32,
            "d_ff": 256,
            "num_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 4,
            "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": false,
            "layer_norm_epsilon": 1e-6
        }))
        .expect("the built-in T5 config is valid")
    }

    fn two_way() -> (usize, usize, usize) {
        (4, 128, 2)
    }

    fn vocabulary_words() -> Option<Vec<&'static str>> {
        let mut words = pixel_data::shapes_ln::vocabulary();
        words.extend(crate::tasks::REFERRING_PREFIX.split_whitespace());
        // The sentinels of LM pretraining's span corruption.
        words.extend(crate::vocab::SENTINELS);
        Some(words)
    }
}
