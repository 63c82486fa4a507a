#!/usr/bin/env python3
"""Times the PyTorch references of `cargo bench -p pixel-benches --bench vision` on the same
inputs: segment-anything's ViT-B image encoder at 1024 px and timm's eva02_large_patch14_448
forward_features at 448 px, batch 1, CPU, float32, random weights.

    python tools/time_torch_vision.py [--threads N] [--runs N]

Prints the median seconds per forward pass as JSON.
"""
import argparse
import json
import statistics
import time

import torch


def median_time(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = {"threads": args.threads}
    with torch.inference_mode():
        from segment_anything import sam_model_registry
        sam = sam_model_registry["vit_b"](checkpoint=None).image_encoder.eval()
        x = torch.randn(1, 3, 1024, 1024)
        out["sam_vit_b_1024_s"] = median_time(lambda: sam(x), args.runs)
        del sam
        import timm
        eva = timm.create_model("eva02_large_patch14_448", pretrained=False, num_classes=0).eval()
        x = torch.randn(1, 3, 448, 448)
        out["eva02_large_448_s"] = median_time(lambda: eva.forward_features(x), args.runs)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
