#!/usr/bin/env python3
"""The binding study's sweep: demo variants trained side by side, one thread each, tabulated.

    cargo build --release -p pixel-cli
    python3 tools/binding_sweep.py --out runs/binding-sweep --steps 1200 --jobs 2 [--only a,b]

Each variant is configs/demo.toml with a few keys changed (VARIANTS below). Every run is
`pixel demo --config OUT/configs/<name>.toml --steps STEPS --out OUT/<name>` with
RAYON_NUM_THREADS=1 (one thread per run beats two threads on one run for the tiny model), at
most --jobs at a time, each stopped after --limit seconds. Prints a markdown table of
metrics.json (Acc@0.5 overall and by object count, trace point L1 against its constant
baseline, wall time) and writes it to OUT/table.md. Only the Python standard library is needed.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

EVA = """
[pretrain_eva]
steps = 300
batch_size = 32
peak_lr = 1e-3
cache = "{cache}"
"""

BOX = '[[model.heads]]\nkind = "box"\nweight = 0.1\ndepth = 3\npre_norm = true\n'

# name: (replacements [(old, new)], text appended)
VARIANTS = {
    "demo": ([], ""),
    "eva": ([], EVA),
    "eva-refer75": (
        [("trace_captioning = 0.5", "trace_captioning = 0.25"),
         ("referring_localization = 0.5", "referring_localization = 0.75")],
        EVA,
    ),
    "eva-sam-trained": ([("freeze_sam = true", "freeze_sam = false")], EVA),
    "sam-trained": ([("freeze_sam = true", "freeze_sam = false")], ""),
    "box": ([("HEADS", BOX)], ""),
    "eva-box": ([("HEADS", BOX)], EVA),
    "eva-sparse32": (
        [('prompt_fuse = "dense"', 'prompt_fuse = "sparse"'), ("output_tokens = 8", "output_tokens = 32")],
        EVA,
    ),
    "eva-lr1e-3": ([("peak_lr = 5e-4", "peak_lr = 1e-3")], EVA),
    "refer-only": (
        [("trace_captioning = 0.5", "trace_captioning = 0.0"),
         ("referring_localization = 0.5", "referring_localization = 1.0")],
        "",
    ),
    "eva-refer-only": (
        [("trace_captioning = 0.5", "trace_captioning = 0.0"),
         ("referring_localization = 0.5", "referring_localization = 1.0")],
        EVA,
    ),
    "eva-pfe-depth1": ([("prompt_feature_extractor_depth = 2", "prompt_feature_extractor_depth = 1")], EVA),
}


def write_config(name, out):
    base = open(os.path.join(ROOT, "configs", "demo.toml")).read()
    replacements, extra = VARIANTS[name]
    text = base
    for old, new in replacements:
        if old == "HEADS":
            start = text.index("[[model.heads]]")
            end = text.index("# The language model")
            text = text[:start] + new + "\n" + text[end:]
            continue
        if old not in text:
            sys.exit(f"variant {name}: `{old}` is not in configs/demo.toml")
        text = text.replace(old, new)
    text += extra.format(cache=os.path.join(out, "cache", name))
    path = os.path.join(out, "configs", f"{name}.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def row(name, out):
    path = os.path.join(out, name, "metrics.json")
    if not os.path.exists(path):
        log = os.path.join(out, name, "metrics.jsonl")
        last = open(log).read().strip().splitlines()[-1] if os.path.exists(log) else "{}"
        step = json.loads(last).get("step", 0)
        return f"| {name} | did not finish (step {step}) | | | | | |"
    m = json.load(open(path))
    r, t = m["referring_localization"], m["trace_captioning"]
    by = r.get("acc50_by_objects", {})
    objects = " / ".join(f"{by[k]:.2f}" for k in sorted(by, key=int))
    eva = m.get("pretrain_eva")
    eva_note = f"{eva['retrieval_top1']:.2f}" if eva else ""
    return (
        f"| {name} | {r['acc50']:.3f} | {objects} | {t['point_l1']:.4f} "
        f"({t['point_l1'] / t['baseline_point_l1']:.2f}x) | {t['token_accuracy']:.3f} | "
        f"{m['train']['train_wall_s']:.0f} | {eva_note} |"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/binding-sweep")
    ap.add_argument("--pixel", default=os.path.join(ROOT, "target", "release", "pixel"))
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=3600, help="seconds before a run is stopped")
    ap.add_argument("--only", help="comma-separated variant names")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "configs"), exist_ok=True)
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    pending = [(n, write_config(n, out)) for n in names]
    running = []
    started = time.time()
    while pending or running:
        while pending and len(running) < args.jobs:
            name, config = pending.pop(0)
            log = open(os.path.join(out, f"{name}.log"), "w")
            cmd = ["timeout", str(args.limit), args.pixel, "demo", "--config", config,
                   "--steps", str(args.steps), "--out", os.path.join(out, name)]
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
        time.sleep(2)
        for name, proc in list(running):
            if proc.poll() is not None:
                running.remove((name, proc))
                print(f"{name}: exit {proc.returncode} at {time.time() - started:.0f} s", flush=True)
    header = (
        f"| run ({args.steps} steps) | Acc@0.5 | 1 / 2 / 3 objects | trace point L1 (vs constant) | "
        "token acc. | train s | EVA retrieval |\n|---|---|---|---|---|---|---|"
    )
    table = "\n".join([header] + [row(n, out) for n in names])
    print(table)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
