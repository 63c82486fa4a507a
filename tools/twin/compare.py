#!/usr/bin/env python3
"""Compares two gradient files of `pixel grads` / tools/twin/grads.py (B is the reference).

    python3 tools/twin/compare.py A.safetensors B.safetensors [--f32 B32.safetensors] [--top 10] [--tol 1e-4] [--loss-tol 1e-5]

Per tensor: relative error max|a - b| / max(max|b|, floor * G), G the largest |b| of any
tensor (--floor, default 1e-5: a gradient that small is float32 rounding noise in the Rust
reference, such as the key-bias gradients attention makes exactly zero); a tensor whose b is
all zeros is judged by max|a - b| / G. Tensors whose gradient is exactly zero in exact
arithmetic (EXACT_ZERO: a key projection's bias under softmax attention adds the same amount
to every score of a query) are judged by max|a - b| / G too: the reference holds float32
rounding noise there. Per loss term `loss/*`: |a - b|. Prints the worst tensors and every loss. Exit status 1 when a
tensor's error exceeds --tol, a loss differs by more than --loss-tol, or the name sets or
shapes differ. Trainable tensors whose reference gradient is all zeros are listed as warnings
(parameters no loss reaches in that config); --strict-zeros makes them failures.

--f32 B32: the same reference computed in float32 (grads.py --dtype float32). A tensor over
--tol whose max|a - b| is at most twice PyTorch's own float32 error on it, max|b32 - b|, is
reported as float32 noise, not a failure: its gradient is a sum that cancels, which no
float32 computation gets closer (the mask head's IoU bias on a config where the three IoU
errors nearly cancel: 5.9e-4 in Rust, 4.8e-4 in PyTorch float32).
"""
import argparse
import sys

import torch
from safetensors import safe_open


# Patterns (pixel_core::params::glob_match syntax) of tensors whose true gradient is zero.
EXACT_ZERO = ["*k_proj.bias"]


def glob_match(pattern, name):
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def load(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k).to(torch.float64) for k in f.keys()}, f.metadata() or {}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b", help="the reference")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--loss-tol", type=float, default=1e-5)
    ap.add_argument("--floor", type=float, default=1e-5)
    ap.add_argument("--strict-zeros", action="store_true")
    ap.add_argument("--f32", help="the reference computed in float32: its error bounds float32 noise")
    ap.add_argument("--quiet", action="store_true", help="only the summary line")
    args = ap.parse_args()
    a, meta_a = load(args.a)
    b, meta_b = load(args.b)
    b32 = load(args.f32)[0] if args.f32 else {}
    failed = False

    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        failed = True
        for k in only_a:
            print(f"NAME only in {args.a}: {k}")
        for k in only_b:
            print(f"NAME only in {args.b}: {k}")

    rows, losses, zeros = [], [], []
    G = max((v.abs().max().item() for k, v in b.items() if not k.startswith("loss/") and v.numel()), default=0.0)
    floor = args.floor * G
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if x.shape != y.shape:
            print(f"SHAPE {k}: {tuple(x.shape)} vs {tuple(y.shape)}")
            failed = True
            continue
        diff = (x - y).abs().max().item() if x.numel() else 0.0
        if k.startswith("loss/"):
            losses.append((k, x.item(), y.item(), diff))
            continue
        scale = y.abs().max().item() if y.numel() else 0.0
        if scale == 0.0:
            zeros.append(k)
        exact_zero = any(glob_match(p, k) for p in EXACT_ZERO)
        denominator = G if exact_zero else max(scale, floor)
        rel = diff / denominator if denominator > 0 else diff
        f32_diff = (b32[k] - y).abs().max().item() if k in b32 and y.numel() else None
        rows.append((rel, k, scale, diff, f32_diff))

    rows.sort(reverse=True)

    def noise(row):
        return row[4] is not None and row[3] <= 2.0 * row[4]

    over = [r for r in rows if r[0] > args.tol]
    bad = [r for r in over if not noise(r)]
    if not args.quiet:
        print(f"{'rel err':>10}  {'max|ref|':>10}  {'max|diff|':>10}  tensor")

        def flag(row):
            if row[0] <= args.tol:
                return ""
            if noise(row):
                return f"  float32 noise (PyTorch float32: max|diff| {row[4]:.3e})"
            return "  FAIL"

        for row in rows[: args.top]:
            print(f"{row[0]:10.3e}  {row[2]:10.3e}  {row[3]:10.3e}  {row[1]}{flag(row)}")
        for row in over[args.top :]:
            print(f"{row[0]:10.3e}  {row[2]:10.3e}  {row[3]:10.3e}  {row[1]}{flag(row)}")
        print()
        for k, x, y, diff in losses:
            flag = "  FAIL" if diff > args.loss_tol else ""
            print(f"{k:24s} {x:14.8f} {y:14.8f}  |diff| {diff:.3e}{flag}")
        for k in sorted(set(meta_a) | set(meta_b)):
            va, vb = meta_a.get(k), meta_b.get(k)
            if va is None or vb is None or abs(float(va) - float(vb)) > 1e-7:
                print(f"METADATA {k}: {va} vs {vb}")
                failed = True
        if zeros:
            print(f"\nWARNING: {len(zeros)} trainable tensors have an all-zero reference gradient:")
            for k in zeros:
                nonzero = a[k].abs().max().item()
                print(f"  {k}" + (f"  (A is not zero: max|a| {nonzero:.3e})" if nonzero else ""))
    if bad:
        failed = True
    loss_bad = [l for l in losses if l[3] > args.loss_tol]
    if loss_bad:
        failed = True
    if args.strict_zeros and zeros:
        failed = True
    worst = rows[0][0] if rows else 0.0
    worst_loss = max((l[3] for l in losses), default=0.0)
    print(
        f"{'FAIL' if failed else 'OK'}: {len(rows)} tensors, worst relative error {worst:.3e}"
        f" ({rows[0][1] if rows else '-'}), {len(bad)} over {args.tol:g}"
        f"{f' ({len(over) - len(bad)} more within float32 noise)' if len(over) > len(bad) else ''}; "
        f"{len(losses)} losses, worst |diff| {worst_loss:.3e}; {len(zeros)} all-zero references"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
