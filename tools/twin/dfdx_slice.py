#!/usr/bin/env python3
"""Evidence for dfdx 0.13's CPU `slice` backward bug (README.md, "Rust defects" 4).

    ./target/release/pixel grads --config WORK/configs/nosam.toml --batch-size 6 --out DIR
    python3 tools/twin/dfdx_slice.py --in DIR --out DIR/twin-slice.safetensors
    python3 tools/twin/compare.py DIR/twin-slice.safetensors DIR/grads.safetensors

(check_all.py writes WORK/configs/nosam.toml and DIR = WORK/nosam.) The twin's gradients with
one change: the 3x3 convolution of SAM's neck back-propagates as `pixel_vision::conv::im2col_same`
does on dfdx 0.13's CPU: nine overlapping `slice`s of the padded map whose backward *assigns*
(`view[i] = grad`, dfdx-0.13.0/src/tensor_ops/slice/cpu_kernel.rs) instead of adding, run in
reverse order of creation, so each input position keeps the gradient of the first-created
shift that covers it. If this reproduces the Rust gradients of every SAM tensor, that
overwrite is the whole discrepancy. Delete this script once the Rust side is fixed.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model as M  # noqa: E402
from grads import DTYPES, load_batch, load_twin  # noqa: E402


class OverwritingIm2col(torch.autograd.Function):
    """`[b, c, h+2p, w+2p]` -> the k*k shifted views `[k*k, b, c, h, w]`; backward overwrites."""

    @staticmethod
    def forward(ctx, padded, k, h, w):
        ctx.k, ctx.h, ctx.w, ctx.shape = k, h, w, padded.shape
        return torch.stack([padded[:, :, y : y + h, x : x + w] for y in range(k) for x in range(k)])

    @staticmethod
    def backward(ctx, grad):
        k, h, w = ctx.k, ctx.h, ctx.w
        out = torch.zeros(ctx.shape, dtype=grad.dtype)
        shifts = [(y, x) for y in range(k) for x in range(k)]
        for i in reversed(range(len(shifts))):  # the tape runs later ops first
            y, x = shifts[i]
            out[:, :, y : y + h, x : x + w] = grad[i]
        return out, None, None, None


def neck_forward(self, x, h, w):
    x, h, w = M.conv_tokens(self.conv1, x, h, w)
    x = self.layer_norm1(x)
    b, n, c = x.shape
    k = self.conv2.weight.shape[-1]
    p = k // 2
    grid = x.transpose(1, 2).reshape(b, c, h, w)
    cols = OverwritingIm2col.apply(F.pad(grid, (p, p, p, p)), k, h, w)
    y = torch.einsum("sbchw,ocs->bohw", cols, self.conv2.weight.reshape(-1, c, k * k))
    return self.layer_norm2(y.flatten(2).transpose(1, 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="folder", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="float64", choices=sorted(DTYPES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    M.SamNeck.forward = neck_forward
    model, spec, rules, _ = load_twin(args.folder, DTYPES[args.dtype])
    batch = load_batch(os.path.join(args.folder, "batch.safetensors"), DTYPES[args.dtype])
    total, terms, _ = model.loss_terms(batch)
    total.backward()
    out = {}
    for name, p in model.named_parameters():
        if M.is_trainable(rules, name):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            out[name] = g.detach().float().clone()
    for name, value, _ in terms:
        out[f"loss/{name}"] = value.detach().float().reshape(()).clone()
    out["loss/total"] = total.detach().float().reshape(()).clone()
    save_file(out, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
