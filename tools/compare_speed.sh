#!/usr/bin/env bash
# Runs our criterion benches and the PyTorch references side by side, interleaved round by
# round (ours, then theirs, N times) so that both see the same machine load, and ends with one
# line per comparison:
#
#     <work> ours=<seconds> ref=<seconds> ratio=<ref/ours>      (ratio > 1: we are faster)
#
# Each number is the median over rounds of each round's median (criterion's median; the
# references' median of --repeats runs). The references run with 1 and with 2 torch threads and
# `ref` is the faster of the two for each work: on a loaded machine 2 threads can be several
# times slower than 1. The load average is printed
# before and after every run: on a shared machine it says how much the numbers can be trusted.
#
#     tools/compare_speed.sh [--rounds N] [--vision] [--train]
#
# --vision adds SAM ViT-B @1024 and EVA02-L @448 (benches/benches/vision.rs against
# tools/time_torch_vision.py; about 10 minutes per round on 2 cores).
# --train adds the demo's training step (benches/benches/train_step.rs against the PyTorch twin,
# tools/twin/grads.py --time, on the same `pixel grads` batch of 16; about 2 minutes a round).
# Needs: cargo, python3 with torch and transformers (and segment_anything, timm for --vision).
set -euo pipefail

rounds=2
vision=0
train=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --vision) vision=1; shift ;;
        --train) train=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
modules="torch transformers"
[[ $vision == 1 ]] && modules="$modules segment_anything timm"
[[ $train == 1 ]] && modules="$modules safetensors"
for m in $modules; do
    if ! "$python" -c "import $m" 2>/dev/null; then
        echo "error: $python cannot import '$m'; install the references first:" >&2
        echo "  pip install torch \"transformers>=4.40,<5\" safetensors segment_anything timm" >&2
        exit 1
    fi
done

# Logs and per-round numbers stay here for a look afterwards.
out=target/compare_speed
rm -rf "$out" && mkdir -p "$out"
load() { echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }

# The T5 works: our criterion bench id -> the reference's key in tools/time_hf_t5.py.
t5_filter='encoder forward|KV cache, encoder included|stream|HostT5 bf16'
hf_works=("encoder forward" "greedy 32 tokens, KV cache, encoder included"
          "greedy 32 tokens batch 8, KV cache, encoder included")

cargo bench -p pixel-benches --bench t5_decode --no-run -q
[[ $vision == 1 ]] && cargo bench -p pixel-benches --bench vision --no-run -q
if [[ $train == 1 ]]; then
    cargo bench -p pixel-benches --bench train_step --no-run -q
    cargo build --release -q -p pixel-cli
    # The demo's first batch (16 examples) with its config and initial weights, for the twin.
    target/release/pixel grads --out "$out/grads" >"$out/grads.log" 2>&1 \
        || { tail -20 "$out/grads.log"; exit 1; }
fi

for round in $(seq 1 "$rounds"); do
    echo "== round $round/$rounds: ours ($(load))"
    export CRITERION_HOME="$PWD/$out/criterion-$round"
    cargo bench -q -p pixel-benches --bench t5_decode -- --noplot "$t5_filter" >"$out/ours-t5-$round.log" 2>&1 \
        || { tail -20 "$out/ours-t5-$round.log"; exit 1; }
    if [[ $vision == 1 ]]; then
        cargo bench -q -p pixel-benches --bench vision -- --noplot >"$out/ours-vision-$round.log" 2>&1 \
            || { tail -20 "$out/ours-vision-$round.log"; exit 1; }
    fi
    if [[ $train == 1 ]]; then
        cargo bench -q -p pixel-benches --bench train_step -- --noplot backward >"$out/ours-train-$round.log" 2>&1 \
            || { tail -20 "$out/ours-train-$round.log"; exit 1; }
    fi
    "$python" - "$out/ours-$round.json" "$CRITERION_HOME" "$out/ours-t5-$round.log" <<'EOF'
import glob, json, os, re, sys
found = {}
# The bytes a decoding step reads, as the bench prints them.
for dtype, mb in re.findall(r"HostT5 (\w+): a decoding step reads ([\d.]+) MB", open(sys.argv[3]).read()):
    found[f"step bytes {dtype}"] = float(mb) * 1e6
for path in glob.glob(f"{sys.argv[2]}/**/new/benchmark.json", recursive=True):
    bench = json.load(open(path))
    est = json.load(open(os.path.join(os.path.dirname(path), "estimates.json")))
    found[bench["full_id"]] = est["median"]["point_estimate"] / 1e9
json.dump(found, open(sys.argv[1], "w"), indent=1)
EOF
    echo "== round $round/$rounds: PyTorch ($(load))"
    for threads in 1 2; do
        "$python" tools/time_hf_t5.py --threads $threads --repeats 3 --json "$out/ref-t5-$round-t$threads.json" \
            --only "${hf_works[@]}" >"$out/ref-t5-$round-t$threads.log" 2>&1 \
            || { tail -20 "$out/ref-t5-$round-t$threads.log"; exit 1; }
        if [[ $vision == 1 ]]; then
            "$python" tools/time_torch_vision.py --threads $threads --runs 3 >"$out/ref-vision-$round-t$threads.json"
        fi
        if [[ $train == 1 ]]; then
            log="$out/ref-train-$round-t$threads.log"
            "$python" tools/twin/grads.py --in "$out/grads" --out "$out/grads/twin-$round-t$threads.safetensors" \
                --dtype float32 --threads $threads --time 5 >"$log" 2>&1 || { tail -20 "$log"; exit 1; }
            sed -n 's/^twin loss forward + backward.*median \([0-9.]*\) s.*/{"train_step_s": \1}/p' "$log" \
                >"$out/ref-train-$round-t$threads.json"
        fi
    done
done
echo "== done ($(load)); torch threads: $("$python" -c 'import torch; print(torch.get_num_threads())')"

"$python" - "$out" "$rounds" "$vision" "$train" <<'EOF'
import json, statistics, sys
out, rounds, vision, train = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"

def median_over_rounds(name):
    runs = [json.load(open(f"{out}/{name(r)}.json")) for r in range(1, rounds + 1)]
    return {k: statistics.median(run[k] for run in runs) for k in runs[0] if isinstance(runs[0][k], float)}

def faster_of_threads(prefix):
    """The reference at its better thread count (1 or 2), work by work."""
    by_threads = {t: median_over_rounds(lambda r: f"{prefix}-{r}-t{t}") for t in (1, 2)}
    best = {}
    for k in by_threads[1]:
        t = min((1, 2), key=lambda t: by_threads[t][k])
        best[k] = by_threads[t][k]
        print(f"  ref {k}: 1 thread {by_threads[1][k]:.4f} s, 2 threads {by_threads[2][k]:.4f} s")
    return best

ours = median_over_rounds(lambda r: f"ours-{r}")
ref = faster_of_threads("ref-t5")
if vision:
    ref.update(faster_of_threads("ref-vision"))
if train:
    ref.update(faster_of_threads("ref-train"))
g1, g2 = "t5_decode flan-t5-small b1 s64/", "t5_decode flan-t5-small 16-bit and batched/"
stream = next(v for k, v in ours.items() if k.startswith(g1 + "stream the step's weight bytes"))
f32_step_bytes, bf16_step_bytes = ours["step bytes f32"], ours["step bytes bf16"]
bandwidth = f32_step_bytes / stream
floor = bf16_step_bytes / bandwidth
step = ours[g2 + "HostT5 bf16 one decoding step"]
print(f"memory bandwidth (all threads, streaming) {bandwidth / 1e9:.1f} GB/s; bf16 step reads "
      f"{bf16_step_bytes / 1e6:.1f} MB: floor {floor * 1e3:.2f} ms, measured {step * 1e3:.2f} ms "
      f"({step / floor:.2f}x the floor)")
rows = [
    ("t5 encoder forward (f32, 64 tokens)", g1 + "encoder forward", "encoder forward"),
    ("t5 greedy 32 tokens f32", g1 + "greedy 32 tokens, KV cache, encoder included",
     "greedy 32 tokens, KV cache, encoder included"),
    ("t5 greedy 32 tokens bf16 (ref f32)", g2 + "HostT5 bf16 greedy 32 tokens, encoder included",
     "greedy 32 tokens, KV cache, encoder included"),
    ("t5 batch-8 greedy 32 tokens bf16 (ref f32)",
     g2 + "HostT5 bf16 greedy 32 tokens batch 8, encoder included",
     "greedy 32 tokens batch 8, KV cache, encoder included"),
]
if vision:
    rows += [("sam vit-b 1024 forward", "vision/sam_vit_b_1024", "sam_vit_b_1024_s"),
             ("sam vit-b 1024 forward (dfdx model)", "vision/sam_vit_b_1024_dfdx",
              "sam_vit_b_1024_s"),
             ("eva02-l 448 forward_features", "vision/eva02_large_448", "eva02_large_448_s"),
             ("eva02-l 448 forward_features (dfdx model)", "vision/eva02_large_448_dfdx",
              "eva02_large_448_s")]
if train:
    g3 = "pixel-tiny train step b16/loss forward + backward"
    rows += [("demo train step b16, 2 shards (ref: twin loss fwd+bwd)",
              g3 + ", 2 shards (the demo's step)", "train_step_s"),
             ("demo train step b16, 1 thread (ref: twin loss fwd+bwd)", g3, "train_step_s")]
rows.append(("t5 bf16 decoding step vs bandwidth floor", None, None))
for work, ours_key, ref_key in rows:
    if ours_key is None:
        a, b = step, floor
    else:
        a, b = ours[ours_key], ref[ref_key]
    print(f"{work} ours={a:.4f} ref={b:.4f} ratio={b / a:.2f}")
EOF
