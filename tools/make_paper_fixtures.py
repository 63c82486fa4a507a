#!/usr/bin/env python3
"""Writes the component checkpoints of the `pixelllm-test` preset in their reference libraries'
own formats, for pixel-model/tests/compose_from_checkpoints.rs (pixel-model/tests/fixtures/
pixelllm-test/, about 0.5 MB):

- sam/                : a HF `SamModel` folder (config.json + model.safetensors), f32.
- sam-official.safetensors : the same weights as segment-anything's own `ImageEncoderViT`,
                        `PromptEncoder` and `MaskDecoder` name them (a converted checkpoint).
- eva02.safetensors   : a timm `Eva` state dict in scenic's EVA02 layout (separate q/k/v,
                        SwiGLU with its LayerNorm, a final `norm` over every token).
- t5/                 : a HF `T5ForConditionalGeneration` folder in Flan-T5's layout, saved in
                        bfloat16 and sharded (model.safetensors.index.json + shards), as the
                        published Flan-T5-XL is.

The sizes are `PixelLlmTest`'s (pixel-model/src/presets.rs): SAM width 32 (3 blocks, block 1
global, window 2, 64 px, patch 16) with prompt / decoder width 16; EVA02 width 32, 2 blocks, 64 px,
patch 16; T5 d_model 32, 4 heads x 8, d_ff 48, 3 + 3 layers over a 256-piece vocabulary.
Every weight is drawn at random from fixed seeds; nothing is downloaded.

    pip install torch "transformers>=4.40,<5" timm segment-anything safetensors
    python tools/make_paper_fixtures.py
"""
import json
import os
import shutil
import sys
from functools import partial

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from make_vision_fixtures import hf_name  # noqa: E402  (segment-anything -> HF names)

OUT = os.path.join(os.path.dirname(__file__), "..", "pixel-model", "tests", "fixtures", "pixelllm-test")


def randomize(model, seed):
    """Every parameter (and SAM's Fourier buffers) drawn from N(0, 0.1^2); LayerNorm and RMSNorm
    weights around 1, so the loaded values are recognisable and the forward pass is tame."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.1 * torch.randn(p.shape, generator=g)
            is_norm_weight = ("norm" in name or "layer_norm" in name) and name.endswith("weight")
            p.copy_(1.0 + noise if is_norm_weight and p.dim() == 1 else noise)
        for name, b in model.named_buffers():
            if name.endswith("positional_embedding"):
                b.copy_(torch.randn(b.shape, generator=g))


def sam(out):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
    from transformers import SamConfig, SamModel

    config = SamConfig(
        vision_config=dict(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=3,
                           num_attention_heads=2, mlp_dim=64, output_channels=16, window_size=2,
                           global_attn_indexes=[1], num_pos_feats=8),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                 iou_head_hidden_dim=16),
    )
    model = SamModel(config).eval()
    randomize(model, 1)
    with torch.no_grad():
        # Tied in HF: both copies hold the same matrix.
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(
            model.shared_image_embedding.positional_embedding)
    folder = os.path.join(out, "sam")
    model.save_pretrained(folder, safe_serialization=True)

    # The same weights under segment-anything's own module names.
    encoder = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0,
                              out_chans=16, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                              use_rel_pos=True, window_size=2, global_attn_indexes=[1])
    prompt = PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4)
    decoder = MaskDecoder(transformer_dim=16,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=16, mlp_dim=32, num_heads=2),
                          num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=16)
    hf = model.state_dict()
    official = {}
    for prefix, module in [("image_encoder", encoder), ("prompt_encoder", prompt), ("mask_decoder", decoder)]:
        for key, value in module.state_dict().items():
            name = f"{prefix}.{key}"
            source = hf[hf_name(name)]
            assert source.shape == value.shape, (name, source.shape, value.shape)
            official[name] = source.clone().contiguous()
    save_file(official, os.path.join(out, "sam-official.safetensors"))


def eva02(out):
    from timm.models.eva import Eva

    model = Eva(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4 * 2 / 3,
                qkv_fused=False, swiglu_mlp=True, scale_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
                num_classes=0, global_pool="").eval()
    randomize(model, 2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "eva02.safetensors"))


def t5(out):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=256, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_decoder_layers=3,
                      num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, layer_norm_epsilon=1e-6)
    model = T5ForConditionalGeneration(config).eval()
    randomize(model, 3)
    model = model.to(torch.bfloat16)
    model.save_pretrained(os.path.join(out, "t5"), safe_serialization=True, max_shard_size="60KB")


def main():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    sam(OUT)
    eva02(OUT)
    t5(OUT)
    total = 0
    for root, _, files in os.walk(OUT):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    print(json.dumps({"folder": os.path.relpath(OUT), "bytes": total}))


if __name__ == "__main__":
    main()
