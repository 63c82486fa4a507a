#!/usr/bin/env python3
"""Converts an official segment-anything checkpoint (.pth) to safetensors, names unchanged.

    python tools/convert_sam_checkpoint.py sam_vit_h_4b8939.pth sam_vit_h.safetensors
    pixel vision forward --model sam_vit_h.safetensors --preset sam-vit-h --inputs in.safetensors --out out.safetensors

pixel-vision maps segment-anything's names (`image_encoder.blocks.0.norm1.weight`, ...) to HF
`SamModel`'s when it loads the file (pixel_vision::sam::official_to_hf_name), so the tensors
are stored as they are: float32, contiguous. The buffers `pixel_mean` / `pixel_std` (not
parameters; pixel-vision preprocesses with the same constants) are dropped.
"""
import argparse

import torch
from safetensors.torch import save_file


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="segment-anything .pth (a state dict)")
    parser.add_argument("output", help="where to write the .safetensors file")
    args = parser.parse_args()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    tensors = {
        name: t.detach().to(torch.float32).contiguous()
        for name, t in state.items()
        if name not in ("pixel_mean", "pixel_std")
    }
    save_file(tensors, args.output, metadata={"format": "pt", "source": "segment-anything"})
    total = sum(t.numel() for t in tensors.values())
    print(f"wrote {len(tensors)} tensors ({total:,} values) to {args.output}")


if __name__ == "__main__":
    main()
