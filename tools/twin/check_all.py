#!/usr/bin/env python3
"""Runs the gradient parity check over a set of configs and prints a table.

    cargo build --release -p pixel-cli
    python3 tools/twin/check_all.py [--work /tmp/twin-check] [--dtype float64] [--threads 1]

For every config: `pixel grads --batch-size 6` into WORK/<name>, tools/twin/grads.py into
WORK/<name>/twin.safetensors (and, with --dtype float64, once more in float32 into
twin-f32.safetensors: PyTorch's own float32 error, which bounds the noise compare.py allows on
cancelling sums), tools/twin/compare.py against WORK/<name>/grads.safetensors.
The configs are the built-in demo, configs/twin/lora-box.toml, and variants of
configs/demo.toml written into WORK/configs (LM mode frozen / lora, sparse fusion,
freeze_sam = false, and each built-in head). Exit status 1 when any comparison fails.
"""
import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

POINT = '[[model.heads]]\nkind = "point"\nweight = 0.1\n'
VARIANTS = {
    # name: (heads block or None, lm mode or None, [(old, new)] replacements)
    "frozen": (None, "frozen", []),
    "lora": (None, "lora", []),
    "sparse": (None, None, [('prompt_fuse = "dense"', 'prompt_fuse = "sparse"')]),
    "nosam": (None, None, [("freeze_sam = true", "freeze_sam = false")]),
    "box": ('[[model.heads]]\nkind = "box"\nweight = 0.1\n', None, []),
    "point-refbox": (
        '[[model.heads]]\nkind = "point"\nweight = 0.1\nreferring_box = { l1 = 50.0, giou = 20.0 }\n',
        None,
        [],
    ),
    "box-refbox": ('[[model.heads]]\nkind = "box"\nweight = 0.1\nreferring_box = { l1 = 50.0, giou = 20.0 }\n', None, []),
    "visual-layout": (
        None,
        None,
        [("freeze_sam = true", "freeze_sam = true\nvisual_relative_bias = false\nvisual_position_std = 1.0")],
    ),
    "sparse-layout": (
        None,
        None,
        [
            ('prompt_fuse = "dense"', 'prompt_fuse = "sparse"'),
            ("freeze_sam = true", "freeze_sam = true\nvisual_relative_bias = false\nvisual_position_std = 1.0"),
        ],
    ),
    "bins": ('[[model.heads]]\nkind = "bins"\nbins = 16\n', None, []),
    "string": ('[[model.heads]]\nkind = "string"\ndecimals = 1\n', None, []),
    "mask": (POINT + '[[model.heads]]\nkind = "mask"\nprompt = "point"\n', None, []),
    "detection": (POINT + '[[model.heads]]\nkind = "detection"\n', None, []),
    "loccap": (
        None,
        None,
        [
            ("trace_captioning = 0.5", "trace_captioning = 0.3"),
            ("referring_localization = 0.5", "referring_localization = 0.3"),
            ("location_captioning = 0.0", "location_captioning = 0.4"),
        ],
    ),
    "all-heads": (
        POINT
        + '[[model.heads]]\nkind = "box"\nweight = 0.1\n'
        + '[[model.heads]]\nkind = "bins"\nbins = 16\n'
        + '[[model.heads]]\nkind = "mask"\nprompt = "point"\n'
        + '[[model.heads]]\nkind = "detection"\n',
        None,
        [
            ("trace_captioning = 0.5", "trace_captioning = 0.3"),
            ("referring_localization = 0.5", "referring_localization = 0.4"),
            ("location_captioning = 0.0", "location_captioning = 0.3"),
        ],
    ),
}


def write_variants(folder):
    base = open(os.path.join(ROOT, "configs", "demo.toml")).read()
    head_block = re.search(r"\[\[model\.heads\]\].*?pre_norm = true\n", base, re.S).group(0)
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, (heads, mode, edits) in VARIANTS.items():
        text = base
        if heads is not None:
            text = text.replace(head_block, heads)
        if mode is not None:
            text = text.replace('mode = "full"', f'mode = "{mode}"')
        for old, new in edits:
            if old not in text:
                raise SystemExit(f"configs/demo.toml has no `{old}` to edit for {name}")
            text = text.replace(old, new)
        paths[name] = os.path.join(folder, f"{name}.toml")
        with open(paths[name], "w") as f:
            f.write(text)
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/twin-check")
    ap.add_argument("--pixel", default=os.path.join(ROOT, "target", "release", "pixel"))
    ap.add_argument("--batch-size", type=int, default=6)
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for grads.py")
    ap.add_argument("--only", nargs="*", help="config names to run")
    args = ap.parse_args()

    configs = {"demo": None, "lora-box": os.path.join(ROOT, "configs", "twin", "lora-box.toml")}
    configs.update(write_variants(os.path.join(args.work, "configs")))
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only}
    failed = False
    rows = []
    for name, config in configs.items():
        out = os.path.join(args.work, name)
        cmd = [args.pixel, "grads", "--batch-size", str(args.batch_size), "--out", out]
        if config:
            cmd += ["--config", config]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        twin = os.path.join(out, "twin.safetensors")
        twin32 = os.path.join(out, "twin-f32.safetensors")
        runs = [(args.dtype, twin)] + ([("float32", twin32)] if args.dtype == "float64" else [])
        for dtype, path in runs:
            cmd = [sys.executable, os.path.join(HERE, "grads.py"), "--in", out, "--out", path,
                   "--dtype", dtype, "--threads", str(args.threads)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        cmd = [sys.executable, os.path.join(HERE, "compare.py"), twin, os.path.join(out, "grads.safetensors"), "--quiet"]
        if len(runs) == 2:
            cmd += ["--f32", twin32]
        r = subprocess.run(cmd, capture_output=True, text=True)
        failed |= r.returncode != 0
        summary = r.stdout.strip().splitlines()[-1]
        rows.append((name, summary))
        print(f"{name:10s} {summary}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
