"""Architecture switches for bisecting why the twin does not bind words to objects.

`train.py --visual ... --box-loss ...` builds `PixelLlmVariant` instead of `PixelLlm`. Each switch
is one small change against the Rust model (all off = the twin exactly):

  --visual patches        replace SAM + EVA02 + prompt feature extractor by the probe's tokens:
                          `Linear(3*8*8 -> d_model)` on the 8x8 patches of the SAM-normalized
                          image + a learned table `[64, d_model]` ~ N(0, --pos-std).
  --pe-scale S            ours: multiply the Fourier image PE that the dense fusion adds before
                          `dense_output_mlp` by S (0 = no position signal there).
  --visual-pos-std S      ours: add a learned table `[64, d_model]` ~ N(0, S) to the visual
                          tokens right before T5 (0 = off).
  --no-visual-relbias     T5 encoder: no relative position bias on any pair that involves a
                          visual token (text-text pairs keep theirs).
  --box-loss giou         add 2 x (1 - GIoU) of the referring box (mean over the batch's
                          referring expressions) to the loss.
  --box-loss probe        referring tokens leave the point head's pixel L1; instead
                          5 x L1 (normalized units) + 2 x (1 - GIoU), mean over referring
                          expressions. Trace tokens keep the pixel L1 x head weight.
  --box-loss l1           as probe without the GIoU term: referring tokens leave the pixel L1;
                          5 x L1 (normalized units, summed over the 4 coordinates), mean over
                          referring expressions.
  --referring-only        (train.py) drop the trace-captioning rows of every batch.
  --lm standard           replace T5 (RMSNorm, unscaled attention, relative position bias,
                          gated GELU) by a plain pre-LayerNorm encoder-decoder of the same
                          width and depth: scaled dot-product attention, GELU MLP, learned
                          absolute text positions (std 0.02), fresh token embeddings N(0, 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import model as M


def add_arguments(ap):
    g = ap.add_argument_group("variants (variants.py)")
    g.add_argument("--visual", default="ours", choices=["ours", "patches"])
    g.add_argument("--pos-std", type=float, default=1.0, help="--visual patches: position table std")
    g.add_argument("--pe-scale", type=float, default=1.0)
    g.add_argument("--visual-pos-std", type=float, default=0.0)
    g.add_argument("--no-visual-relbias", action="store_true")
    g.add_argument("--box-loss", default="ours", choices=["ours", "giou", "l1", "probe"])
    g.add_argument("--referring-only", action="store_true")
    g.add_argument("--lm", default="t5", choices=["t5", "standard"])
    g.add_argument("--variant-seed", type=int, default=1234, help="init of the new tables")


def variant_name(args) -> str:
    parts = []
    if args.visual == "patches":
        parts.append(f"patches(pos {args.pos_std})")
    if args.pe_scale != 1.0:
        parts.append(f"pe x{args.pe_scale}")
    if args.visual_pos_std:
        parts.append(f"+pos {args.visual_pos_std}")
    if args.no_visual_relbias:
        parts.append("no visual relbias")
    if args.box_loss != "ours":
        parts.append(f"box-loss {args.box_loss}")
    if args.referring_only:
        parts.append("referring only")
    if args.lm != "t5":
        parts.append(f"lm {args.lm}")
    return ", ".join(parts) or "ours"


class PatchTokens(nn.Module):
    """The probe's visual tokens: linear patch embedding + learned 2D position table."""

    def __init__(self, d: M.TinyDims, pos_std: float):
        super().__init__()
        p = d.sam_patch
        self.patch = p
        self.proj = nn.Linear(3 * p * p, d.d_model)
        self.pos = nn.Parameter(torch.randn(d.grid * d.grid, d.d_model) * pos_std)

    def forward(self, pixels):  # [B, 3, H, W] normalized
        b = pixels.shape[0]
        x = F.unfold(pixels, self.patch, stride=self.patch)  # [B, 3*p*p, n]
        return self.proj(x.transpose(1, 2)) + self.pos.unsqueeze(0)


class StandardLm(nn.Module):
    """A plain pre-LN transformer encoder-decoder with T5's width, depth and heads."""

    def __init__(self, d: M.TinyDims, max_len: int = 128):
        super().__init__()
        w = d.d_model
        self.embed = nn.Embedding(d.vocab, w)
        self.text_pos = nn.Parameter(torch.randn(max_len, w) * 0.02)
        self.dec_pos = nn.Parameter(torch.randn(max_len, w) * 0.02)
        layer = dict(d_model=w, nhead=d.lm_heads, dim_feedforward=d.d_ff, dropout=0.0,
                     activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), d.lm_layers,
                                             norm=nn.LayerNorm(w), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), d.lm_decoder_layers,
                                             norm=nn.LayerNorm(w))
        self.lm_head = nn.Linear(w, d.vocab)

    def forward(self, visual, context_ids, context_keep, decoder_ids):
        s = context_ids.shape[1]
        text = self.embed(context_ids) + self.text_pos[:s]
        x = torch.cat([visual, text], 1)
        keep = torch.cat([torch.ones(visual.shape[:2], dtype=torch.bool, device=x.device), context_keep], 1)
        enc = self.encoder(x, src_key_padding_mask=~keep)
        t = decoder_ids.shape[1]
        y = self.embed(decoder_ids) + self.dec_pos[:t]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=x.device, dtype=x.dtype)
        dec = self.decoder(y, enc, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~keep)
        return enc, dec, self.lm_head(dec)


def giou_loss(pred, target):
    """mean(1 - GIoU) of xyxy boxes `[N, 4]` (pred corners sorted first)."""
    x0 = torch.minimum(pred[:, 0], pred[:, 2])
    x1 = torch.maximum(pred[:, 0], pred[:, 2])
    y0 = torch.minimum(pred[:, 1], pred[:, 3])
    y1 = torch.maximum(pred[:, 1], pred[:, 3])
    tx0, ty0, tx1, ty1 = target.unbind(-1)
    iw = (torch.minimum(x1, tx1) - torch.maximum(x0, tx0)).clamp(min=0)
    ih = (torch.minimum(y1, ty1) - torch.maximum(y0, ty0)).clamp(min=0)
    inter = iw * ih
    union = (x1 - x0) * (y1 - y0) + (tx1 - tx0) * (ty1 - ty0) - inter
    iou = inter / union.clamp(min=1e-7)
    hull = (torch.maximum(x1, tx1) - torch.minimum(x0, tx0)) * (
        torch.maximum(y1, ty1) - torch.minimum(y0, ty0)
    )
    giou = iou - (hull - union) / hull.clamp(min=1e-7)
    return (1.0 - giou).mean()


class PixelLlmVariant(M.PixelLlm):
    def __init__(self, spec: M.ModelSpec, args):
        super().__init__(spec)
        self.args = args
        d = self.d
        gen = torch.random.get_rng_state()
        torch.manual_seed(args.variant_seed)
        if args.visual == "patches":
            self.patch_tokens = PatchTokens(d, args.pos_std)
        if args.visual_pos_std:
            self.visual_pos = nn.Parameter(torch.randn(d.grid * d.grid, d.d_model) * args.visual_pos_std)
        if args.lm == "standard":
            self.standard_lm = StandardLm(d)
        torch.random.set_rng_state(gen)

    def new_parameter_names(self):
        return [
            n for n, _ in self.named_parameters()
            if n == "visual_pos" or n.startswith(("patch_tokens.", "standard_lm."))
        ]

    def unused_prefixes(self):
        unused = ()
        if self.args.visual == "patches":
            unused += ("image_encoder.", "prompt_encoder.", "prompt_feature_extractor.")
        if self.args.lm == "standard":
            unused += ("language_model.",)
        return unused

    def visual_tokens(self, batch):
        b = batch["pixels"].shape[0]
        sam_pixels = self.pixel_values(batch["pixels"], M.SAM_NORMALIZATION)
        if self.args.visual == "patches":
            return self.patch_tokens(sam_pixels), None, (self.d.grid, self.d.grid)
        eva_pixels = self.pixel_values(batch["pixels"], M.CLIP_NORMALIZATION)
        image, h, w = self.image_encoder(sam_pixels, eva_pixels)
        pe = self.prompt_encoder
        sparse = pe.embed_boxes(batch["prompt_boxes"].to(image) * pe.input_image_size)
        dense = pe.dense_without_mask(b)
        image_pe = pe.dense_pe()
        pfe = self.prompt_feature_extractor
        if pfe.fuse == "dense" and self.args.pe_scale != 1.0:
            # PromptFeatureExtractor.forward with the PE of the fused output scaled.
            src = pfe.image_projection_mlp(image) + dense
            n = pfe.output_tokens.weight.shape[0]
            queries = torch.cat([pfe.output_tokens.weight.unsqueeze(0).expand(b, n, -1), sparse], 1)
            _, keys = pfe.transformer(src, image_pe, queries)
            visual = pfe.dense_output_mlp(keys + self.args.pe_scale * image_pe.expand(b, -1, -1))
        else:
            visual = pfe(image, image_pe, dense, sparse)
        visual = self.add_visual_positions(visual)
        if self.args.visual_pos_std:
            visual = visual + self.visual_pos.unsqueeze(0)
        return visual, image, (h, w)

    def forward(self, batch: dict):
        b = batch["pixels"].shape[0]
        visual, image, grid = self.visual_tokens(batch)
        if self.args.lm == "standard":
            hidden, dec, logits = self.standard_lm(
                visual, batch["context_ids"], batch["context_mask"] > 0, batch["decoder_input_ids"]
            )
            return {"image": image, "grid": grid, "visual": visual, "encoder_states": hidden,
                    "decoder": dec, "logits": logits}
        lm = self.language_model
        context = lm.shared(batch["context_ids"])
        encoder_input = torch.cat([visual, context], dim=1)
        mask = torch.cat(
            [
                torch.ones(b, visual.shape[1], dtype=torch.bool, device=visual.device),
                batch["context_mask"] > 0,
            ],
            dim=1,
        )
        prefix = visual.shape[1] if self.args.no_visual_relbias else self.unordered_prefix(visual)
        hidden = lm.encoder(encoder_input, mask=mask, unordered_prefix=prefix)
        dec = lm.decoder(lm.shared(batch["decoder_input_ids"]), enc=hidden, enc_mask=mask)
        logits = lm.lm_head(dec)
        return {"image": image, "grid": grid, "visual": visual, "encoder_states": hidden,
                "decoder": dec, "logits": logits}

    def loss_terms(self, batch: dict):
        if self.args.box_loss == "ours":
            return super().loss_terms(batch)
        out = self.forward(batch)
        text = M.label_smoothed_cross_entropy(
            out["logits"], batch["target_ids"], batch["target_weights"], self.spec.label_smoothing
        )
        terms = [("text", text, 1.0)]
        total = text
        referring = batch["has_target_box"] > 0
        ref_batch = batch
        if self.args.box_loss in ("probe", "l1"):
            ref_batch = dict(batch)
            keep = (~referring).to(batch["location_weights"])[:, None, None]
            ref_batch["location_weights"] = batch["location_weights"] * keep
        ctx = dict(out, batch=ref_batch, prompt_encoder=self.prompt_encoder)
        for name, value, weight in self.head_terms(ctx):
            terms.append((name, value, weight))
            total = total + value * weight
        if bool(referring.any()):
            head = self.heads[next(h.name for h in self.spec.heads if h.kind in ("point", "box"))]
            valid = batch["location_weights"][..., 0] > 0  # [B, T]
            corners = head(out["decoder"])  # [B, T, 4]
            rows = referring.nonzero().squeeze(1)
            # the (single) valid token of each referring expression
            tok = valid[rows].float().argmax(1)
            pred = corners[rows, tok]
            target = batch["target_boxes"][rows]
            if self.args.box_loss in ("giou", "probe"):
                g = giou_loss(pred, target)
                terms.append(("giou", g, 2.0))
                total = total + 2.0 * g
            if self.args.box_loss in ("l1", "probe"):
                l1 = (pred - target).abs().sum(-1).mean()
                terms.append(("ref_l1", l1, 5.0))
                total = total + 5.0 * l1
        return total, terms, out
