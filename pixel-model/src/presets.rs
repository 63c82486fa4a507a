//! Model presets: the compile-time widths of a PixelLLM and the run-time configs of its parts.
use dfdx::prelude::*;
use pixel_lm::config::T5Config;
use pixel_lm::presets::T5Dims;
use pixel_vision::eva02::Eva02Config;
use pixel_vision::presets::{SamPreset, SamVitB, SamVitH};
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
    /// Width of the location prompt encoder (SAM's prompt embeddings).
    type Prompt: ConstDim;
    /// Width of the prompt feature extractor's two-way transformer (scenic's
    /// `transformer_dim`); the prompt embeddings and the image position encoding are projected
    /// from `Prompt` to it when the two differ.
    type Adapter: ConstDim;
    /// Width of the visual tokens the prompt feature extractor emits (scenic's `output_dim`); a
    /// visual projection maps them to the language model's width when the two differ.
    type AdapterOut: ConstDim;
    /// The language model.
    type Lm: T5Dims;
    /// Hidden width of the point head (and of the other built-in heads' MLPs).
    type PointHidden: ConstDim;

    /// Side of the square model input in pixels. The backbones' own image sizes size their
    /// position tables, which are resized to the input's grid when they differ.
    fn image_size() -> usize;
    fn sam() -> SamVisionConfig;
    fn eva() -> Eva02Config;
    fn prompt_encoder() -> SamPromptEncoderConfig;
    fn language_model() -> T5Config;
    /// `(heads, mlp_dim, attention downsample rate)` of the two-way transformer.
    fn two_way() -> (usize, usize, usize);
    /// LayerNorm epsilon of the prompt feature extractor's two-way blocks.
    fn two_way_eps() -> f64;
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
pub const PRESETS: &[&str] = &[
    PixelTiny::NAME,
    PixelLlmTest::NAME,
    PixelLlmBase::NAME,
    PixelLlmPaper::NAME,
];

/// The presets the runners (`pixel demo`, `eval`, `ablate`, `grads`, `predict`, `serve`) build.
pub const RUNNER_PRESETS: &[&str] = &[PixelTiny::NAME];

/// Something to do with a preset chosen by name at run time ([`with_preset`]).
pub trait PresetVisitor {
    type Output;
    fn visit<P: PixelDims>(self) -> Self::Output;
}

/// Runs `visitor` with the preset called `name` (one of [`PRESETS`]); `None` for another name.
pub fn with_preset<V: PresetVisitor>(name: &str, visitor: V) -> Option<V::Output> {
    Some(match name {
        PixelTiny::NAME => visitor.visit::<PixelTiny>(),
        PixelLlmTest::NAME => visitor.visit::<PixelLlmTest>(),
        PixelLlmBase::NAME => visitor.visit::<PixelLlmBase>(),
        PixelLlmPaper::NAME => visitor.visit::<PixelLlmPaper>(),
        _ => return None,
    })
}

/// The `[model]` section each paper-structure preset ships with (`configs/models/`): what
/// `pixel inspect --preset` counts, and the paper's choices (output tokens, fusion, LoRA, the
/// point head) for the composition.
pub const MODEL_CONFIGS: &[(&str, &str)] = &[
    (
        PixelLlmTest::NAME,
        include_str!("../../configs/models/pixelllm-test.toml"),
    ),
    (
        PixelLlmBase::NAME,
        include_str!("../../configs/models/pixelllm-base.toml"),
    ),
    (
        PixelLlmPaper::NAME,
        include_str!("../../configs/models/pixelllm-paper.toml"),
    ),
];

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
    type Adapter = Const<64>;
    type AdapterOut = Const<128>;
    type Lm = PixelTinyLm;
    type PointHidden = Const<128>;

    fn image_size() -> usize {
        64
    }

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

    fn two_way_eps() -> f64 {
        1e-6
    }

    fn vocabulary_words() -> Option<Vec<&'static str>> {
        let mut words = pixel_data::shapes_ln::vocabulary();
        words.extend(crate::tasks::REFERRING_PREFIX.split_whitespace());
        // The sentinels of LM pretraining's span corruption.
        words.extend(crate::vocab::SENTINELS);
        Some(words)
    }
}

/// The paper's two-way transformer (segment-anything's and scenic's defaults): 8 heads, MLP
/// 2048, cross-attention downsampled by 2, LayerNorm epsilon 1e-5.
const PAPER_TWO_WAY: (usize, usize, usize) = (8, 2048, 2);
const PAPER_TWO_WAY_EPS: f64 = 1e-5;
/// The side of the paper's input images (scenic's `crop_size`).
const PAPER_IMAGE_SIZE: usize = 384;

/// SAM's prompt encoder at width 256 for inputs of `image_size` px and the grid SAM's patch 16
/// gives them (HF `SamPromptEncoderConfig` otherwise).
fn sam_prompt_encoder(image_size: usize) -> SamPromptEncoderConfig {
    SamPromptEncoderConfig {
        image_size,
        ..Default::default()
    }
}

/// An EVA02 as scenic's `eva02_vit` builds it for PixelLLM: position table of a 224 px
/// pretraining (`pretrain_img_size`), separate q/k/v, SwiGLU with its inner LayerNorm, a final
/// LayerNorm over every token (`use_ln_post`: timm's `norm`), and RoPE positions counted on the
/// input's own grid (scenic's `pt_seq_len = image_size // patch_size`).
fn scenic_eva02(embed_dim: usize, depth: usize, heads: usize, image_size: usize) -> Eva02Config {
    let mut eva = Eva02Config::sized(224, embed_dim, depth, heads, false, true);
    eva.final_norm = pixel_vision::FinalNorm::Features;
    eva.ref_feat_shape = image_size / eva.patch_size;
    eva
}

/// Flan-T5's layout at the given widths (gated GELU, untied head, 32 buckets).
fn flan_t5(vocab: usize, d_model: usize, heads: usize, d_ff: usize, layers: usize) -> T5Config {
    serde_json::from_value(serde_json::json!({
        "vocab_size": vocab,
        "d_model": d_model,
        "d_kv": d_model / heads,
        "d_ff": d_ff,
        "num_layers": layers,
        "num_decoder_layers": layers,
        "num_heads": heads,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": false,
        "layer_norm_epsilon": 1e-6
    }))
    .expect("the built-in T5 config is valid")
}

/// `pixelllm-paper`: the model of the paper and scenic's `pixel_llm_t5_ref` config. SAM ViT-H
/// (frozen) and EVA02-L (trained) on 384 px images, SAM's prompt encoder (256, frozen), the
/// prompt feature extractor (two-way, width 512, output 1024), a linear visual projection to
/// Flan-T5-XL's 2048, Flan-T5-XL (frozen, with LoRA), the point head (hidden 512). The run-time
/// choices (32 output tokens, sparse fusion, depth 6, LoRA rank 32 scale 2, the point head's
/// depth 4) are `configs/models/pixelllm-paper.toml`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelLlmPaper;

impl PixelDims for PixelLlmPaper {
    const NAME: &'static str = "pixelllm-paper";
    type SamHidden = Const<1280>;
    type SamOut = Const<256>;
    type Eva = Const<1024>;
    type Visual = Const<1280>;
    type Prompt = Const<256>;
    type Adapter = Const<512>;
    type AdapterOut = Const<1024>;
    type Lm = pixel_lm::presets::FlanT5Xl;
    type PointHidden = Const<512>;

    fn image_size() -> usize {
        PAPER_IMAGE_SIZE
    }

    /// HF `facebook/sam-vit-huge`'s vision encoder (its tables sized for 1024 px).
    fn sam() -> SamVisionConfig {
        SamVitH::config().vision_config
    }

    /// `eva02_large_patch14_224` as scenic builds it.
    fn eva() -> Eva02Config {
        scenic_eva02(1024, 24, 16, PAPER_IMAGE_SIZE)
    }

    fn prompt_encoder() -> SamPromptEncoderConfig {
        sam_prompt_encoder(PAPER_IMAGE_SIZE)
    }

    /// `google/flan-t5-xl`.
    fn language_model() -> T5Config {
        flan_t5(32128, 2048, 32, 5120, 24)
    }

    fn two_way() -> (usize, usize, usize) {
        PAPER_TWO_WAY
    }

    fn two_way_eps() -> f64 {
        PAPER_TWO_WAY_EPS
    }

    fn vocabulary_words() -> Option<Vec<&'static str>> {
        None
    }
}

/// `pixelllm-base`: the paper's structure with the base-size components: SAM ViT-B, EVA02-B,
/// Flan-T5-base (768), the same prompt feature extractor (512, output 1024) and a visual
/// projection 1024 -> 768 (`configs/models/pixelllm-base.toml`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelLlmBase;

impl PixelDims for PixelLlmBase {
    const NAME: &'static str = "pixelllm-base";
    type SamHidden = Const<768>;
    type SamOut = Const<256>;
    type Eva = Const<768>;
    type Visual = Const<1024>;
    type Prompt = Const<256>;
    type Adapter = Const<512>;
    type AdapterOut = Const<1024>;
    type Lm = pixel_lm::presets::FlanT5Base;
    type PointHidden = Const<512>;

    fn image_size() -> usize {
        PAPER_IMAGE_SIZE
    }

    /// HF `facebook/sam-vit-base`'s vision encoder.
    fn sam() -> SamVisionConfig {
        SamVitB::config().vision_config
    }

    /// `eva02_base_patch14_224` as scenic builds it.
    fn eva() -> Eva02Config {
        scenic_eva02(768, 12, 12, PAPER_IMAGE_SIZE)
    }

    fn prompt_encoder() -> SamPromptEncoderConfig {
        sam_prompt_encoder(PAPER_IMAGE_SIZE)
    }

    /// `google/flan-t5-base`.
    fn language_model() -> T5Config {
        flan_t5(32128, 768, 12, 2048, 12)
    }

    fn two_way() -> (usize, usize, usize) {
        PAPER_TWO_WAY
    }

    fn two_way_eps() -> f64 {
        PAPER_TWO_WAY_EPS
    }

    fn vocabulary_words() -> Option<Vec<&'static str>> {
        None
    }
}

/// The language model of `pixelllm-test`: Flan-T5's layout at d_model 32 (4 heads x 8, d_ff
/// 48) over `pixel-tiny`'s 256-piece sub-vocabulary.
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelLlmTestLm;

impl T5Dims for PixelLlmTestLm {
    const NAME: &'static str = "pixelllm-test-t5";
    type Vocab = Const<256>;
    type Model = Const<32>;
    type Inner = Const<32>;
    type Ff = Const<48>;
}

/// `pixelllm-test`: the paper's structure at widths a test can afford, with every part the
/// paper has and `pixel-tiny` lacks: a prompt width (16) other than the two-way transformer's
/// (24), and an output width (40) other than the LM's (32), so both projections are there; SAM
/// with window and global blocks (3 blocks, grid 4, window 2), EVA02 in the scenic layout, a
/// 3 + 3 layer Flan-T5. 64 px images, ShapesLN's sub-vocabulary
/// (`configs/models/pixelllm-test.toml`; reference-format checkpoints of its components are
/// written by `tools/make_paper_fixtures.py`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelLlmTest;

impl PixelDims for PixelLlmTest {
    const NAME: &'static str = "pixelllm-test";
    type SamHidden = Const<32>;
    type SamOut = Const<16>;
    type Eva = Const<32>;
    type Visual = Const<48>;
    type Prompt = Const<16>;
    type Adapter = Const<24>;
    type AdapterOut = Const<40>;
    type Lm = PixelLlmTestLm;
    type PointHidden = Const<32>;

    fn image_size() -> usize {
        64
    }

    fn sam() -> SamVisionConfig {
        SamVisionConfig {
            hidden_size: 32,
            output_channels: 16,
            num_hidden_layers: 3,
            num_attention_heads: 2,
            image_size: 64,
            patch_size: 16,
            mlp_dim: Some(64),
            window_size: 2,
            global_attn_indexes: vec![1],
            num_pos_feats: 8,
            ..Default::default()
        }
    }

    fn eva() -> Eva02Config {
        let mut eva = Eva02Config::sized(64, 32, 2, 2, false, true);
        eva.patch_size = 16;
        eva.final_norm = pixel_vision::FinalNorm::Features;
        eva.ref_feat_shape = 4;
        eva
    }

    fn prompt_encoder() -> SamPromptEncoderConfig {
        SamPromptEncoderConfig {
            hidden_size: 16,
            image_size: 64,
            patch_size: 16,
            mask_input_channels: 4,
            num_point_embeddings: 4,
            layer_norm_eps: 1e-6,
        }
    }

    fn language_model() -> T5Config {
        flan_t5(256, 32, 4, 48, 3)
    }

    fn two_way() -> (usize, usize, usize) {
        (2, 32, 2)
    }

    fn two_way_eps() -> f64 {
        PAPER_TWO_WAY_EPS
    }

    fn vocabulary_words() -> Option<Vec<&'static str>> {
        PixelTiny::vocabulary_words()
    }
}
