#!/usr/bin/env python3
"""Trains the PyTorch twin with the Rust recipe on the Rust run's own batches, then evaluates.

    ./target/release/pixel grads --config configs/demo.toml --train-steps 1600 --out DIR
    python3 tools/twin/train.py --in DIR --out RUN [--steps N] [--init ours|reference] [--seed S]
                                [--dtype float32] [--threads 1] [--eval-every K]

DIR (from `pixel grads --train-steps N`): config.toml, init.safetensors, train/step-NNNNNNN.safetensors
(the batch of each training step, in order), val-referring.safetensors, val-trace.safetensors.

Training follows pixel-train/src/lib.rs and pixel-core/src/optim.rs: one batch per step in
order; the loss of `PixelLlm::loss_terms` (text + sum of weight * head loss); AdamW with bias
correction, `update = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`,
`p -= lr * (update + wd * p)` with wd only for tensors of >= 2 dims, after scaling every gradient
by `clip / norm` when the global norm (float64 sum of squares over the trainable tensors)
exceeds `clip_grad_norm`; the WarmupCosine schedule `lr(step)` in float32; the trainable rules
of `ModelConfig::trainable`. Optimizer arithmetic in float32 whatever --dtype.

RUN/metrics.jsonl: the Rust log's fields (step, loss, losses = one entry per named part with
unweighted, weight and weighted, lr, grad_norm before clipping, elapsed_s = training time without
evaluation) every `log_every` steps and at the last. RUN/summary.json: settings, seconds per
step, the last log line, the evaluation (and RUN/eval.jsonl with --eval-every).

Evaluation as pixel-model/src/eval.rs does for a regression head (point or box), all
teacher-forced (as the Rust eval for those heads):
  * referring: the scored head's box over the valid tokens (location weight > 0): for the
    point head the box around their points (`box_from_token_points`), for the box head the
    mean box clipped to the image; the whole image where no token is valid. Acc@0.5 (IoU
    strictly above 0.5), by the image's object count, and mean IoU.
  * trace captioning: per valid token (location weight > 0) the mean absolute difference of
    the four predicted corner coordinates and the target's, in normalized image units,
    averaged over tokens; token accuracy = argmax == target over tokens with target weight > 0.
A text head (bins, string) is scored in Rust from generated text: not implemented here.

--init reference re-initialises every parameter as the reference libraries do by default
(see `reference_init` and README.md) instead of loading init.safetensors.
"""
import argparse
import json
import math
import os
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model as M  # noqa: E402
import variants as V  # noqa: E402
from grads import DTYPES, load_batch  # noqa: E402

# --------------------------------------------------------------------------------------------
# Schedule and optimizer (pixel-core/src/optim.rs)
# --------------------------------------------------------------------------------------------


def warmup_cosine(step: int, peak_lr: float, warmup: int, total: int, final_ratio: float) -> float:
    """`WarmupCosine::lr`, in float32 as the Rust code computes it."""
    f = np.float32
    peak, ratio = f(peak_lr), f(final_ratio)
    if step < warmup:
        return float(peak * f(step + 1) / f(warmup))
    span = max(total - warmup, 1) if total > warmup else 1
    progress = min(f(step - warmup) / f(span), f(1.0))
    cosine = f(0.5) * (f(1.0) + f(math.cos(f(np.pi) * progress)))
    return float(peak * (ratio + (f(1.0) - ratio) * cosine))


class AdamW:
    """`pixel_core::optim::AdamW` over named parameters, float32 state."""

    def __init__(self, params, beta1, beta2, eps, weight_decay, clip_grad_norm):
        self.params = params  # [(name, Parameter)], the trainable ones
        self.b1, self.b2, self.eps = np.float32(beta1), np.float32(beta2), np.float32(eps)
        self.wd = np.float32(weight_decay)
        self.clip = clip_grad_norm
        self.step = 0
        self.m = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
        self.v = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}

    @torch.no_grad()
    def update(self, lr: float) -> float:
        grads = {}
        sum_squares = 0.0
        for n, p in self.params:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            g = g.to(torch.float32)
            s = float((g.double() ** 2).sum())
            if not math.isfinite(s):
                raise FloatingPointError(f"the gradient of `{n}` is not finite (NaN or inf)")
            sum_squares += s
            grads[n] = g
        grad_norm = np.float32(math.sqrt(sum_squares))
        clip = np.float32(1.0)
        if self.clip and grad_norm > np.float32(self.clip):
            clip = np.float32(self.clip) / grad_norm
        self.step += 1
        bias1 = np.float32(1.0) - self.b1 ** np.float32(self.step)
        bias2 = np.float32(1.0) - self.b2 ** np.float32(self.step)
        lr32 = np.float32(lr)
        for n, p in self.params:
            g = grads[n] * float(clip)
            m, v = self.m[n], self.v[n]
            m.mul_(float(self.b1)).add_(g, alpha=float(np.float32(1.0) - self.b1))
            v.mul_(float(self.b2)).add_(g * g, alpha=float(np.float32(1.0) - self.b2))
            update = (m / float(bias1)) / ((v / float(bias2)).sqrt() + float(self.eps))
            decay = float(self.wd) if p.dim() >= 2 else 0.0
            values = p.data.to(torch.float32)
            values = values - float(lr32) * (update + decay * values)
            p.data.copy_(values.to(p.dtype))
        return float(grad_norm)


# --------------------------------------------------------------------------------------------
# Reference initialisation
# --------------------------------------------------------------------------------------------


def _torch_default(module: nn.Module):
    """PyTorch's default init of a layer (`reset_parameters`)."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.Embedding)):
        module.reset_parameters()
    elif isinstance(module, M.ConvTranspose2x):
        # nn.ConvTranspose2d.reset_parameters: kaiming_uniform(a=sqrt 5), fan_in from dim 1.
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(module.bias, -bound, bound)
    elif isinstance(module, M.Table):
        nn.init.normal_(module.weight)  # an nn.Embedding in segment-anything: N(0, 1)


@torch.no_grad()
def reference_init(model: M.PixelLlm, seed: int):
    """Every parameter as the reference libraries initialise it by default (README.md):

    * PyTorch defaults for every Linear / Conv2d / ConvTranspose2d / LayerNorm / Embedding
      first (segment-anything's modules and the parts we invented: prompt feature extractor
      projections, heads, LoRA A as nn.Linear = kaiming-uniform);
    * segment-anything: image encoder pos_embed and rel_pos zeros; the prompt encoder's Fourier
      matrix N(0, 1) * scale (scale 1); point / not-a-point / no-mask / IoU / mask-token
      embeddings N(0, 1) (nn.Embedding); the output tokens of the prompt feature extractor
      N(0, 1) too;
    * timm Eva (`init_weights`): trunc_normal(std .02) for every Linear weight, zero biases,
      pos_embed and cls_token trunc_normal(.02), then `fix_init_weight` divides
      blocks.i.attn.proj.weight and blocks.i.mlp.fc2.weight by sqrt(2 (i + 1)); patch_embed
      conv and LayerNorms keep PyTorch defaults;
    * HF T5 `_init_weights` (factor 1): shared N(0, 1), lm_head N(0, 1) (untied), q
      N(0, (d_model d_kv)^-1/2), k and v N(0, d_model^-1/2), o N(0, (heads d_kv)^-1/2), wi_0 and
      wi_1 N(0, d_model^-1/2), wo N(0, d_ff^-1/2), relative bias N(0, d_model^-1/2), RMS norms 1;
      LoRA (peft): A kaiming-uniform (a = sqrt 5), B zeros.
    """
    torch.manual_seed(seed)
    for module in model.modules():
        _torch_default(module)

    sam = model.image_encoder.sam
    sam.pos_embed.zero_()
    for layer in sam.layers:
        layer.attn.rel_pos_h.zero_()
        layer.attn.rel_pos_w.zero_()
    nn.init.normal_(model.prompt_encoder.shared_embedding.positional_embedding)  # scale 1

    eva = model.image_encoder.eva
    for m in eva.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    nn.init.trunc_normal_(eva.pos_embed, std=0.02, a=-2.0, b=2.0)
    nn.init.trunc_normal_(eva.cls_token, std=0.02, a=-2.0, b=2.0)
    for i, block in enumerate(eva.blocks):
        block.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
        block.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))

    d = model.d
    lm = model.language_model
    nn.init.normal_(lm.shared.weight, std=1.0)
    nn.init.normal_(lm.lm_head.weight, std=1.0)
    for m in lm.modules():
        if isinstance(m, M.T5Attention):
            nn.init.normal_(m.q.weight, std=(d.d_model * d.d_kv) ** -0.5)
            nn.init.normal_(m.k.weight, std=d.d_model ** -0.5)
            nn.init.normal_(m.v.weight, std=d.d_model ** -0.5)
            nn.init.normal_(m.o.weight, std=(d.lm_heads * d.d_kv) ** -0.5)
            if hasattr(m, "relative_attention_bias"):
                nn.init.normal_(m.relative_attention_bias.weight, std=d.d_model ** -0.5)
            for lin in (m.q, m.v):
                if lin.lora_A is not None:
                    nn.init.kaiming_uniform_(lin.lora_A.weight, a=math.sqrt(5))
                    nn.init.zeros_(lin.lora_B.weight)
        elif isinstance(m, M.GatedGelu):
            nn.init.normal_(m.wi_0.weight, std=d.d_model ** -0.5)
            nn.init.normal_(m.wi_1.weight, std=d.d_model ** -0.5)
            nn.init.normal_(m.wo.weight, std=d.d_ff ** -0.5)
        elif isinstance(m, M.RmsNorm):
            m.weight.fill_(1.0)


# --------------------------------------------------------------------------------------------
# Evaluation (pixel-model/src/eval.rs, heads/point.rs, heads/boxes.rs)
# --------------------------------------------------------------------------------------------


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`BoxXyxy::iou` row-wise on `[N, 4]` float32."""
    w = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0)
    h = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0)
    inter = w * h
    area = lambda x: np.maximum(x[:, 2] - x[:, 0], 0) * np.maximum(x[:, 3] - x[:, 1], 0)
    union = area(a) + area(b) - inter
    out = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
    return np.clip(out, 0, 1).astype(np.float32)


def scored_head(model: M.PixelLlm):
    """The first configured head that locates tokens (`eval::scored`)."""
    for h in model.spec.heads:
        if h.kind in ("point", "box"):
            return h
        if h.kind in ("bins", "string"):
            raise NotImplementedError(f"the scored head is a text head ({h.kind}): Rust generates")
    raise ValueError("no head locates tokens")


@torch.no_grad()
def teacher_forced(model: M.PixelLlm, batch: dict, chunk: int = 32):
    """Argmax ids `[B, T]` and the scored head's corners `[B, T, 4]` (float32 numpy)."""
    head = model.heads[scored_head(model).name]
    argmax, corners = [], []
    n = batch["pixels"].shape[0]
    for s in range(0, n, chunk):
        part = {k: v[s : s + chunk] for k, v in batch.items()}
        out = model.forward(part)
        argmax.append(out["logits"].argmax(-1))
        corners.append(head(out["decoder"]).float())
    return torch.cat(argmax).numpy(), torch.cat(corners).numpy()


def object_box(kind: str, corners: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`CornerHead::object` (the whole image where no token is valid)."""
    if not valid.any():
        return np.array([0, 0, 1, 1], dtype=np.float32)
    c = corners[valid]
    if kind == "point":  # box_from_token_points: the hull of both points of every valid token
        xs = np.concatenate([c[:, 0], c[:, 2]])
        ys = np.concatenate([c[:, 1], c[:, 3]])
        return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)
    m = c.mean(0)  # boxes::mean_box: from_corners(...).clip_unit()
    b = np.array([min(m[0], m[2]), min(m[1], m[3]), max(m[0], m[2]), max(m[1], m[3])])
    return np.clip(b, 0, 1).astype(np.float32)


def evaluate(model: M.PixelLlm, referring: dict, trace: dict) -> dict:
    was_training = model.training
    model.eval()
    kind = scored_head(model).kind
    _, corners = teacher_forced(model, referring)
    valid = referring["location_weights"][..., 0].numpy() > 0
    pred = np.stack([object_box(kind, corners[i], valid[i]) for i in range(len(corners))])
    target = referring["target_boxes"].float().numpy()
    ious = iou(pred, target)
    counts = referring["object_counts"].numpy()
    by_objects = {
        str(int(k)): float((ious[counts == k] > 0.5).mean()) for k in sorted(set(counts.tolist()))
    }
    argmax, corners = teacher_forced(model, trace)
    tw = trace["target_weights"].numpy() > 0
    correct = (argmax == trace["target_ids"].numpy()) & tw
    lw = trace["location_weights"][..., 0].numpy() > 0
    gt = trace["location_targets"].float().numpy()
    per_token = np.abs(corners - gt).sum(-1, dtype=np.float32) / np.float32(4)
    model.train(was_training)
    return {
        "referring_localization": {
            "acc50": float((ious > 0.5).mean()),
            "miou": float(ious.mean()),
            "count": int(len(ious)),
            "acc50_by_objects": by_objects,
        },
        "trace_captioning": {
            "point_l1": float(per_token[lw].astype(np.float64).mean()),
            "token_accuracy": float(correct.sum() / max(tw.sum(), 1)),
            "tokens": int(tw.sum()),
            "points": int(lw.sum()),
        },
    }


# --------------------------------------------------------------------------------------------
# Training loop (pixel-train/src/lib.rs)
# --------------------------------------------------------------------------------------------


def row_shards(rows: int, shards: int) -> list:
    """Contiguous row ranges whose lengths differ by at most one (the trainer's `split_evenly`)."""
    if shards < 1 or rows < shards:
        raise SystemExit(f"a batch of {rows} rows does not split into {shards} shards")
    base, extra = divmod(rows, shards)
    out, start = [], 0
    for i in range(shards):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def sharded_loss(model: M.PixelLlm, batch: dict, shards: int):
    """The mean of the shards' losses and of their terms (the batch's own loss for one shard)."""
    if shards == 1:
        total, terms, _ = model.loss_terms(batch)
        return total, terms
    rows = next(iter(batch.values())).shape[0]
    total, sums = 0.0, {}
    for start, end in row_shards(rows, shards):
        part, terms, _ = model.loss_terms({k: v[start:end] for k, v in batch.items()})
        total = total + part / shards
        for name, value, weight in terms:
            prev = sums.get(name, (0.0, weight))[0]
            sums[name] = (prev + value / shards, weight)
    return total, [(n, v, w) for n, (v, w) in sums.items()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="folder", required=True, help="a `pixel grads --train-steps N` folder")
    ap.add_argument("--out", required=True, help="the run folder")
    ap.add_argument("--steps", type=int, help="training steps (default: the config's [train] steps)")
    ap.add_argument("--init", default="ours", choices=["ours", "reference"])
    ap.add_argument("--seed", type=int, help="seed of --init reference (default: [train] seed)")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate every K steps")
    ap.add_argument("--cycle", action="store_true", help="reuse the batches when --steps exceeds them")
    ap.add_argument("--clip", type=float, help="override [train.optimizer] clip_grad_norm (0 = off)")
    ap.add_argument("--peak-lr", type=float, help="override [train] peak_lr")
    ap.add_argument("--shards", type=int, help="override [train] shards: the loss is the mean of the losses "
                    "of this many contiguous row shards of each batch, as the Rust trainer's data-parallel step")
    V.add_arguments(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]

    with open(os.path.join(args.folder, "config.toml"), "rb") as f:
        config = tomllib.load(f)
    spec = M.ModelSpec.from_config(config)
    t = config["train"]
    o = t.get("optimizer", {})
    steps = args.steps if args.steps is not None else int(t["steps"])
    shards = args.shards if args.shards is not None else int(t.get("shards", 1))
    seed = args.seed if args.seed is not None else int(t.get("seed", 0))
    available = len(os.listdir(os.path.join(args.folder, "train")))
    if steps > available and not args.cycle:
        raise SystemExit(f"{args.folder}/train has {available} batches, --steps is {steps}")

    model = V.PixelLlmVariant(spec, args)
    if args.init == "ours":
        missing, unexpected = model.load_state_dict(
            load_file(os.path.join(args.folder, "init.safetensors")), strict=False
        )
        assert not unexpected and sorted(missing) == sorted(model.new_parameter_names()), (missing, unexpected)
    else:
        reference_init(model, seed)
    model.to(dtype)
    rules = M.trainable_rules(spec)
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(M.is_trainable(rules, name) and not name.startswith(model.unused_prefixes() or ("\0",)))
        if p.requires_grad:
            trainable.append((name, p))
    opt = AdamW(
        trainable,
        o.get("beta1", 0.9),
        o.get("beta2", 0.999),
        o.get("eps", 1e-8),
        o.get("weight_decay", 0.01),
        args.clip if args.clip is not None else o.get("clip_grad_norm", 1.0),
    )
    sched = (args.peak_lr or float(t["peak_lr"]), int(t["warmup_steps"]), steps, float(t["final_lr_ratio"]))
    log_every = max(int(t.get("log_every", 10)), 1)
    referring = load_batch(os.path.join(args.folder, "val-referring.safetensors"), dtype)
    trace = load_batch(os.path.join(args.folder, "val-trace.safetensors"), dtype)

    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "metrics.jsonl"), "w")
    eval_log = open(os.path.join(args.out, "eval.jsonl"), "w") if args.eval_every else None
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for _, p in trainable)
    print(f"variant: {V.variant_name(args)}", flush=True)
    print(f"{args.init} init, {steps} steps, {len(trainable)} trainable tensors "
          f"({n_train} of {n_params} parameters), {args.dtype}, {args.threads} thread(s)", flush=True)
    train_s = 0.0
    last = None
    model.train()
    for step in range(steps):
        batch = load_batch(os.path.join(args.folder, "train", f"step-{step % available:07d}.safetensors"), dtype)
        if args.referring_only:
            rows = batch["has_target_box"] > 0
            batch = {k: v[rows] for k, v in batch.items()}
        started = time.perf_counter()
        for _, p in trainable:
            p.grad = None
        total, terms = sharded_loss(model, batch, shards)
        loss = total.item()
        if not math.isfinite(loss):
            raise SystemExit(f"loss is not finite at step {step}")
        total.backward()
        lr = warmup_cosine(step, *sched)
        grad_norm = opt.update(lr)
        train_s += time.perf_counter() - started
        done = step + 1
        text = next(v.item() for n, v, _ in terms if n == "text")
        location = sum(v.item() for n, v, _ in terms if n != "text")
        losses = [{"name": n, "unweighted": v.item(), "weight": float(w), "weighted": v.item() * float(w)}
                  for n, v, w in terms]
        last = {"step": done, "loss": loss, "losses": losses,
                "lr": lr, "grad_norm": grad_norm, "elapsed_s": train_s}
        if done % log_every == 0 or done == steps:
            log.write(json.dumps(last) + "\n")
            log.flush()
            print(f"step {done}: loss {loss:.4f} (text {text:.4f}, loc {location:.4f}) "
                  f"lr {lr:.3g} |g| {grad_norm:.3f} {train_s / done:.3f} s/step", flush=True)
        if args.eval_every and done % args.eval_every == 0 and done != steps:
            e = evaluate(model, referring, trace)
            eval_log.write(json.dumps({"step": done, **e}) + "\n")
            eval_log.flush()
    started = time.perf_counter()
    final = evaluate(model, referring, trace)
    eval_s = time.perf_counter() - started
    if eval_log:
        eval_log.write(json.dumps({"step": steps, **final}) + "\n")
        eval_log.close()
    log.close()
    summary = {
        "in": os.path.abspath(args.folder),
        "init": args.init,
        "variant": V.variant_name(args),
        "variant_args": {k: getattr(args, k) for k in ("visual", "pos_std", "pe_scale", "visual_pos_std", "no_visual_relbias", "box_loss", "referring_only", "cycle", "lm", "clip", "peak_lr", "shards")},
        "seed": seed if args.init == "reference" else None,
        "dtype": args.dtype,
        "threads": args.threads,
        "steps": steps,
        "s_per_step": train_s / max(steps, 1),
        "train_wall_s": train_s,
        "eval_wall_s": eval_s,
        "parameters": n_params,
        "trainable_parameters": n_train,
        "last": last,
        **final,
    }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    r, tr = final["referring_localization"], final["trace_captioning"]
    print(f"referring Acc@0.5 {r['acc50']:.4f} (by objects {r['acc50_by_objects']}), mIoU {r['miou']:.4f}; "
          f"trace point L1 {tr['point_l1']:.5f}, token accuracy {tr['token_accuracy']:.4f}; "
          f"{summary['s_per_step']:.3f} s/step")


if __name__ == "__main__":
    main()
