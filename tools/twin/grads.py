#!/usr/bin/env python3
"""Recomputes one training step's loss terms and gradients with the PyTorch twin.

    pixel grads --batch-size 6 --out /tmp/g-demo          # the Rust side (target/release/pixel)
    python3 tools/twin/grads.py --in /tmp/g-demo --out /tmp/g-demo/twin.safetensors
    python3 tools/twin/compare.py /tmp/g-demo/twin.safetensors /tmp/g-demo/grads.safetensors

Reads DIR/config.toml, DIR/init.safetensors and DIR/batch.safetensors; writes the gradient of
every trainable parameter (the Rust trainable rules) in float32 under its name, plus
`loss/<term>` scalars (unweighted) and `loss/total`, with `weight/<term>` metadata, as
`pixel grads` writes DIR/grads.safetensors.
"""
import argparse
import os
import statistics
import sys
import time
import tomllib

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import ModelSpec, PixelLlm, is_trainable, trainable_rules  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}
INTEGER_KEYS = {"context_ids", "decoder_input_ids", "target_ids", "tasks", "object_counts"}


def load_twin(folder: str, dtype: torch.dtype):
    """The twin of DIR's config with DIR's initial weights, and the trainable rules."""
    with open(os.path.join(folder, "config.toml"), "rb") as f:
        config = tomllib.load(f)
    spec = ModelSpec.from_config(config)
    model = PixelLlm(spec)
    state = load_file(os.path.join(folder, "init.safetensors"))
    model.load_state_dict(state, strict=True)
    model.to(dtype)
    rules = trainable_rules(spec)
    for name, p in model.named_parameters():
        p.requires_grad_(is_trainable(rules, name))
    return model, spec, rules, config


def load_batch(path: str, dtype: torch.dtype) -> dict:
    batch = load_file(path)
    out = {}
    for k, v in batch.items():
        if k in INTEGER_KEYS:
            out[k] = v.long()
        elif k == "pixels":
            out[k] = v.float()  # normalized in float32 as the Rust model does
        else:
            out[k] = v.to(dtype)
    return out


def compute(folder: str, dtype: torch.dtype):
    model, spec, rules, _ = load_twin(folder, dtype)
    batch = load_batch(os.path.join(folder, "batch.safetensors"), dtype)
    total, terms, _ = model.loss_terms(batch)
    total.backward()
    tensors, metadata = {}, {}
    for name, p in model.named_parameters():
        if not is_trainable(rules, name):
            continue
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        tensors[name] = g.detach().to(torch.float32).clone()
    for name, value, weight in terms:
        tensors[f"loss/{name}"] = value.detach().to(torch.float32).reshape(()).clone()
        metadata[f"weight/{name}"] = repr(float(weight))
    tensors["loss/total"] = total.detach().to(torch.float32).reshape(()).clone()
    return tensors, metadata, terms, total


def time_steps(folder: str, dtype: torch.dtype, n: int):
    """Prints the median seconds of `n` loss forward + backward passes on DIR's batch."""
    model, _, _, _ = load_twin(folder, dtype)
    batch = load_batch(os.path.join(folder, "batch.safetensors"), dtype)
    seconds = []
    for i in range(n + 1):
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        total, _, _ = model.loss_terms(batch)
        total.backward()
        if i > 0:  # the first pass warms up allocations
            seconds.append(time.perf_counter() - started)
    print(f"twin loss forward + backward ({dtype}, {torch.get_num_threads()} threads): "
          f"median {statistics.median(seconds):.4f} s over {n}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="folder", required=True, help="a `pixel grads --out` folder")
    ap.add_argument("--out", required=True, help="the twin's gradients (.safetensors)")
    ap.add_argument("--dtype", default="float64", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--time", type=int, default=0, metavar="N",
                    help="also time N loss forward + backward passes (after one warm-up) and print "
                         "the median, for `cargo bench --bench train_step`'s same work")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.time:
        time_steps(args.folder, DTYPES[args.dtype], args.time)
    tensors, metadata, terms, total = compute(args.folder, DTYPES[args.dtype])
    save_file(tensors, args.out, metadata=metadata)
    trainable = sum(1 for k in tensors if not k.startswith("loss/"))
    parts = ", ".join(f"{n} {v.item():.6f}" for n, v, _ in terms)
    print(f"wrote {args.out}: {trainable} trainable tensors' gradients ({args.dtype}); "
          f"loss {parts}, total {total.item():.6f}")


if __name__ == "__main__":
    main()
