#!/usr/bin/env python3
"""Checks the twin's modules against the reference libraries on the weights of a dump.

    python3 tools/twin/check_references.py --in /tmp/g-demo

With DIR's init.safetensors and batch.safetensors (a `pixel grads` folder with the point head
and a full LM; any dense- or sparse-fusion config works) compares, in float64:
  * SAM's image encoder with segment-anything's `ImageEncoderViT`;
  * EVA02's patch tokens with timm's `Eva.forward_features`;
  * the box prompt tokens and the dense position encoding with segment-anything's
    `PromptEncoder` (float32: it hard-codes float32);
  * the prompt feature extractor's two-way transformer with segment-anything's
    `TwoWayTransformer` (its LayerNorm eps set to the Rust model's: 1e-6 in the blocks);
  * T5's encoder, decoder and logits with transformers' `T5ForConditionalGeneration`.
Prints the max relative error of each; exit status 1 when one exceeds 1e-6 (1e-5 in float32).
"""
import argparse
import os
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grads  # noqa: E402
import model as twin  # noqa: E402


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="folder", required=True)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dt = torch.float64
    m, spec, _, _ = grads.load_twin(args.folder, dt)
    m.eval()
    batch = grads.load_batch(os.path.join(args.folder, "batch.safetensors"), dt)
    state = {k: v.to(dt) for k, v in m.state_dict().items()}
    d = m.d
    results = []

    def sub(prefix):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    with torch.no_grad():
        out = m.forward(batch)
        sam_px = m.pixel_values(batch["pixels"], twin.SAM_NORMALIZATION)
        eva_px = m.pixel_values(batch["pixels"], twin.CLIP_NORMALIZATION)

        # --- SAM image encoder
        from segment_anything.modeling import ImageEncoderViT, PromptEncoder, TwoWayTransformer

        enc = ImageEncoderViT(img_size=d.image_size, patch_size=d.sam_patch, embed_dim=d.sam_hidden,
                              depth=d.sam_layers, num_heads=d.sam_heads, mlp_ratio=d.sam_mlp / d.sam_hidden,
                              out_chans=d.sam_out, qkv_bias=True,
                              norm_layer=partial(torch.nn.LayerNorm, eps=d.sam_eps), use_rel_pos=True,
                              window_size=d.sam_window, global_attn_indexes=list(d.sam_global)).to(dt)
        s = sub("image_encoder.sam.")
        ref = {}
        for k, v in s.items():
            k2 = (k.replace("patch_embed.projection", "patch_embed.proj").replace("layers.", "blocks.")
                  .replace("layer_norm1", "norm1").replace("layer_norm2", "norm2"))
            k2 = (k2.replace("neck.conv1", "neck.0").replace("neck.norm1", "neck.1")
                  .replace("neck.conv2", "neck.2").replace("neck.norm2", "neck.3"))
            ref[k2] = v
        enc.load_state_dict(ref, strict=True)
        want = enc(sam_px).flatten(2).transpose(1, 2)
        got, _, _ = m.image_encoder.sam(sam_px)
        results.append(("SAM image encoder vs segment-anything", rel(got, want), 1e-6))

        # --- EVA02
        from timm.models.eva import Eva

        g = d.image_size // d.eva_patch
        eva = Eva(img_size=d.image_size, patch_size=d.eva_patch, embed_dim=d.eva_dim, depth=d.eva_depth,
                  num_heads=d.eva_heads, mlp_ratio=4 * 2 / 3, qkv_fused=False, swiglu_mlp=True,
                  scale_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(d.eva_ref_feat_shape,) * 2,
                  num_classes=0).eval().to(dt)
        eva.load_state_dict(sub("image_encoder.eva."), strict=True)
        want = eva.forward_features(eva_px)[:, 1:]
        got, _, _ = m.image_encoder.eva.feature_map(eva_px)
        results.append(("EVA02 patch tokens vs timm Eva", rel(got, want), 1e-6))
        assert want.shape[1] == g * g

        # --- prompt encoder (float32: segment-anything's PromptEncoder hard-codes it)
        pe = PromptEncoder(embed_dim=d.prompt, image_embedding_size=(g, g),
                           input_image_size=(d.image_size, d.image_size), mask_in_chans=d.prompt_mask_channels)
        p = sub("prompt_encoder.")
        ref = {"pe_layer.positional_encoding_gaussian_matrix": p["shared_embedding.positional_embedding"]}
        for k, v in p.items():
            if k.startswith("point_embed."):
                ref[k.replace("point_embed.", "point_embeddings.")] = v
            elif k.startswith(("no_mask_embed", "not_a_point_embed")):
                ref[k] = v
            elif k.startswith("mask_embed."):
                k2 = (k.replace("mask_embed.", "mask_downscaling.").replace("conv1", "0").replace("layer_norm1", "1")
                      .replace("conv2", "3").replace("layer_norm2", "4").replace("conv3", "6"))
                ref[k2] = v
        pe.load_state_dict({k: v.float() for k, v in ref.items()}, strict=True)
        boxes = batch["prompt_boxes"].float() * d.image_size
        sparse_ref, dense_ref = pe(points=None, boxes=boxes, masks=None)
        m32 = m.prompt_encoder.float()
        results.append(("box prompt tokens vs segment-anything", rel(m32.embed_boxes(boxes), sparse_ref), 1e-5))
        results.append(("dense PE vs segment-anything", rel(m32.dense_pe(), pe.get_dense_pe().flatten(2).transpose(1, 2)), 1e-5))
        dense_tw = m32.dense_without_mask(boxes.shape[0])
        results.append(("no-mask dense prompt vs segment-anything", rel(dense_tw, dense_ref.flatten(2).transpose(1, 2)), 1e-6))
        m.prompt_encoder.to(dt)

        # --- two-way transformer
        depth = spec.prompt_feature_extractor_depth
        tw = TwoWayTransformer(depth=depth, embedding_dim=d.prompt, num_heads=d.two_way_heads,
                               mlp_dim=d.two_way_mlp, attention_downsample_rate=d.two_way_downsample).to(dt)
        for name, mod in tw.named_modules():
            if isinstance(mod, torch.nn.LayerNorm) and name != "norm_final_attn":
                mod.eps = 1e-6
        t = sub("prompt_feature_extractor.transformer.")
        ref = {}
        for k, v in t.items():
            k2 = k.replace("layer_norm_final_attn", "norm_final_attn")
            for i in range(1, 5):
                k2 = k2.replace(f"layer_norm{i}", f"norm{i}")
            ref[k2] = v
        tw.load_state_dict(ref, strict=True)
        b = batch["pixels"].shape[0]
        pfe = m.prompt_feature_extractor
        pe_t = m.prompt_encoder
        src = pfe.image_projection_mlp(out["image"]) + pe_t.dense_without_mask(b)
        sparse = pe_t.embed_boxes(batch["prompt_boxes"] * d.image_size)
        n = pfe.output_tokens.weight.shape[0]
        queries = torch.cat([pfe.output_tokens.weight.unsqueeze(0).expand(b, n, -1), sparse], dim=1)
        image_pe = pe_t.dense_pe()
        hs, keys = pfe.transformer(src, image_pe, queries)
        nchw = lambda x: x.transpose(1, 2).reshape(x.shape[0], -1, g, g)
        hs_ref, keys_ref = tw(nchw(src), nchw(image_pe), queries)
        results.append(("two-way transformer queries vs segment-anything", rel(hs, hs_ref), 1e-6))
        results.append(("two-way transformer keys vs segment-anything", rel(keys, keys_ref), 1e-6))

        # --- T5
        if spec.lm_mode != "lora":
            from transformers import T5Config, T5ForConditionalGeneration

            cfg = T5Config(vocab_size=d.vocab, d_model=d.d_model, d_kv=d.d_kv, d_ff=d.d_ff,
                           num_layers=d.lm_layers, num_decoder_layers=d.lm_decoder_layers,
                           num_heads=d.lm_heads, relative_attention_num_buckets=d.rel_buckets,
                           relative_attention_max_distance=d.rel_max_distance,
                           feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                           layer_norm_epsilon=d.lm_eps, dropout_rate=0.0, decoder_start_token_id=0)
            hf = T5ForConditionalGeneration(cfg).eval().to(dt)
            lm = sub("language_model.")
            lm["encoder.embed_tokens.weight"] = lm["shared.weight"]
            lm["decoder.embed_tokens.weight"] = lm["shared.weight"]
            hf.load_state_dict(lm, strict=True)
            emb = torch.cat([out["visual"], hf.shared(batch["context_ids"])], dim=1)
            mask = torch.cat([torch.ones(b, out["visual"].shape[1], dtype=torch.long),
                              (batch["context_mask"] > 0).long()], dim=1)
            enc_out = hf.encoder(inputs_embeds=emb, attention_mask=mask).last_hidden_state
            res = hf(encoder_outputs=(enc_out,), attention_mask=mask,
                     decoder_input_ids=batch["decoder_input_ids"], output_hidden_states=True)
            results.append(("T5 encoder vs transformers", rel(out["encoder_states"], enc_out), 1e-6))
            results.append(("T5 logits vs transformers", rel(out["logits"], res.logits), 1e-6))

    failed = False
    for name, err, tol in results:
        ok = err <= tol
        failed |= not ok
        print(f"{'ok  ' if ok else 'FAIL'} {err:.2e}  {name}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
