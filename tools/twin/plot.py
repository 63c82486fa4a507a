#!/usr/bin/env python3
"""Loss curves of several runs side by side, and a table of their final metrics.

    python3 tools/twin/plot.py RUN1 RUN2 ... [--labels A B ...] --out curves.png [--smooth 10]

A run folder holds metrics.jsonl (step, loss, losses: the named parts, lr, grad_norm,
elapsed_s: a Rust `pixel demo`/`pixel train` run or tools/twin/train.py; older logs with
text_loss and location_loss also read) and, when finished,
metrics.json (Rust) or summary.json (the twin) with the evaluation. One PNG: total, text and
location loss against the step on a log y axis, each run's logged values faint and their centred
running mean over --smooth logged points bold. The table (stdout, Markdown): seconds per step, the last
logged loss terms, the mean total loss of the last --smooth logged points, referring Acc@0.5
(overall and by object count), mIoU, trace point L1 and token accuracy.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FIELDS = [("loss", "total loss"), ("text_loss", "text loss"), ("location_loss", "location loss (unweighted)")]


def with_sums(line):
    """`text_loss` and `location_loss` (the heads' unweighted losses summed) of a log line."""
    if "losses" in line:
        parts = line["losses"]
        line["text_loss"] = sum(p["unweighted"] for p in parts if p["name"] == "text")
        line["location_loss"] = sum(p["unweighted"] for p in parts if p["name"] != "text")
    return line


def read_run(folder):
    lines = [with_sums(json.loads(l)) for l in open(os.path.join(folder, "metrics.jsonl")) if l.strip()]
    final = None
    for name in ("summary.json", "metrics.json"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            final = json.load(open(path))
            break
    return lines, final


def running_mean(values, window):
    """Centred mean over `window` logged points (fewer at the ends)."""
    out = np.empty(len(values))
    half = window // 2
    for i in range(len(values)):
        out[i] = np.mean(values[max(0, i - half) : i + half + 1])
    return out


def row(label, lines, final, smooth):
    last = lines[-1]
    steps = last["step"]
    s_per_step = last["elapsed_s"] / steps
    if final and "s_per_step" in final:
        s_per_step = final["s_per_step"]
    elif final and "train" in final:
        s_per_step = final["train"]["train_wall_s"] / final["train"]["steps"]
    tail = np.mean([l["loss"] for l in lines[-smooth:]])
    cells = [label, f"{steps}", f"{s_per_step:.3f}", f"{last['loss']:.4f}", f"{tail:.4f}",
             f"{last['text_loss']:.4f}", f"{last['location_loss']:.3f}"]
    if final and "referring_localization" in final:
        r, t = final["referring_localization"], final["trace_captioning"]
        by = r.get("acc50_by_objects", {})
        cells += [f"{r['acc50']:.3f}"] + [f"{by[k]:.3f}" if k in by else "-" for k in ("1", "2", "3")]
        cells += [f"{r['miou']:.3f}", f"{t['point_l1']:.4f}", f"{t['token_accuracy']:.4f}"]
    else:
        cells += ["(running)"] + ["-"] * 6
    return cells


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--labels", nargs="*")
    ap.add_argument("--out", required=True)
    ap.add_argument("--smooth", type=int, default=10, help="logged points in the running mean")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    labels = args.labels or [os.path.basename(os.path.normpath(r)) for r in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit("one label per run")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    table = []
    for i, (folder, label) in enumerate(zip(args.runs, labels)):
        lines, final = read_run(folder)
        steps = np.array([l["step"] for l in lines])
        for ax, (key, _) in zip(axes, FIELDS):
            values = np.array([l[key] for l in lines])
            c = colours[i % len(colours)]
            ax.plot(steps, values, color=c, alpha=0.2, lw=0.7)
            ax.plot(steps, running_mean(values, args.smooth), color=c, lw=1.5, label=label)
        table.append(row(label, lines, final, args.smooth))
    for ax, (_, title) in zip(axes, FIELDS):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB)\n")

    head = ["run", "steps", "s/step", "loss", f"loss (mean last {args.smooth})", "text", "location",
            "Acc@0.5", "1 obj", "2 obj", "3 obj", "mIoU", "trace L1", "token acc"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in table:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
