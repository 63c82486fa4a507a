"""A PyTorch twin of the Rust PixelLLM (`pixel_model::model::PixelLlm`, preset `pixel-tiny`).

Module for module as the Rust code computes it (not as the paper or the reference libraries
would, where they differ), with attribute names chosen so that `state_dict()` keys are the
Rust checkpoint names (`pixel grads` writes them to init.safetensors):

    image_encoder.sam.*                 SAM ViT (windowed attention, decomposed rel-pos, neck)
    image_encoder.eva.*                 EVA02 (2D RoPE, SwiGLU with inner LayerNorm)
    prompt_encoder.*                    SAM prompt encoder (random Fourier features)
    prompt_feature_extractor.*          output tokens + two-way transformer + fusion
    language_model.*                    T5 (gated GELU, untied head, relative bias, LoRA on q/v)
    heads.<name>.*                      the configured output heads

Where the Rust code runs a part without its gradient tape, the twin runs it without autograd:
  * SAM's image encoder when `freeze_sam` (`PixelLlm::encode`); with `freeze_sam = false` it
    runs on the tape and trains;
  * the random Fourier matrix `prompt_encoder.shared_embedding.positional_embedding` (frozen by
    `ModelConfig::trainable`, used without a tape by `RandomFourierEncoding::forward`).

One more place follows the Rust code rather than exact arithmetic: the losses divide by the
sequential float32 sum of their weights (`f32_sum`).

Works in float32 or float64 (`PixelLlm.to(dtype)`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# pixel_core::nn::attention::MASKED: the additive bias of a hidden key.
MASKED = -1e9

# pixel_vision::preprocess
SAM_NORMALIZATION = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
CLIP_NORMALIZATION = (
    [0.48145466 * 255.0, 0.4578275 * 255.0, 0.40821073 * 255.0],
    [0.26862954 * 255.0, 0.26130258 * 255.0, 0.27577711 * 255.0],
)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class TinyDims:
    """`pixel_model::presets::PixelTiny`."""

    image_size: int = 64
    # SAM (PixelTiny::sam)
    sam_hidden: int = 64
    sam_out: int = 32
    sam_layers: int = 2
    sam_heads: int = 4
    sam_patch: int = 8
    sam_mlp: int = 128
    sam_window: int = 4
    sam_global: tuple = (1,)
    sam_eps: float = 1e-6
    # EVA02 (Eva02Config::sized(64, 64, 2, 4, false, true), patch 8, ref_feat_shape 8)
    eva_dim: int = 64
    eva_depth: int = 2
    eva_heads: int = 4
    eva_patch: int = 8
    eva_mlp: int = int(64 * (4.0 * 2.0 / 3.0))  # 170
    eva_ref_feat_shape: int = 8
    eva_rope_temperature: float = 10000.0
    eva_eps: float = 1e-6
    # prompt encoder / two-way transformer
    prompt: int = 64
    prompt_mask_channels: int = 4
    prompt_points: int = 4
    prompt_eps: float = 1e-6
    two_way_heads: int = 4
    two_way_mlp: int = 128
    two_way_downsample: int = 2
    # T5 (PixelTiny::language_model)
    vocab: int = 256
    d_model: int = 128
    d_kv: int = 32
    d_ff: int = 256
    lm_layers: int = 2
    lm_decoder_layers: int = 2
    lm_heads: int = 4
    rel_buckets: int = 32
    rel_max_distance: int = 128
    lm_eps: float = 1e-6
    # heads
    point_hidden: int = 128

    @property
    def visual(self) -> int:
        return self.sam_out + self.eva_dim

    @property
    def grid(self) -> int:
        return self.image_size // self.sam_patch


PRESETS = {"pixel-tiny": TinyDims}


@dataclass
class HeadSpec:
    kind: str
    name: str
    weight: float
    options: dict = field(default_factory=dict)


@dataclass
class ModelSpec:
    """The `[model]` section of an experiment config (`pixel_model::model::ModelConfig`)."""

    preset: str = "pixel-tiny"
    output_tokens: int = 8
    prompt_fuse: str = "dense"
    prompt_feature_extractor_depth: int = 2
    label_smoothing: float = 0.1
    freeze_sam: bool = True
    lm_mode: str = "full"
    lora_rank: int = 8
    lora_scale: float = 2.0
    visual_relative_bias: bool = True
    visual_position_std: float = 0.0
    heads: list = field(default_factory=list)

    @staticmethod
    def from_config(config: dict) -> "ModelSpec":
        m = config["model"]
        lm = m.get("lm", {})
        heads = []
        for h in m.get("heads", []):
            options = {k: v for k, v in h.items() if k not in ("kind", "name", "weight")}
            heads.append(
                HeadSpec(h["kind"], h.get("name", h["kind"]), float(h.get("weight", 1.0)), options)
            )
        return ModelSpec(
            preset=m.get("preset", "pixel-tiny"),
            output_tokens=int(m["output_tokens"]),
            prompt_fuse=m.get("prompt_fuse", "sparse"),
            prompt_feature_extractor_depth=int(m["prompt_feature_extractor_depth"]),
            label_smoothing=float(m["label_smoothing"]),
            freeze_sam=bool(m["freeze_sam"]),
            lm_mode=lm.get("mode", "full"),
            lora_rank=int(lm.get("lora_rank", 8)),
            lora_scale=float(lm.get("lora_scale", 2.0)),
            visual_relative_bias=bool(m.get("visual_relative_bias", True)),
            visual_position_std=float(m.get("visual_position_std", 0.0)),
            heads=heads,
        )


def glob_match(pattern: str, name: str) -> bool:
    """`pixel_core::params::glob_match`: `*` is any run of characters (dots included)."""
    p, n = pattern, name
    pi = ni = 0
    star = None
    while ni < len(n):
        if pi < len(p) and p[pi] == "*":
            star = (pi, ni)
            pi += 1
        elif pi < len(p) and p[pi] == n[ni]:
            pi += 1
            ni += 1
        elif star is not None:
            sp, sn = star
            pi, ni = sp + 1, sn + 1
            star = (sp, sn + 1)
        else:
            return False
    return all(c == "*" for c in p[pi:])


def trainable_rules(spec: ModelSpec) -> list:
    """`ModelConfig::trainable`: (pattern, trainable) rules; the last match decides."""
    rules = [
        ("*positional_encoding_gaussian_matrix", False),
        ("*shared_embedding.positional_embedding", False),
    ]
    if spec.freeze_sam:
        rules.append(("image_encoder.sam.*", False))
    if spec.lm_mode == "frozen":
        rules.append(("language_model.*", False))
    elif spec.lm_mode == "lora":
        rules.append(("language_model.*", False))
        rules.append(("language_model.*lora_*", True))
    return rules


def is_trainable(rules: list, name: str) -> bool:
    for pattern, train in reversed(rules):
        if glob_match(pattern, name):
            return train
    return True


# --------------------------------------------------------------------------------------------
# Shared layers
# --------------------------------------------------------------------------------------------


def to_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)


def from_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, n, h * d)


def attention(q, k, v, scale, bias=None):
    """`pixel_core::nn::attention{,_with_bias}`: softmax(q k^T * scale + bias) v."""
    scores = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1) @ v


def gelu(x):
    """`pixel_core::nn::gelu`: erf GELU with its true derivative."""
    return F.gelu(x)


def gelu_tanh(x):
    """dfdx `fast_gelu` (HF gelu_new)."""
    return F.gelu(x, approximate="tanh")


def sincos_fourier(coords: torch.Tensor, gaussian: torch.Tensor) -> torch.Tensor:
    """`RandomFourierEncoding::forward` on normalized coords `[B, n, 2]` (no tape on G)."""
    projected = ((coords * 2.0 - 1.0) @ gaussian.detach()) * (2.0 * math.pi)
    return torch.cat([projected.sin(), projected.cos()], dim=-1)


class MlpBlock(nn.Module):
    """`pixel_vision::layers::MlpBlock`: lin2(act(lin1(x)))."""

    def __init__(self, dim, hidden, act):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = act

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


class Mlp(nn.Module):
    """`pixel_core::nn::Mlp`: `layers.0 .. layers.{depth-1}`, activation between."""

    def __init__(self, dims: list, act):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = act

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = self.act(x)
        return x


class FeedForward(nn.Module):
    """`pixel_vision::layers::FeedForward`: proj_in, layers.*, proj_out with ReLU between."""

    def __init__(self, dim_in, hidden, dim_out, depth):
        super().__init__()
        self.proj_in = nn.Linear(dim_in, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 2))
        self.proj_out = nn.Linear(hidden, dim_out)

    def forward(self, x):
        x = F.relu(self.proj_in(x))
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.proj_out(x)


class Table(nn.Module):
    """A tensor stored as `<name>.weight` (an embedding table used whole)."""

    def __init__(self, rows, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, dim))


def conv_tokens(conv: nn.Module, tokens: torch.Tensor, h: int, w: int):
    """A conv on a token map `[B, h*w, C]` -> (tokens, h', w')."""
    b, n, c = tokens.shape
    x = tokens.transpose(1, 2).reshape(b, c, h, w)
    y = conv(x)
    _, c2, h2, w2 = y.shape
    return y.flatten(2).transpose(1, 2), h2, w2


# --------------------------------------------------------------------------------------------
# SAM image encoder (pixel_vision::sam::image_encoder)
# --------------------------------------------------------------------------------------------


def rel_pos_index(q_size: int, k_size: int) -> torch.Tensor:
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    offset = np.float32((k_size - 1.0) * k_scale)
    i = np.arange(q_size, dtype=np.float32)[:, None] * np.float32(q_scale)
    j = np.arange(k_size, dtype=np.float32)[None, :] * np.float32(k_scale)
    return torch.from_numpy(((i - j) + offset).astype(np.int64))


class SamAttention(nn.Module):
    def __init__(self, dim, heads, rel_size):
        super().__init__()
        hd = dim // heads
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, hd))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, hd))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads = heads

    def get_rel_pos(self, q_size, k_size, table):
        target = 2 * max(q_size, k_size) - 1
        assert table.shape[0] == target, "relative table resizing is not needed by pixel-tiny"
        return table[rel_pos_index(q_size, k_size).to(table.device)]

    def forward(self, x, h, w):
        c = x.shape[-1]
        qkv = self.qkv(x)
        q = to_heads(qkv[..., :c], self.heads)
        k = to_heads(qkv[..., c : 2 * c], self.heads)
        v = to_heads(qkv[..., 2 * c :], self.heads)
        b, nh, n, hd = q.shape
        rh = self.get_rel_pos(h, h, self.rel_pos_h)  # [h, kh, hd]
        rw = self.get_rel_pos(w, w, self.rel_pos_w)  # [w, kw, hd]
        r_q = q.reshape(b * nh, h, w, hd)
        rel_h = torch.einsum("byxc,ykc->byxk", r_q, rh)
        rel_w = torch.einsum("byxc,xkc->byxk", r_q, rw)
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b, nh, n, h * w)
        out = attention(q, k, v, 1.0 / math.sqrt(c // self.heads), bias)
        return self.proj(from_heads(out))


class SamLayer(nn.Module):
    def __init__(self, d: TinyDims, window):
        super().__init__()
        rel = window if window > 0 else d.grid
        self.layer_norm1 = nn.LayerNorm(d.sam_hidden, eps=d.sam_eps)
        self.attn = SamAttention(d.sam_hidden, d.sam_heads, rel)
        self.layer_norm2 = nn.LayerNorm(d.sam_hidden, eps=d.sam_eps)
        self.mlp = MlpBlock(d.sam_hidden, d.sam_mlp, gelu)
        self.window = window

    def forward(self, x, h, w):
        b, _, c = x.shape
        normed = self.layer_norm1(x)
        if self.window > 0:
            ws = self.window
            grid = normed.reshape(b, h, w, c)
            ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
            grid = F.pad(grid, (0, 0, 0, pw, 0, ph))
            hp, wp = h + ph, w + pw
            windows = (
                grid.reshape(b, hp // ws, ws, wp // ws, ws, c)
                .permute(0, 1, 3, 2, 4, 5)
                .reshape(-1, ws * ws, c)
            )
            out = self.attn(windows, ws, ws)
            out = (
                out.reshape(b, hp // ws, wp // ws, ws, ws, c)
                .permute(0, 1, 3, 2, 4, 5)
                .reshape(b, hp, wp, c)[:, :h, :w]
                .reshape(b, h * w, c)
            )
        else:
            out = self.attn(normed, h, w)
        x = x + out
        return x + self.mlp(self.layer_norm2(x))


class SamPatchEmbed(nn.Module):
    def __init__(self, d: TinyDims):
        super().__init__()
        self.projection = nn.Conv2d(3, d.sam_hidden, d.sam_patch, stride=d.sam_patch)


class SamNeck(nn.Module):
    def __init__(self, d: TinyDims):
        super().__init__()
        self.conv1 = nn.Conv2d(d.sam_hidden, d.sam_out, 1, bias=False)
        self.layer_norm1 = nn.LayerNorm(d.sam_out, eps=d.sam_eps)
        self.conv2 = nn.Conv2d(d.sam_out, d.sam_out, 3, padding=1, bias=False)
        self.layer_norm2 = nn.LayerNorm(d.sam_out, eps=d.sam_eps)

    def forward(self, x, h, w):
        x, h, w = conv_tokens(self.conv1, x, h, w)
        x = self.layer_norm1(x)
        x, h, w = conv_tokens(self.conv2, x, h, w)
        return self.layer_norm2(x)


class SamImageEncoder(nn.Module):
    def __init__(self, d: TinyDims):
        super().__init__()
        g = d.grid
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, d.sam_hidden))
        self.patch_embed = SamPatchEmbed(d)
        self.layers = nn.ModuleList(
            SamLayer(d, 0 if i in d.sam_global else d.sam_window) for i in range(d.sam_layers)
        )
        self.neck = SamNeck(d)

    def forward(self, images):
        x = self.patch_embed.projection(images)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        assert self.pos_embed.shape[1:3] == (h, w)
        x = x + self.pos_embed.reshape(1, h * w, c)
        for layer in self.layers:
            x = layer(x, h, w)
        return self.neck(x, h, w), h, w


# --------------------------------------------------------------------------------------------
# EVA02 (pixel_vision::eva02)
# --------------------------------------------------------------------------------------------


def rope_tables(h, w, head_dim, ref_feat_shape, temperature):
    """`rope_tables`: (sin, cos) `[h*w, head_dim]`, interleaved pairs, y bands then x bands.
    Bands and positions in float32 as timm (and the Rust code) compute them."""
    n = head_dim // 4
    bands = 1.0 / np.power(np.float32(temperature), np.arange(n, dtype=np.float32) / np.float32(n))
    bands = bands.astype(np.float32)
    ty = (np.arange(h, dtype=np.float32) / np.float32(h) * np.float32(ref_feat_shape)).astype(np.float32)
    tx = (np.arange(w, dtype=np.float32) / np.float32(w) * np.float32(ref_feat_shape)).astype(np.float32)
    rows = []
    for py in ty:
        for px in tx:
            angles = np.concatenate([py * bands, px * bands]).astype(np.float32)
            rows.append(np.repeat(angles, 2))
    angles = torch.from_numpy(np.stack(rows).astype(np.float64))
    return angles.sin(), angles.cos()


def rotate_pairs(x):
    """timm's `rot`: pairs (a, b) -> (-b, a)."""
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([-b, a], dim=-1).reshape(x.shape)


class EvaAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.heads = heads

    def forward(self, x, sin, cos):
        c = x.shape[-1]
        q = to_heads(self.q_proj(x), self.heads)
        k = to_heads(self.k_proj(x), self.heads)
        v = to_heads(self.v_proj(x), self.heads)

        def rope(t):
            patches = t[:, :, 1:]
            patches = patches * cos + rotate_pairs(patches) * sin
            return torch.cat([t[:, :, :1], patches], dim=2)

        out = attention(rope(q), rope(k), v, 1.0 / math.sqrt(c // self.heads))
        return self.proj(from_heads(out))


class SwiGlu(nn.Module):
    def __init__(self, dim, hidden, eps):
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden)
        self.fc1_x = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        gate = self.fc1_g(x)
        return self.fc2(self.norm(gate.sigmoid() * gate * self.fc1_x(x)))


class EvaBlock(nn.Module):
    def __init__(self, d: TinyDims):
        super().__init__()
        self.norm1 = nn.LayerNorm(d.eva_dim, eps=d.eva_eps)
        self.attn = EvaAttention(d.eva_dim, d.eva_heads)
        self.norm2 = nn.LayerNorm(d.eva_dim, eps=d.eva_eps)
        self.mlp = SwiGlu(d.eva_dim, d.eva_mlp, d.eva_eps)

    def forward(self, x, sin, cos):
        x = x + self.attn(self.norm1(x), sin, cos)
        return x + self.mlp(self.norm2(x))


class EvaPatchEmbed(nn.Module):
    def __init__(self, d: TinyDims):
        super().__init__()
        self.proj = nn.Conv2d(3, d.eva_dim, d.eva_patch, stride=d.eva_patch)


class Eva02(nn.Module):
    def __init__(self, d: TinyDims):
        super().__init__()
        g = d.image_size // d.eva_patch
        self.d = d
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d.eva_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + g * g, d.eva_dim))
        self.patch_embed = EvaPatchEmbed(d)
        self.blocks = nn.ModuleList(EvaBlock(d) for _ in range(d.eva_depth))
        self.fc_norm = nn.LayerNorm(d.eva_dim, eps=d.eva_eps)  # unused by feature maps

    def feature_map(self, images):
        """Patch tokens `[B, h*w, C]` of `forward_features` (class token dropped, no fc_norm)."""
        d = self.d
        x = self.patch_embed.proj(images)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(b, 1, c), x], dim=1)
        assert self.pos_embed.shape[1] == 1 + h * w
        x = x + self.pos_embed
        sin, cos = rope_tables(h, w, c // d.eva_heads, d.eva_ref_feat_shape, d.eva_rope_temperature)
        sin, cos = sin.to(x), cos.to(x)
        for block in self.blocks:
            x = block(x, sin, cos)
        return x[:, 1:], h, w


class DualImageEncoder(nn.Module):
    def __init__(self, d: TinyDims, freeze_sam: bool = True):
        super().__init__()
        self.sam = SamImageEncoder(d)
        self.eva = Eva02(d)
        self.freeze_sam = freeze_sam

    def forward(self, sam_pixels, eva_pixels):
        # A frozen SAM runs without a gradient tape (`PixelLlm::encode`); otherwise on it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_sam):
            sam, h, w = self.sam(sam_pixels)
        eva, eh, ew = self.eva.feature_map(eva_pixels)
        assert (eh, ew) == (h, w), "pixel-tiny's EVA02 grid equals SAM's (no resize)"
        return torch.cat([sam, eva], dim=-1), h, w


# --------------------------------------------------------------------------------------------
# SAM prompt encoder (pixel_vision::sam::prompt_encoder)
# --------------------------------------------------------------------------------------------


class SharedEmbedding(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(2, dim // 2))


class MaskEmbed(nn.Module):
    """Named for the checkpoint only: box prompts never reach it."""

    def __init__(self, d: TinyDims):
        super().__init__()
        q = d.prompt_mask_channels // 4
        self.conv1 = nn.Conv2d(1, q, 2, stride=2)
        self.layer_norm1 = nn.LayerNorm(q, eps=d.prompt_eps)
        self.conv2 = nn.Conv2d(q, d.prompt_mask_channels, 2, stride=2)
        self.layer_norm2 = nn.LayerNorm(d.prompt_mask_channels, eps=d.prompt_eps)
        self.conv3 = nn.Conv2d(d.prompt_mask_channels, d.prompt, 1)


class PromptEncoder(nn.Module):
    def __init__(self, d: TinyDims):
        super().__init__()
        self.shared_embedding = SharedEmbedding(d.prompt)
        self.mask_embed = MaskEmbed(d)
        self.no_mask_embed = Table(1, d.prompt)
        self.point_embed = nn.ModuleList(Table(1, d.prompt) for _ in range(d.prompt_points))
        self.not_a_point_embed = Table(1, d.prompt)
        self.input_image_size = d.image_size
        self.grid = d.grid

    def embed_boxes(self, boxes_px):
        """`[B, 4]` pixel xyxy -> `[B, 2, C]` (Fourier features + corner tables)."""
        b = boxes_px.shape[0]
        coords = (boxes_px.reshape(b, 2, 2) + 0.5) / self.input_image_size
        pe = sincos_fourier(coords, self.shared_embedding.positional_embedding)
        corners = torch.cat([self.point_embed[2].weight, self.point_embed[3].weight], dim=0)
        return pe + corners.unsqueeze(0)

    def dense_without_mask(self, batch):
        return self.no_mask_embed.weight.reshape(1, 1, -1).expand(batch, self.grid * self.grid, -1)

    def dense_pe(self):
        g = self.grid
        ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        G = self.shared_embedding.positional_embedding
        coords = torch.stack([(xs + 0.5) / g, (ys + 0.5) / g], dim=-1).reshape(1, g * g, 2).to(G)
        return sincos_fourier(coords, G)


# --------------------------------------------------------------------------------------------
# Two-way transformer (pixel_vision::sam::two_way)
# --------------------------------------------------------------------------------------------


class DownsampledAttention(nn.Module):
    def __init__(self, dim, heads, downsample):
        super().__init__()
        inner = dim // downsample
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)
        self.heads = heads
        self.inner = inner

    def forward(self, q, k, v):
        q = to_heads(self.q_proj(q), self.heads)
        k = to_heads(self.k_proj(k), self.heads)
        v = to_heads(self.v_proj(v), self.heads)
        out = attention(q, k, v, 1.0 / math.sqrt(self.inner // self.heads))
        return self.out_proj(from_heads(out))


class TwoWayBlock(nn.Module):
    def __init__(self, dim, heads, mlp, downsample, eps, skip_first_layer_pe):
        super().__init__()
        self.self_attn = DownsampledAttention(dim, heads, 1)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn_token_to_image = DownsampledAttention(dim, heads, downsample)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MlpBlock(dim, mlp, F.relu)
        self.layer_norm3 = nn.LayerNorm(dim, eps=eps)
        self.layer_norm4 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn_image_to_token = DownsampledAttention(dim, heads, downsample)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.layer_norm1(queries)
        q = queries + query_pe
        k = keys + key_pe
        queries = self.layer_norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.layer_norm3(queries + self.mlp(queries))
        q = queries + query_pe
        k = keys + key_pe
        keys = self.layer_norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, dim, depth, heads, mlp, downsample, eps):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayBlock(dim, heads, mlp, downsample, eps, i == 0) for i in range(depth)
        )
        self.final_attn_token_to_image = DownsampledAttention(dim, heads, downsample)
        self.layer_norm_final_attn = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, image_tokens, image_pe, queries):
        key_pe = image_pe.expand(image_tokens.shape[0], -1, -1)
        query_pe = queries
        keys = image_tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, query_pe, key_pe)
        q = queries + query_pe
        k = keys + key_pe
        queries = self.layer_norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


# --------------------------------------------------------------------------------------------
# Prompt feature extractor (pixel_model::model::prompt_feature_extractor)
# --------------------------------------------------------------------------------------------


class Linear1(nn.Module):
    """A one-layer `Mlp`-named linear map: `<name>.layers.0.{weight,bias}`."""

    def __init__(self, a, b):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(a, b)])

    def forward(self, x):
        return self.layers[0](x)


class PromptFeatureExtractor(nn.Module):
    def __init__(self, d: TinyDims, spec: ModelSpec):
        super().__init__()
        self.output_tokens = Table(spec.output_tokens, d.prompt)
        self.image_projection_mlp = Linear1(d.visual, d.prompt)
        self.transformer = TwoWayTransformer(
            d.prompt,
            spec.prompt_feature_extractor_depth,
            d.two_way_heads,
            d.two_way_mlp,
            d.two_way_downsample,
            1e-6,
        )
        self.fuse = spec.prompt_fuse
        if self.fuse == "sparse":
            self.output_hypernetworks_mlps = nn.ModuleList(
                Linear1(d.prompt, d.d_model) for _ in range(spec.output_tokens)
            )
        elif self.fuse == "dense":
            self.dense_output_mlp = Linear1(d.prompt, d.d_model)
        else:
            raise ValueError(f"prompt_fuse {self.fuse!r}")

    def forward(self, image, image_pe, dense_prompt, sparse_prompt):
        b = image.shape[0]
        src = self.image_projection_mlp(image) + dense_prompt
        n = self.output_tokens.weight.shape[0]
        outputs = self.output_tokens.weight.unsqueeze(0).expand(b, n, -1)
        queries = torch.cat([outputs, sparse_prompt], dim=1)
        hs, keys = self.transformer(src, image_pe, queries)
        if self.fuse == "dense":
            return self.dense_output_mlp(keys + image_pe.expand(b, -1, -1))
        return torch.cat(
            [hyper(hs[:, i : i + 1]) for i, hyper in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )


# --------------------------------------------------------------------------------------------
# T5 with LoRA (pixel_lm::t5)
# --------------------------------------------------------------------------------------------


def relative_position_bucket(rel: int, bidirectional: bool, num_buckets: int, max_distance: int):
    """`relative_position_bucket`, with its float32 logarithms."""
    buckets = num_buckets
    bucket = 0
    if bidirectional:
        buckets //= 2
        if rel > 0:
            bucket += buckets
        n = abs(rel)
    else:
        n = max(-rel, 0)
    max_exact = buckets // 2
    if n < max_exact:
        bucket += n
    else:
        ratio = np.float32(np.log(np.float32(n) / np.float32(max_exact))) / np.float32(
            np.float32(np.log(max_distance / max_exact))
        )
        large = max_exact + int(np.float32(ratio * np.float32(buckets - max_exact)))
        bucket += min(large, buckets - 1)
    return bucket


class LoraLinear(nn.Module):
    """`pixel_core::nn::LoraLinear` without bias: `q.weight`, `q.lora_A.weight`, `q.lora_B.weight`."""

    def __init__(self, a, b, rank=None, scale=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(b, a))
        self.scale = scale
        if rank:
            self.lora_A = nn.Linear(a, rank, bias=False)
            self.lora_B = nn.Linear(rank, b, bias=False)
        else:
            self.lora_A = self.lora_B = None

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.lora_A is not None:
            y = y + self.lora_B(self.lora_A(x)) * self.scale
        return y


class T5Attention(nn.Module):
    def __init__(self, d: TinyDims, has_bias: bool, lora):
        super().__init__()
        inner = d.lm_heads * d.d_kv
        self.q = LoraLinear(d.d_model, inner, *lora)
        self.k = nn.Linear(d.d_model, inner, bias=False)
        self.v = LoraLinear(d.d_model, inner, *lora)
        self.o = nn.Linear(inner, d.d_model, bias=False)
        if has_bias:
            self.relative_attention_bias = nn.Embedding(d.rel_buckets, d.lm_heads)
        self.heads = d.lm_heads

    def forward(self, x, kv, bias):
        kv = x if kv is None else kv
        q = to_heads(self.q(x), self.heads)
        k = to_heads(self.k(kv), self.heads)
        v = to_heads(self.v(kv), self.heads)
        return self.o(from_heads(attention(q, k, v, 1.0, bias)))

    def position_bias(self, queries, keys, bidirectional, max_distance):
        table = self.relative_attention_bias.weight
        idx = [
            relative_position_bucket(j - i, bidirectional, table.shape[0], max_distance)
            for i in range(queries)
            for j in range(keys)
        ]
        idx = torch.tensor(idx, device=table.device)
        return table[idx].reshape(queries, keys, -1).permute(2, 0, 1).unsqueeze(0)


class RmsNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight


class SelfAttentionLayer(nn.Module):
    def __init__(self, d, has_bias, lora):
        super().__init__()
        self.SelfAttention = T5Attention(d, has_bias, lora)
        self.layer_norm = RmsNorm(d.d_model, d.lm_eps)


class CrossAttentionLayer(nn.Module):
    def __init__(self, d, lora):
        super().__init__()
        self.EncDecAttention = T5Attention(d, False, lora)
        self.layer_norm = RmsNorm(d.d_model, d.lm_eps)


class GatedGelu(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.wi_0 = nn.Linear(d.d_model, d.d_ff, bias=False)
        self.wi_1 = nn.Linear(d.d_model, d.d_ff, bias=False)
        self.wo = nn.Linear(d.d_ff, d.d_model, bias=False)

    def forward(self, x):
        return self.wo(gelu_tanh(self.wi_0(x)) * self.wi_1(x))


class FeedForwardLayer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.DenseReluDense = GatedGelu(d)
        self.layer_norm = RmsNorm(d.d_model, d.lm_eps)


class T5Block(nn.Module):
    def __init__(self, d, is_decoder, has_bias, lora):
        super().__init__()
        layers = [SelfAttentionLayer(d, has_bias, lora)]
        if is_decoder:
            layers.append(CrossAttentionLayer(d, lora))
        layers.append(FeedForwardLayer(d))
        self.layer = nn.ModuleList(layers)
        self.is_decoder = is_decoder

    def forward(self, x, bias, enc=None, enc_bias=None):
        sa = self.layer[0]
        x = x + sa.SelfAttention(sa.layer_norm(x), None, bias)
        if self.is_decoder:
            ca = self.layer[1]
            x = x + ca.EncDecAttention(ca.layer_norm(x), enc, enc_bias)
        ff = self.layer[-1]
        return x + ff.DenseReluDense(ff.layer_norm(x))


def padding_bias(keep: torch.Tensor, queries: int) -> torch.Tensor:
    """`[B, keys]` bool -> `[B, 1, queries, keys]` additive bias (0 or MASKED)."""
    zero = torch.zeros((), dtype=torch.float64, device=keep.device)
    bias = torch.where(keep, zero, zero + MASKED)
    return bias[:, None, None, :].expand(-1, 1, queries, -1)


class T5Stack(nn.Module):
    def __init__(self, d, is_decoder, lora):
        super().__init__()
        n = d.lm_decoder_layers if is_decoder else d.lm_layers
        self.block = nn.ModuleList(T5Block(d, is_decoder, i == 0, lora) for i in range(n))
        self.final_layer_norm = RmsNorm(d.d_model, d.lm_eps)
        self.is_decoder = is_decoder
        self.max_distance = d.rel_max_distance

    def forward(self, x, mask=None, enc=None, enc_mask=None, unordered_prefix=0):
        """`T5Stack::forward_with_unordered_prefix`: pairs with a query or key among the first
        `unordered_prefix` tokens take no relative position bias."""
        b, t, _ = x.shape
        position = self.block[0].layer[0].SelfAttention.position_bias(
            t, t, not self.is_decoder, self.max_distance
        )
        if unordered_prefix:
            keep = torch.zeros(t, t, dtype=torch.bool, device=x.device)
            keep[unordered_prefix:, unordered_prefix:] = True
            position = position * keep.to(position)
        if self.is_decoder:
            causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
            mask_bias = torch.where(causal, MASKED, 0.0).to(x)[None, None]
        else:
            mask_bias = padding_bias(mask, t).to(x)
        bias = position + mask_bias
        enc_bias = padding_bias(enc_mask, t).to(x) if enc is not None else None
        for block in self.block:
            x = block(x, bias, enc, enc_bias)
        return self.final_layer_norm(x)


class T5(nn.Module):
    def __init__(self, d: TinyDims, lora):
        super().__init__()
        self.shared = nn.Embedding(d.vocab, d.d_model)
        self.encoder = T5Stack(d, False, lora)
        self.decoder = T5Stack(d, True, lora)
        self.lm_head = nn.Linear(d.d_model, d.vocab, bias=False)


# --------------------------------------------------------------------------------------------
# Heads (pixel_model::heads)
# --------------------------------------------------------------------------------------------


def f32_sum(weights: torch.Tensor) -> float:
    """`weights.iter().sum::<f32>()`: a sequential float32 sum, as the Rust losses normalise
    (it differs from the exact sum by up to ~1e-6 relative for hundreds of fractional weights)."""
    w = weights.detach().cpu().numpy().astype(np.float32).reshape(-1)
    return float(np.cumsum(w, dtype=np.float32)[-1]) if w.size else 0.0


def masked_l1(pred, targets, weights):
    """`pixel_core::loss::masked_l1`: sum(|p - t| w) / sum(w)."""
    return ((pred - targets).abs() * weights).sum() / f32_sum(weights)


def pixel_l1(corners, batch, side):
    w = batch["location_weights"]
    if not bool((w != 0).any()):
        return None
    return masked_l1(corners * side, batch["location_targets"] * side, w)


REFERRING_TASK = 1  # `grads.rs`' code of TaskKind::ReferringLocalization


def generalized_iou(pred, targets):
    """`heads::referring_box::generalized_iou`: GIoU `[n]` of the hulls of `pred`'s point pairs."""
    x0, x1 = torch.minimum(pred[:, 0], pred[:, 2]), torch.maximum(pred[:, 0], pred[:, 2])
    y0, y1 = torch.minimum(pred[:, 1], pred[:, 3]), torch.maximum(pred[:, 1], pred[:, 3])
    tx0, ty0, tx1, ty1 = targets.unbind(-1)
    inter = (torch.minimum(x1, tx1) - torch.maximum(x0, tx0)).relu() * (
        torch.minimum(y1, ty1) - torch.maximum(y0, ty0)
    ).relu()
    union = (x1 - x0) * (y1 - y0) - inter + (tx1 - tx0) * (ty1 - ty0)
    hull = (torch.maximum(x1, tx1) - torch.minimum(x0, tx0)) * (torch.maximum(y1, ty1) - torch.minimum(y0, ty0))
    return inter / union.clamp(min=1e-7) - (hull - union) / hull.clamp(min=1e-7)


def corner_loss_with_referring_boxes(corners, batch, side, weights):
    """`heads::referring_box::corner_loss_with_referring_boxes`: the parts `[(name, value, weight)]`."""
    referring = batch["tasks"] == REFERRING_TASK  # [B]
    w = batch["location_weights"]
    picked = (w[..., 0] > 0) & referring[:, None]  # [B, T]
    other = w * (~referring).to(w)[:, None, None]
    parts = []
    if bool((other != 0).any()):
        parts.append(("pixel_l1", masked_l1(corners * side, batch["location_targets"] * side, other), 1.0))
    if not bool(picked.any()):
        return parts
    pred = corners[picked]  # [n, 4], row-major like the Rust one-hot rows
    targets = batch["location_targets"][picked]
    n = pred.shape[0]
    parts.append(("referring_l1", (pred - targets).abs().sum() * (1.0 / n), weights["l1"]))
    parts.append(("referring_giou", generalized_iou(pred, targets).sum() * (-1.0 / n) + 1.0, weights["giou"]))
    return parts


class CornerHead(nn.Module):
    """`heads::point::CornerHead`: point (`kind = "point"`) or box (`kind = "box"`)."""

    def __init__(self, d: TinyDims, kind: str, depth: int = 3, pre_norm: bool = True, referring_box=None):
        super().__init__()
        self.referring_box = referring_box
        if pre_norm:
            self.norm = nn.LayerNorm(d.d_model, eps=1e-6)
        else:
            self.norm = None
        self.mlp = Mlp([d.d_model] + [d.point_hidden] * (depth - 1) + [4], gelu)
        self.kind = kind
        self.side = d.image_size
        # heads::boxes::centre_size_to_corners: rows cx, cy, w, h; columns x0, y0, x1, y1.
        self.register_buffer(
            "centre_size_to_corners",
            torch.tensor(
                [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [-0.5, 0.0, 0.5, 0.0], [0.0, -0.5, 0.0, 0.5]]
            ),
            persistent=False,
        )

    def forward(self, features):
        x = self.norm(features) if self.norm is not None else features
        out = self.mlp(x)
        if self.kind == "box":
            return out.sigmoid() @ self.centre_size_to_corners
        return (out + 1.0) * 0.5

    def loss(self, ctx):
        if self.referring_box:
            return corner_loss_with_referring_boxes(self(ctx["decoder"]), ctx["batch"], self.side, self.referring_box)
        return pixel_l1(self(ctx["decoder"]), ctx["batch"], self.side)


class ConvTranspose2x(nn.Module):
    """`pixel_vision::conv::ConvTranspose2d` with kernel = stride (PyTorch's weight layout)."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cin, cout, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.k = k

    def forward(self, tokens, h, w):
        b, _, c = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        y = F.conv_transpose2d(x, self.weight, self.bias, stride=self.k)
        return y.flatten(2).transpose(1, 2), h * self.k, w * self.k


class SamMaskDecoder(nn.Module):
    def __init__(self, d: TinyDims, depth: int):
        super().__init__()
        c = d.prompt
        masks = 3 + 1
        self.iou_token = Table(1, c)
        self.mask_tokens = Table(masks, c)
        self.transformer = TwoWayTransformer(
            c, depth, d.two_way_heads, d.two_way_mlp, d.two_way_downsample, 1e-6
        )
        self.upscale_conv1 = ConvTranspose2x(c, c // 4, 2)
        self.upscale_layer_norm = nn.LayerNorm(c // 4, eps=1e-6)
        self.upscale_conv2 = ConvTranspose2x(c // 4, c // 8, 2)
        self.output_hypernetworks_mlps = nn.ModuleList(
            FeedForward(c, c, c // 8, 3) for _ in range(masks)
        )
        self.iou_prediction_head = FeedForward(c, c, masks, 3)

    def forward(self, image, h, w, image_pe, sparse, dense):
        b = image.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = image + dense
        hs, src = self.transformer(src, image_pe, tokens)
        up, uh, uw = self.upscale_conv1(src, h, w)
        up = gelu(self.upscale_layer_norm(up))
        up, uh, uw = self.upscale_conv2(up, uh, uw)
        up = gelu(up)
        nm = self.mask_tokens.weight.shape[0]
        hyper = torch.cat(
            [mlp(hs[:, 1 + i : 2 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        masks = (hyper @ up.transpose(1, 2)).reshape(b, nm, uh, uw)
        iou = self.iou_prediction_head(hs[:, 0:1]).reshape(b, nm)
        return masks[:, 0:1], iou[:, 0:1]


class MaskHead(nn.Module):
    def __init__(self, d: TinyDims, prompt: str, depth: int = 2):
        super().__init__()
        self.projection = nn.Linear(d.visual, d.prompt)
        self.mask_decoder = SamMaskDecoder(d, depth)
        self.side = d.image_size

    def loss(self, ctx):
        batch = ctx["batch"]
        has = batch["has_target_mask"] > 0
        with_mask = int(has.sum())
        if with_mask == 0:
            return None
        pe = ctx["prompt_encoder"]
        whole = torch.tensor([0.0, 0.0, 1.0, 1.0]).to(batch["target_boxes"])
        boxes = torch.where(
            (batch["has_target_box"] > 0)[:, None], batch["target_boxes"], whole[None]
        )
        tokens = self.projection(ctx["image"])
        h, w = ctx["grid"]
        sparse = pe.embed_boxes(boxes * pe.input_image_size)
        dense = pe.dense_without_mask(boxes.shape[0])
        logits, iou = self.mask_decoder(tokens, h, w, pe.dense_pe(), sparse, dense)
        b, _, mh, mw = logits.shape
        # area_average of the {0, 1} target masks to the logits' resolution.
        m = batch["target_masks"]
        targets = F.avg_pool2d(m[:, None], (m.shape[1] // mh, m.shape[2] // mw))
        scale = 1.0 / (with_mask * mh * mw)
        weights = torch.where(has, scale, 0.0).to(logits)[:, None, None, None].expand_as(logits)
        targets = torch.where(has[:, None, None, None], targets, 0.0)
        # IoU targets from the logits, without gradient (actual_ious).
        with torch.no_grad():
            p = logits > 0
            t = targets > 0.5
            inter = (p & t).flatten(1).sum(1).to(logits)
            union = (p | t).flatten(1).sum(1).to(logits)
            iou_t = torch.where(union > 0, inter / union.clamp(min=1), 0.0)
            iou_t = torch.where(has, iou_t, 0.0)[:, None]
            iou_w = torch.where(has, 1.0 / with_mask, 0.0).to(logits)[:, None]
        bce = logits.relu() + (-logits.abs()).exp().add(1.0).log() - logits * targets
        return (bce * weights).sum() + ((iou - iou_t).square() * iou_w).sum()


def cell_targets(objects: np.ndarray, h: int, w: int):
    """`heads::detection::cell_targets` on `[K, 4]` float32 boxes (float32 arithmetic)."""
    targets = np.zeros((h * w, 5), dtype=np.float32)
    positive = np.zeros(h * w, dtype=bool)
    f = np.float32
    for x0, y0, x1, y1 in objects.astype(np.float32):
        cx = (x0 + x1) / f(2.0)
        cy = (y0 + y1) / f(2.0)
        col = min(int(cx * f(w)), w - 1)
        row = min(int(cy * f(h)), h - 1)
        cell = row * w + col
        positive[cell] = True
        targets[cell] = [
            1.0,
            np.clip(cx * f(w) - f(col), 0.0, 1.0),
            np.clip(cy * f(h) - f(row), 0.0, 1.0),
            np.clip(x1 - x0, 0.0, 1.0),
            np.clip(y1 - y0, 0.0, 1.0),
        ]
    return targets, positive


class DetectionHead(nn.Module):
    def __init__(self, d: TinyDims, depth: int = 2, threshold=0.5, max_proposals=10):
        super().__init__()
        self.norm = nn.LayerNorm(d.visual, eps=1e-6)
        self.mlp = Mlp([d.visual] + [d.point_hidden] * (depth - 1) + [5], gelu)

    def loss(self, ctx):
        batch = ctx["batch"]
        h, w = ctx["grid"]
        boxes = batch["object_boxes"].detach().cpu().float().numpy()
        counts = batch["object_counts"].cpu().tolist()
        b = boxes.shape[0]
        cells = b * h * w
        targets, positive = [], []
        for i in range(b):
            t, p = cell_targets(boxes[i, : counts[i]], h, w)
            targets.append(t)
            positive.append(p)
        targets = np.concatenate(targets)
        positive = np.concatenate(positive)
        positives = max(int(positive.sum()), 1)
        obj_w = np.zeros((cells, 5))
        obj_w[:, 0] = 1.0 / np.float32(cells)
        box_w = np.zeros((cells, 5))
        box_w[positive, 1:] = 1.0 / np.float32(4 * positives)
        image = ctx["image"]
        out = self.mlp(self.norm(image))
        shape = out.shape
        to = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).to(out).reshape(shape)
        targets, obj_w, box_w = to(targets), to(obj_w), to(box_w)
        boxes_l1 = (out.sigmoid() - targets).abs()
        bce = out.relu() + (-out.abs()).exp().add(1.0).log() - out * targets
        return (bce * obj_w).sum() + (boxes_l1 * box_w).sum()


class TextHead(nn.Module):
    """`bins` / `string`: coordinates written as text; no parameters, no loss of its own."""

    def loss(self, ctx):
        return None


def build_head(d: TinyDims, h: HeadSpec) -> nn.Module:
    o = h.options
    if h.kind in ("point", "box"):
        return CornerHead(d, h.kind, int(o.get("depth", 3)), bool(o.get("pre_norm", True)), o.get("referring_box"))
    if h.kind in ("bins", "string"):
        return TextHead()
    if h.kind == "mask":
        return MaskHead(d, o["prompt"], int(o.get("depth", 2)))
    if h.kind == "detection":
        return DetectionHead(d, int(o.get("depth", 2)))
    raise ValueError(f"unknown head kind {h.kind!r}")


# --------------------------------------------------------------------------------------------
# PixelLLM
# --------------------------------------------------------------------------------------------


def label_smoothed_cross_entropy(logits, targets, weights, smoothing):
    """`pixel_core::loss::label_smoothed_cross_entropy`."""
    v = logits.shape[-1]
    log_probs = logits.log_softmax(dim=-1)
    mean_log_prob = log_probs.mean(dim=-1)
    safe = targets.clamp(max=v - 1)
    target_log_prob = log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    # Constants in float32, as the Rust code computes them.
    s = np.float32(smoothing)
    vf = np.float32(v)
    on_target = float(np.float32(np.float32(1.0) - s) - s / (vf - np.float32(1.0)))
    on_mean = float(s * vf / (vf - np.float32(1.0)))
    per_token = target_log_prob * -on_target - mean_log_prob * on_mean
    return (per_token * weights).sum() / f32_sum(weights)


class PixelLlm(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        d = PRESETS[spec.preset]()
        self.d = d
        self.spec = spec
        lora = (spec.lora_rank, spec.lora_scale) if spec.lm_mode == "lora" else (None, 1.0)
        self.image_encoder = DualImageEncoder(d, spec.freeze_sam)
        self.prompt_encoder = PromptEncoder(d)
        self.prompt_feature_extractor = PromptFeatureExtractor(d, spec)
        self.language_model = T5(d, lora)
        if spec.visual_position_std > 0:
            tokens = d.grid * d.grid if spec.prompt_fuse == "dense" else spec.output_tokens
            self.visual_position_embedding = nn.Parameter(
                torch.randn(tokens, d.d_model) * spec.visual_position_std
            )
        else:
            self.visual_position_embedding = None
        self.heads = nn.ModuleDict({h.name: build_head(d, h) for h in spec.heads})

    def add_visual_positions(self, visual):
        """`PixelLlm::encode`: the learned table (`model.visual_position_std` > 0)."""
        if self.visual_position_embedding is None:
            return visual
        return visual + self.visual_position_embedding.unsqueeze(0)

    def unordered_prefix(self, visual):
        """How many leading encoder tokens take no relative bias (`model.visual_relative_bias`)."""
        return 0 if self.spec.visual_relative_bias else visual.shape[1]

    def pixel_values(self, pixels, normalization):
        mean, std = normalization
        mean = torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
        # In float32, as `PixelLlm::pixel_values`.
        return ((pixels.float() * 255.0 - mean.to(pixels.device)) / std.to(pixels.device)).to(
            self.prompt_encoder.no_mask_embed.weight.dtype
        )

    def forward(self, batch: dict):
        """Returns a dict of intermediates; `logits`, `decoder`, `image`, `encoder_states`."""
        b = batch["pixels"].shape[0]
        sam_pixels = self.pixel_values(batch["pixels"], SAM_NORMALIZATION)
        eva_pixels = self.pixel_values(batch["pixels"], CLIP_NORMALIZATION)
        image, h, w = self.image_encoder(sam_pixels, eva_pixels)
        pe = self.prompt_encoder
        sparse = pe.embed_boxes(batch["prompt_boxes"].to(image) * pe.input_image_size)
        dense = pe.dense_without_mask(b)
        image_pe = pe.dense_pe()
        visual = self.add_visual_positions(self.prompt_feature_extractor(image, image_pe, dense, sparse))
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
        hidden = lm.encoder(encoder_input, mask=mask, unordered_prefix=self.unordered_prefix(visual))
        dec = lm.decoder(lm.shared(batch["decoder_input_ids"]), enc=hidden, enc_mask=mask)
        logits = lm.lm_head(dec)
        return {
            "image": image,
            "grid": (h, w),
            "visual": visual,
            "encoder_states": hidden,
            "decoder": dec,
            "logits": logits,
        }

    def loss_terms(self, batch: dict):
        """`PixelLlm::loss_terms`: (total, [(name, value, weight)])."""
        out = self.forward(batch)
        text = label_smoothed_cross_entropy(
            out["logits"], batch["target_ids"], batch["target_weights"], self.spec.label_smoothing
        )
        terms = [("text", text, 1.0)]
        total = text
        ctx = dict(out, batch=batch, prompt_encoder=self.prompt_encoder)
        for name, value, weight in self.head_terms(ctx):
            terms.append((name, value, weight))
            total = total + value * weight
        return total, terms, out

    def head_terms(self, ctx: dict):
        """Every head's loss parts as `PixelLlm::loss_terms` logs them: `[(name, value, weight)]`,
        a head's whole loss under its name, its named parts as `<head>/<part>`, each weighted by
        the head's weight times the part's."""
        terms = []
        for h in self.spec.heads:
            # A head's loss: None, one tensor or named parts `[(part, value, weight)]`.
            loss = self.heads[h.name].loss(ctx)
            parts = loss if isinstance(loss, list) else [] if loss is None else [("", loss, 1.0)]
            for part, value, weight in parts:
                terms.append((f"{h.name}/{part}" if part else h.name, value, h.weight * weight))
        return terms
