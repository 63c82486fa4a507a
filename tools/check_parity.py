#!/usr/bin/env python3
"""Parity of the release `pixel` CLI with HF transformers / timm / segment-anything on
checkpoints made fresh for each seed (other weights, inputs, prompts, config values within the
test presets, f16 files and bf16 shards), none of which the Rust code was tuned on.

    cargo build --release -p pixel-cli
    python tools/check_parity.py --seeds 1 2 3 [--pixel target/release/pixel] [--keep DIR]

For every seed it runs tools/make_t5_fixtures.py and tools/make_vision_fixtures.py with
`--seed N --out TMP`, then on those folders

- `pixel lm forward`  (t5-test, flan-t5-test): encoder_last_hidden_state, decoder_hidden, logits;
- `pixel lm generate` greedy and beam (the fixtures' num_beams): sequences, compared exactly;
- `pixel vision forward`: the HF SamModel folder, the segment-anything checkpoint
  (`--preset sam-vit-test`) and the timm EVA02 file (`--preset eva02-test`);
- `pixel sam predict`: points (multimask), boxes, two prompts per image, points + mask input
  (HF), and points through the segment-anything checkpoint;

and prints one row per output: the max abs difference, max |reference|, their ratio, and the
bound of the parity tests (1e-4 relative for hidden states, logits and image features, 1e-3
absolute for masks and IoU scores). Exits non-zero when any row fails.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class Table:
    def __init__(self):
        self.rows = []

    def close(self, seed, case, name, got, want, rel=None, abs_=None):
        got, want = got.double(), want.double()
        if got.shape != want.shape:
            self.rows.append((seed, case, name, float("nan"), float("nan"), f"shape {tuple(got.shape)} != {tuple(want.shape)}", False))
            return
        diff = (got - want).abs().max().item()
        scale = want.abs().max().item()
        bound = rel * scale if rel is not None else abs_
        label = f"<= {rel:g} x max|ref|" if rel is not None else f"<= {abs_:g}"
        self.rows.append((seed, case, name, diff, scale, label, diff <= bound))

    def equal(self, seed, case, name, got, want):
        same = got.shape == want.shape and bool((got == want).all())
        detail = "identical" if same else f"{got.tolist()} != {want.tolist()}"
        self.rows.append((seed, case, name, 0.0 if same else float("nan"), float("nan"), detail, same))

    def print(self):
        print(f"{'seed':>4}  {'case':<40} {'output':<26} {'max abs diff':>12} {'max|ref|':>9} {'ratio':>9}  bound / check")
        for seed, case, name, diff, scale, label, ok in self.rows:
            ratio = diff / scale if scale == scale and scale > 0 else float("nan")
            scale_s = f"{scale:9.3g}" if scale == scale else f"{'-':>9}"
            ratio_s = f"{ratio:9.2e}" if ratio == ratio else f"{'-':>9}"
            print(f"{seed:>4}  {case:<40} {name:<26} {diff:12.3e} {scale_s} {ratio_s}  {label} {'ok' if ok else 'FAIL'}")
        failed = sum(not r[-1] for r in self.rows)
        print(f"\n{len(self.rows)} comparisons, {failed} failed")
        return failed == 0


def check_t5(pixel, seed, folder, work, table):
    for preset in ["t5-test", "flan-t5-test"]:
        model = os.path.join(folder, preset)
        storage = "bf16 shards" if os.path.exists(os.path.join(model, "model.safetensors.index.json")) else "f16 file"
        case = f"{preset} ({storage})"
        inputs = os.path.join(model, "inputs.safetensors")
        ref = load_file(os.path.join(model, "outputs.safetensors"))
        shape = tuple(load_file(inputs)["input_ids"].shape)
        out = os.path.join(work, f"{preset}-forward.safetensors")
        run([pixel, "lm", "forward", "--model", model, "--inputs", inputs, "--out", out])
        got = load_file(out)
        for name in ["encoder_last_hidden_state", "decoder_hidden", "logits"]:
            table.close(seed, f"{case} ids {shape[0]}x{shape[1]}", name, got[name], ref[name], rel=1e-4)
        max_new = str(int(ref["max_new_tokens"][0]))
        for beams, key in [(1, "greedy_sequences"), (int(ref["num_beams"][0]), "beam_sequences")]:
            out = os.path.join(work, f"{preset}-gen{beams}.safetensors")
            run([pixel, "lm", "generate", "--model", model, "--inputs", inputs, "--max-new-tokens", max_new,
                 "--num-beams", str(beams), "--out", out])
            table.equal(seed, f"{case} generate beams={beams}", "sequences", load_file(out)["sequences"], ref[key])


def check_vision(pixel, seed, folder, work, table):
    io = load_file(os.path.join(folder, "sam_test_io.safetensors"))
    official = load_file(os.path.join(folder, "sam_official_io.safetensors"))
    eva = load_file(os.path.join(folder, "eva02_test_io.safetensors"))
    hf_dir = os.path.join(folder, "sam-vit-test")
    official_ckpt = os.path.join(folder, "sam-vit-test-official.safetensors")

    def write(name, tensors):
        path = os.path.join(work, name)
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
        return path

    def cli(args, inputs, out_name):
        out = os.path.join(work, out_name)
        run([pixel, *args, "--inputs", inputs, "--out", out])
        return load_file(out)

    pixels = write("pixels.safetensors", {"pixel_values": io["pixel_values"]})
    got = cli(["vision", "forward", "--model", hf_dir], pixels, "sam-emb.safetensors")
    table.close(seed, "SAM HF folder: vision forward", "image_embeddings", got["image_embeddings"], io["image_embeddings"], rel=1e-4)
    got = cli(["vision", "forward", "--model", official_ckpt, "--preset", "sam-vit-test"], pixels, "sam-off-emb.safetensors")
    table.close(seed, "SAM official: vision forward", "image_embeddings", got["image_embeddings"], official["image_embeddings"], rel=1e-4)

    eva_in = write("eva.safetensors", {"pixel_values": eva["eva02-test.pixel_values"]})
    got = cli(["vision", "forward", "--model", os.path.join(folder, "eva02-test.safetensors"), "--preset", "eva02-test"],
              eva_in, "eva-out.safetensors")
    table.close(seed, "EVA02 timm file: vision forward", "features", got["features"], eva["eva02-test.features"], rel=1e-4)

    cases = [
        ("points, multimask", {"input_points": io["input_points"], "input_labels": io["input_labels"]}, True, "points"),
        ("box, single mask", {"input_boxes": io["input_boxes"]}, False, "boxes"),
        ("2 prompts x 2 points, multimask", {"input_points": io["input_points2"], "input_labels": io["input_labels2"]}, True, "points2"),
        ("points + mask input", {"input_points": io["input_points"], "input_labels": io["input_labels"],
                                 "input_masks": io["input_masks"]}, False, "masks"),
    ]
    for label, prompts, multimask, key in cases:
        inputs = write(f"sam-{key}.safetensors", {"pixel_values": io["pixel_values"], **prompts})
        args = ["sam", "predict", "--model", hf_dir] + (["--multimask"] if multimask else [])
        got = cli(args, inputs, f"sam-{key}-out.safetensors")
        table.close(seed, f"SAM HF: {label}", "pred_masks", got["pred_masks"], io[f"{key}_pred_masks"], abs_=1e-3)
        table.close(seed, f"SAM HF: {label}", "iou_scores", got["iou_scores"], io[f"{key}_iou_scores"], abs_=1e-3)
    inputs = os.path.join(work, "sam-points.safetensors")
    got = cli(["sam", "predict", "--model", official_ckpt, "--preset", "sam-vit-test", "--multimask"], inputs,
              "sam-off-points-out.safetensors")
    table.close(seed, "SAM official: points, multimask", "pred_masks", got["pred_masks"], official["points_pred_masks"], abs_=1e-3)
    table.close(seed, "SAM official: points, multimask", "iou_scores", got["iou_scores"], official["points_iou_scores"], abs_=1e-3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--pixel", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                        "release", "pixel"))
    parser.add_argument("--keep", help="write the fixtures here instead of a temporary folder")
    parser.add_argument("--reuse", action="store_true", help="with --keep: use fixtures already there")
    parser.add_argument("--skip-vision", action="store_true")
    parser.add_argument("--skip-lm", action="store_true")
    args = parser.parse_args()
    if not os.path.exists(args.pixel):
        sys.exit(f"no pixel binary at {args.pixel}; run `cargo build --release -p pixel-cli` or give --pixel")
    torch.set_grad_enabled(False)
    table = Table()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or tmp
        for seed in args.seeds:
            if seed == 0:
                sys.exit("seed 0 makes the committed fixtures, which the parity tests already cover")
            work = os.path.join(base, f"seed{seed}", "outputs")
            os.makedirs(work, exist_ok=True)
            if not args.skip_lm:
                t5 = os.path.join(base, f"seed{seed}", "t5")
                if not (args.reuse and os.path.isdir(t5)):
                    print(run([sys.executable, os.path.join(ROOT, "tools", "make_t5_fixtures.py"),
                               "--seed", str(seed), "--out", t5]), end="")
                check_t5(args.pixel, seed, t5, work, table)
            if not args.skip_vision:
                vision = os.path.join(base, f"seed{seed}", "vision")
                if not (args.reuse and os.path.isdir(vision)):
                    run([sys.executable, os.path.join(ROOT, "tools", "make_vision_fixtures.py"),
                         "--seed", str(seed), "--out", vision])
                check_vision(args.pixel, seed, vision, work, table)
    ok = table.print()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
