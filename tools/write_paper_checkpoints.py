#!/usr/bin/env python3
"""Writes random component checkpoints of `pixelllm-base` or `pixelllm-paper` in their reference
libraries' own formats, and a config that composes the preset from them, for `pixel step`
(README, "Paper-size presets"). Nothing is downloaded; the weights are the libraries' own
random initialisations, so the files have the published checkpoints' names, shapes and dtypes
but not their values. Not committed: the paper's files take 9.6 GB.

- sam/        : HF `SamModel` folder (config.json + model.safetensors, f32), the configs of
                `facebook/sam-vit-base` / `facebook/sam-vit-huge`.
- eva02.safetensors : timm `eva02_base_patch14_224` / `eva02_large_patch14_224` state dict
                (f32) built with `num_classes=0, global_pool=''` (keeps the final `norm`, as
                scenic's EVA02 does).
- t5/         : HF `T5ForConditionalGeneration` folder with `google/flan-t5-base` /
                `google/flan-t5-xl`'s config, saved in bfloat16 and sharded (2 GB shards), as
                the published Flan-T5-XL is.
- model.toml  : the preset's configs/models/ file with [model.checkpoints] naming the three.

    pip install torch "transformers>=4.40,<5" timm safetensors
    python tools/write_paper_checkpoints.py --preset pixelllm-base --out /tmp/base-ckpt
    ./target/release/pixel step --config /tmp/base-ckpt/model.toml --steps 2

Peak memory is about one component at a time: 11.5 GB for Flan-T5-XL built in bfloat16.
"""
import argparse
import os
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# Each preset's components: (SAM vision config, timm EVA02 name, T5 config), the published
# checkpoints' configs as tools/paper_param_counts.py writes them out.
PRESETS = {
    "pixelllm-base": (
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11],
             mlp_dim=3072),
        "eva02_base_patch14_224",
        dict(d_model=768, d_ff=2048, num_layers=12, num_heads=12),
    ),
    "pixelllm-paper": (
        dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
             global_attn_indexes=[7, 15, 23, 31], mlp_dim=5120),
        "eva02_large_patch14_224",
        dict(d_model=2048, d_ff=5120, num_layers=24, num_heads=32),
    ),
}


def sam(vision, out):
    from transformers import SamConfig, SamModel

    torch.manual_seed(1)
    model = SamModel(SamConfig(vision_config=vision)).eval()
    model.save_pretrained(os.path.join(out, "sam"), safe_serialization=True)


def eva02(name, out):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "eva02.safetensors"))


def t5(dims, out):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(3)
    config = T5Config(vocab_size=32128, d_kv=64, num_decoder_layers=dims["num_layers"],
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, **dims)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = T5ForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(os.path.join(out, "t5"), safe_serialization=True, max_shard_size="2GB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    vision, eva_name, t5_dims = PRESETS[args.preset]
    os.makedirs(args.out, exist_ok=True)
    for part, write in [("sam", lambda: sam(vision, args.out)), ("eva02", lambda: eva02(eva_name, args.out)),
                        ("t5", lambda: t5(t5_dims, args.out))]:
        started = time.time()
        write()
        print(f"{part}: {time.time() - started:.0f} s", flush=True)
    with open(os.path.join(ROOT, "configs", "models", f"{args.preset}.toml")) as f:
        text = f.read()
    out = os.path.abspath(args.out)
    text += (f'\n[model.checkpoints]\nsam = "{out}/sam"\neva02 = "{out}/eva02.safetensors"\n'
             f't5 = "{out}/t5"\n')
    with open(os.path.join(args.out, "model.toml"), "w") as f:
        f.write(text)
    print(f"wrote {args.out}/model.toml")


if __name__ == "__main__":
    main()
