#!/usr/bin/env python3
"""Reference parameter counts of the components of pixelllm-paper and pixelllm-base, computed by
the reference libraries from their configs alone (models built on torch's `meta` device: no
weights are downloaded or allocated). Writes pixel-model/tests/fixtures/paper_param_counts.json,
which pixel-model/tests/paper_presets.rs compares the presets' counts with.

    pip install torch "transformers>=4.40,<5" timm
    python tools/paper_param_counts.py          # rewrites the fixture and prints it

The configs are the published checkpoints' (their `config.json` on the Hugging Face hub, and
timm's model registry), written out here so that nothing is fetched:

- SAM: HF `SamModel(SamConfig(vision_config=...))` as `facebook/sam-vit-huge` and
  `facebook/sam-vit-base`; the count is its `vision_encoder` (patch embedding, absolute position
  table for 1024 px, the blocks with their relative position tables, the neck).
- EVA02: timm `eva02_large_patch14_224` and `eva02_base_patch14_224` (the MIM-pretrained
  models scenic's `eva02_vit` is initialised from, position table for 224 px) with
  `num_classes=0`, i.e. without the classifier head.
- T5: HF `T5ForConditionalGeneration(T5Config(...))` as `google/flan-t5-xl` and
  `google/flan-t5-base` (`model.parameters()`, the tied embedding copies counted once).
- LoRA: rank x (in + out) for every `q` and `v` linear of the HF T5's attentions (encoder self,
  decoder self and cross), rank 32 as in scenic's `pixel_llm_t5_ref` config.
"""
import json
import os

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "pixel-model", "tests", "fixtures",
                   "paper_param_counts.json")

LORA_RANK = 32


def numel(module):
    return sum(p.numel() for p in module.parameters())


def sam_vision_encoder(hidden, depth, heads, global_attn_indexes):
    from transformers import SamConfig, SamModel

    config = SamConfig(vision_config=dict(hidden_size=hidden, num_hidden_layers=depth,
                                          num_attention_heads=heads,
                                          global_attn_indexes=global_attn_indexes,
                                          mlp_dim=hidden * 4))
    with torch.device("meta"):
        return numel(SamModel(config).vision_encoder)


def eva02(timm_name):
    import timm

    with torch.device("meta"):
        return numel(timm.create_model(timm_name, pretrained=False, num_classes=0))


def flan_t5(d_model, d_ff, layers, heads):
    """(all parameters, LoRA parameters on every q and v at LORA_RANK)."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=32128, d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=layers,
                      num_decoder_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False)
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
    lora = sum(LORA_RANK * (m.in_features + m.out_features)
               for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in ("q", "v"))
    return numel(model), lora


def main():
    xl, xl_lora = flan_t5(2048, 5120, 24, 32)
    base, base_lora = flan_t5(768, 2048, 12, 12)
    counts = {
        "sam_vit_huge_vision_encoder": sam_vision_encoder(1280, 32, 16, [7, 15, 23, 31]),
        "sam_vit_base_vision_encoder": sam_vision_encoder(768, 12, 12, [2, 5, 8, 11]),
        "eva02_large_patch14_224": eva02("eva02_large_patch14_224"),
        "eva02_base_patch14_224": eva02("eva02_base_patch14_224"),
        "flan_t5_xl": xl,
        "flan_t5_xl_lora_qv_r32": xl_lora,
        "flan_t5_base": base,
        "flan_t5_base_lora_qv_r32": base_lora,
    }
    assert counts["flan_t5_xl"] == 2_849_757_184, counts["flan_t5_xl"]
    with open(OUT, "w") as f:
        json.dump(counts, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps(counts, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
