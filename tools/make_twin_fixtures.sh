#!/usr/bin/env bash
# Regenerates pixel-run/tests/fixtures/twin/: for the demo config and configs/twin/lora-box.toml,
# one training step's config and batch from `pixel grads --batch-size 6`, and the PyTorch twin's
# gradients of that step (tools/twin/grads.py, float64, stored as f32). The Rust test
# pixel-run/tests/twin_gradients.rs recomputes the step and compares.
#
#   pip install torch safetensors numpy
#   tools/make_twin_fixtures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pixel-cli
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for pair in "demo:configs/demo.toml" "lora-box:configs/twin/lora-box.toml"; do
  name=${pair%%:*}
  config=${pair#*:}
  ./target/release/pixel grads --config "$config" --batch-size 6 --out "$work/$name"
  python3 tools/twin/grads.py --in "$work/$name" --out "$work/$name/twin.safetensors" --dtype float64
  python3 tools/twin/compare.py "$work/$name/twin.safetensors" "$work/$name/grads.safetensors"
  dest=pixel-run/tests/fixtures/twin/$name
  mkdir -p "$dest"
  cp "$work/$name/config.toml" "$work/$name/batch.safetensors" "$dest/"
  cp "$work/$name/twin.safetensors" "$dest/twin_grads.safetensors"
done
du -sh pixel-run/tests/fixtures/twin
