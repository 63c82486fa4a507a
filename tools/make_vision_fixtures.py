#!/usr/bin/env python3
"""Regenerates pixel-vision's parity fixtures (pixel-vision/tests/fixtures/).

    pip install torch "transformers>=4.40,<5" timm segment-anything safetensors
    python tools/make_vision_fixtures.py                          # the committed fixtures (seed 0)
    python tools/make_vision_fixtures.py --seed 7 --out /tmp/v-7  # fresh ones (tools/check_parity.py)
    python tools/make_vision_fixtures.py --only eva               # only the EVA02 ones (torch, timm)

With `--seed 0` (the default) the output is the committed fixtures. With another seed every
weight and input is drawn from that seed, and the prompt points and boxes are random too;
param_counts.json is written only into the default folder.

Everything is randomly initialised from fixed seeds (no downloads):

- sam-vit-test/ : HF SamModel folder (config.json + model.safetensors) of the `sam-vit-test`
  preset; sam_test_io.safetensors: its inputs and HF outputs (image embeddings, masks, IoU).
- sam-vit-test-official.safetensors : the same weights under segment-anything's names;
  sam_official_io.safetensors: outputs of segment-anything's own modules on the same inputs.
- eva02-test.safetensors / eva02-test-fused.safetensors : timm Eva state dicts (EVA02-L style:
  separate q/k/v + SwiGLU with norm; EVA02-Ti style: fused qkv + packed SwiGLU, at a larger
  image than the RoPE reference shape); eva02_test_io.safetensors: inputs and forward_features.
- eva02-test-norm.safetensors : a timm Eva built with `global_pool=''` (EVA02-L style), which
  keeps `norm` (the end of forward_features, as the CLIP towers) instead of `fc_norm`;
  eva02_norm_test_io.safetensors: its input and forward_features.
- eva02-test-clip.safetensors : a timm Eva in the `eva02_*_clip_*` tower layout (EVA02-L/14
  style: `scale_attn_inner=True`, so every block's attention has `attn.norm`; token pooling, so
  `norm` and no `fc_norm`; a projection `head`); eva02_clip_test_io.safetensors: its input and
  forward_features.
- rel_pos.safetensors : segment-anything's get_rel_pos on tables that need interpolation.
"""
import argparse
import json
import math
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "pixel-vision", "tests", "fixtures")


def randomize(model, seed):
    """Replaces every parameter and buffer-like table by well-scaled random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")[-1]
            if leaf == "bias" or leaf in ("q_bias", "v_bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name and leaf == "weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif leaf in ("rel_pos_h", "rel_pos_w", "pos_embed", "cls_token"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2 and not name.endswith("embed.weight") and "token" not in name:
                fan_in = max(1, p[0].numel()) if p.dim() > 1 else 1
                if "ConvTranspose" in type(dict(model.named_modules()).get(name.rsplit(".", 1)[0])).__name__:
                    fan_in = p.shape[0]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("positional_embedding") or name.endswith("positional_encoding_gaussian_matrix"):
                b.copy_(torch.randn(b.shape, generator=g))


def random_prompts(g, batch, prompts, points, size):
    """Random point prompts (labels 1, 0 and the padding label -1 at the end) and boxes."""
    coords = torch.rand(batch, prompts, points, 2, generator=g) * (size - 1)
    labels = torch.randint(0, 2, (batch, prompts, points), generator=g)
    labels[-1, -1, -1] = -1
    corners = torch.rand(batch, 1, 2, 2, generator=g) * (size - 1)
    boxes = torch.cat([corners.min(dim=2).values, corners.max(dim=2).values], dim=-1)
    return coords, labels, boxes


def sam_fixtures(out_dir, seed=0):
    from transformers import SamConfig, SamModel

    config = SamConfig(
        vision_config=dict(image_size=128, patch_size=16, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, mlp_dim=256, output_channels=32, window_size=4,
                           global_attn_indexes=[1], num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                                 iou_head_hidden_dim=32),
    )
    model = SamModel(config).eval()
    randomize(model, seed)
    with torch.no_grad():
        # At full scale the random decoder is ill-conditioned (float32 and float64 runs of
        # HF's own code differ by 5e-3 relative); half-scale weights make it well-conditioned.
        for name, p in model.mask_decoder.named_parameters():
            if "norm" not in name:
                p.mul_(0.5)
    # Tied in HF; keep both copies equal.
    model.prompt_encoder.shared_embedding.positional_embedding.copy_(
        model.shared_image_embedding.positional_embedding)
    folder = os.path.join(out_dir, "sam-vit-test")
    model.save_pretrained(folder, safe_serialization=True)

    g = torch.Generator().manual_seed(seed + 1)
    pixel_values = torch.randn(2, 3, 128, 128, generator=g)
    input_points = torch.tensor([[[[10.0, 20.0], [64.0, 70.0], [120.0, 5.0]]],
                                 [[[33.0, 90.0], [100.0, 100.0], [0.0, 127.0]]]])
    input_labels = torch.tensor([[[1, 0, 1]], [[1, 1, -1]]], dtype=torch.int64)
    input_boxes = torch.tensor([[[8.0, 12.0, 90.0, 77.0]], [[40.0, 30.0, 127.0, 110.0]]])
    # Two prompts per image, two points each.
    input_points2 = torch.tensor([[[[5.0, 6.0], [50.0, 60.0]], [[70.0, 20.0], [20.0, 70.0]]],
                                  [[[90.0, 9.0], [9.0, 90.0]], [[64.0, 64.0], [1.0, 1.0]]]])
    input_labels2 = torch.tensor([[[1, 0], [1, 1]], [[0, 1], [1, -10]]], dtype=torch.int64)
    if seed != 0:
        input_points, input_labels, input_boxes = random_prompts(g, 2, 1, 3, 128)
        input_points2, input_labels2, _ = random_prompts(g, 2, 2, 2, 128)
    # References are computed in float64 (the truth a float32 port should approach).
    model64 = SamModel(config).eval()
    model64.load_state_dict(model.state_dict())
    model64 = model64.double()
    io = {"pixel_values": pixel_values, "input_points": input_points, "input_labels": input_labels,
          "input_boxes": input_boxes, "input_points2": input_points2, "input_labels2": input_labels2}
    d = torch.float64
    with torch.no_grad():
        emb = model64.get_image_embeddings(pixel_values.to(d))
        io["image_embeddings"] = emb
        out = model64(image_embeddings=emb, input_points=input_points.to(d), input_labels=input_labels,
                      multimask_output=True)
        io["points_pred_masks"], io["points_iou_scores"] = out.pred_masks, out.iou_scores
        out = model64(image_embeddings=emb, input_boxes=input_boxes.to(d), multimask_output=False)
        io["boxes_pred_masks"], io["boxes_iou_scores"] = out.pred_masks, out.iou_scores
        out = model64(image_embeddings=emb, input_points=input_points2.to(d), input_labels=input_labels2,
                      multimask_output=True)
        io["points2_pred_masks"], io["points2_iou_scores"] = out.pred_masks, out.iou_scores
        # A low-resolution mask prompt (as SAM's own previous output would be) with the points.
        input_masks = torch.randn(2, 1, 32, 32, generator=g)
        io["input_masks"] = input_masks
        out = model64(image_embeddings=emb, input_points=input_points.to(d), input_labels=input_labels,
                      input_masks=input_masks.to(d), multimask_output=False)
        io["masks_pred_masks"], io["masks_iou_scores"] = out.pred_masks, out.iou_scores
    io = {k: v.float() if v.is_floating_point() else v for k, v in io.items()}
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out_dir, "sam_test_io.safetensors"))
    return model, io


def hf_name(official, iou_depth=3):
    """segment-anything name -> HF SamModel name (mirrors pixel-vision's mapping)."""
    p = official.split(".")
    rest = lambda i: ".".join(p[i:])
    if p[:3] == ["image_encoder", "patch_embed", "proj"]:
        return "vision_encoder.patch_embed.projection." + rest(3)
    if p[0] == "image_encoder":
        if p[1] == "pos_embed":
            return "vision_encoder.pos_embed"
        if p[1] == "blocks":
            sub = {"norm1": "layer_norm1", "norm2": "layer_norm2"}.get(p[3], p[3])
            return f"vision_encoder.layers.{p[2]}.{sub}." + rest(4)
        if p[1] == "neck":
            sub = {"0": "conv1", "1": "layer_norm1", "2": "conv2", "3": "layer_norm2"}[p[2]]
            return f"vision_encoder.neck.{sub}." + rest(3)
    if p[0] == "prompt_encoder":
        if p[1] == "pe_layer":
            return "shared_image_embedding.positional_embedding"
        if p[1] == "point_embeddings":
            return f"prompt_encoder.point_embed.{p[2]}." + rest(3)
        if p[1] == "mask_downscaling":
            sub = {"0": "conv1", "1": "layer_norm1", "3": "conv2", "4": "layer_norm2", "6": "conv3"}[p[2]]
            return f"prompt_encoder.mask_embed.{sub}." + rest(3)
        return official
    if p[0] == "mask_decoder":
        if p[1] == "transformer" and p[2] == "layers" and p[4].startswith("norm"):
            return f"mask_decoder.transformer.layers.{p[3]}.layer_{p[4]}." + rest(5)
        if p[1] == "transformer" and p[2] == "norm_final_attn":
            return "mask_decoder.transformer.layer_norm_final_attn." + rest(3)
        if p[1] == "output_upscaling":
            sub = {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"}[p[2]]
            return f"mask_decoder.{sub}." + rest(3)

        def mlp(i, depth):
            i = int(i)
            return "proj_in" if i == 0 else "proj_out" if i == depth - 1 else f"layers.{i - 1}"
        if p[1] == "output_hypernetworks_mlps":
            return f"mask_decoder.output_hypernetworks_mlps.{p[2]}.{mlp(p[4], 3)}." + rest(5)
        if p[1] == "iou_prediction_head":
            return f"mask_decoder.iou_prediction_head.{mlp(p[3], iou_depth)}." + rest(4)
        return official
    raise KeyError(official)


def official_fixtures(out_dir, hf_model, io):
    from functools import partial
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder,
                                           TwoWayTransformer)

    enc = ImageEncoderViT(img_size=128, patch_size=16, embed_dim=64, depth=2, num_heads=4,
                          mlp_ratio=4.0, out_chans=32, qkv_bias=True,
                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                          window_size=4, global_attn_indexes=[1])
    pe = PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(128, 128),
                       mask_in_chans=4)
    dec = MaskDecoder(transformer_dim=32,
                      transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
                      num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=32)
    hf_sd = hf_model.state_dict()
    official = {}
    for prefix, module in [("image_encoder", enc), ("prompt_encoder", pe), ("mask_decoder", dec)]:
        sd = module.state_dict()
        for k in sd:
            name = f"{prefix}.{k}"
            sd[k] = hf_sd[hf_name(name)].clone()
            official[name] = sd[k]
        module.load_state_dict(sd)
        module.eval()
    save_file({k: v.contiguous() for k, v in official.items()},
              os.path.join(out_dir, "sam-vit-test-official.safetensors"))
    out = {}
    # segment-anything's prompt encoder hard-codes float32; it is well conditioned, the
    # encoder and decoder run in float64.
    enc, dec = enc.double(), dec.double()
    with torch.no_grad():
        emb = enc(io["pixel_values"].double())
        out["image_embeddings"] = emb
        dense_pe = pe.get_dense_pe().double()
        masks, ious = [], []
        for b in range(2):
            sparse, dense = pe(points=(io["input_points"][b], io["input_labels"][b]), boxes=None, masks=None)
            m, i = dec(emb[b:b + 1], dense_pe, sparse.double(), dense.double(), multimask_output=True)
            masks.append(m)
            ious.append(i)
        out["points_pred_masks"] = torch.stack(masks)
        out["points_iou_scores"] = torch.stack(ious)
    save_file({k: v.float().contiguous() for k, v in out.items()}, os.path.join(out_dir, "sam_official_io.safetensors"))


def eva_fixtures(out, seed=0):
    io = {}
    variants = {
        # EVA02-B/L style (separate q/k/v, SwiGLU with its inner LayerNorm).
        "eva02-test": dict(img_size=56, qkv_fused=False, scale_mlp=True),
        # EVA02-Ti/S style (fused qkv with q/v biases, packed SwiGLU), at 84 px while the RoPE
        # reference grid stays 4x4, so RoPE positions are rescaled.
        "eva02-test-fused": dict(img_size=84, qkv_fused=True, scale_mlp=False),
    }
    for i, (name, v) in enumerate(variants.items()):
        eva_variant(out, name, v, seed + 10 + i, seed + 20 + i, io)
    save_file({k: t.contiguous() for k, t in io.items()}, os.path.join(out, "eva02_test_io.safetensors"))

    # `global_pool=''` (as 'token', the CLIP towers' pooling) turns timm's `use_fc_norm` off:
    # the model keeps `norm`, applied at the end of forward_features, and has no `fc_norm`.
    io = {}
    eva_variant(out, "eva02-test-norm", dict(img_size=56, qkv_fused=False, scale_mlp=True, global_pool=""),
                seed + 30, seed + 31, io)
    save_file({k: t.contiguous() for k, t in io.items()}, os.path.join(out, "eva02_norm_test_io.safetensors"))

    # The CLIP towers (`eva02_base_patch16_clip_224`, `eva02_large_patch14_clip_224/336`): as
    # EVA02-B/L plus `scale_attn_inner=True` (a LayerNorm on the attention output before
    # `proj`), `global_pool='token'` (so `norm`, no `fc_norm`) and a `head` (the CLIP
    # projection, num_classes = the embedding width; unused by forward_features).
    io = {}
    eva_variant(out, "eva02-test-clip", dict(img_size=56, qkv_fused=False, scale_mlp=True, global_pool="token",
                                             scale_attn_inner=True, num_classes=32),
                seed + 40, seed + 41, io)
    save_file({k: t.contiguous() for k, t in io.items()}, os.path.join(out, "eva02_clip_test_io.safetensors"))


def eva_variant(out, name, v, weight_seed, input_seed, io):
    """Writes `{name}.safetensors` (a random timm Eva's state dict) and adds its input and
    float64 forward_features to `io`."""
    from timm.models.eva import Eva

    model = Eva(img_size=v["img_size"], patch_size=14, embed_dim=64, depth=2, num_heads=4,
                mlp_ratio=4 * 2 / 3, qkv_fused=v["qkv_fused"], swiglu_mlp=True,
                scale_mlp=v["scale_mlp"], scale_attn_inner=v.get("scale_attn_inner", False),
                use_rot_pos_emb=True, ref_feat_shape=(4, 4), num_classes=v.get("num_classes", 0),
                global_pool=v.get("global_pool", "avg")).eval()
    randomize(model, weight_seed)
    save_file({k: t.contiguous() for k, t in model.state_dict().items()},
              os.path.join(out, f"{name}.safetensors"))
    g = torch.Generator().manual_seed(input_seed)
    x = torch.randn(2, 3, v["img_size"], v["img_size"], generator=g)
    with torch.no_grad():
        io[f"{name}.pixel_values"] = x
        io[f"{name}.features"] = model.double().forward_features(x.double()).float()


def rel_pos_fixtures(out_dir, seed=0):
    from segment_anything.modeling.image_encoder import get_rel_pos

    g = torch.Generator().manual_seed(seed + 5)
    out = {}
    for q, k, length in [(5, 7, 9), (7, 7, 9), (3, 3, 5), (4, 2, 11)]:
        table = torch.randn(length, 4, generator=g)
        out[f"table_{q}_{k}_{length}"] = table
        out[f"rel_{q}_{k}_{length}"] = get_rel_pos(q, k, table)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(out_dir, "rel_pos.safetensors"))


def param_counts():
    """Reference parameter counts quoted in pixel-vision's tests and docs."""
    import timm
    from transformers import SamConfig, SamModel

    counts = {}
    for name, hidden, depth, heads, glob in [
        ("sam-vit-b", 768, 12, 12, [2, 5, 8, 11]),
        ("sam-vit-l", 1024, 24, 16, [5, 11, 17, 23]),
        ("sam-vit-h", 1280, 32, 16, [7, 15, 23, 31]),
    ]:
        cfg = SamConfig(vision_config=dict(hidden_size=hidden, num_hidden_layers=depth,
                                           num_attention_heads=heads, global_attn_indexes=glob,
                                           mlp_dim=hidden * 4))
        with torch.device("meta"):
            m = SamModel(cfg)
        counts[name] = sum(t.numel() for t in m.state_dict().values()
                           if True) - m.prompt_encoder.shared_embedding.positional_embedding.numel()
    for name, timm_name in [("eva02-tiny", "eva02_tiny_patch14_224"), ("eva02-small", "eva02_small_patch14_224"),
                            ("eva02-base", "eva02_base_patch14_224"), ("eva02-large", "eva02_large_patch14_448")]:
        with torch.device("meta"):
            m = timm.create_model(timm_name, pretrained=False, num_classes=0)
        counts[name] = sum(t.numel() for t in m.state_dict().values())
    return counts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="pixel-vision parity fixtures")
    parser.add_argument("--seed", type=int, default=0, help="0 = the committed fixtures")
    parser.add_argument("--out", default=OUT, help="output folder (default: pixel-vision/tests/fixtures)")
    parser.add_argument("--only", choices=["eva"],
                        help="write only these fixtures (eva: the EVA02 ones, needs only torch and timm)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.only == "eva":
        eva_fixtures(args.out, args.seed)
        raise SystemExit(0)
    model, io = sam_fixtures(args.out, args.seed)
    official_fixtures(args.out, model, io)
    eva_fixtures(args.out, args.seed)
    rel_pos_fixtures(args.out, args.seed)
    if os.path.abspath(args.out) != os.path.abspath(OUT):
        raise SystemExit(0)
    counts = param_counts()
    with open(os.path.join(OUT, "param_counts.json"), "w") as f:
        json.dump(counts, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps(counts, indent=2))
