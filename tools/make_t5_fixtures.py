#!/usr/bin/env python3
"""Writes the T5 parity fixtures of pixel-lm under pixel-lm/tests/fixtures/.

Regenerate (needs `pip install torch "transformers>=4.40,<5" safetensors`):

    python tools/make_t5_fixtures.py                      # the committed fixtures (seed 0)
    python tools/make_t5_fixtures.py --seed 7 --out /tmp/t5-7   # fresh ones (tools/check_parity.py)

With `--seed 0` (the default) the output is the committed fixtures. Any other seed also draws
what the committed fixtures keep fixed, so the parity check meets checkpoints nobody tuned the
code on: batch size and sequence lengths, the padding, `relative_attention_max_distance`,
`layer_norm_epsilon`, and which preset is stored as f16 in one file and which as bf16 shards.

For each test preset (`t5-test`: ReLU, tied, 2+2 layers; `flan-t5-test`: gated-GELU, untied,
3+2 layers; both vocab 32128, d_model 64, 4 heads x 16) it builds a randomly initialised HF
`T5ForConditionalGeneration` with a fixed seed and writes, in `fixtures/<preset>/`:

- `config.json` and the checkpoint: `t5-test` as one f16 `model.safetensors`, `flan-t5-test` as
  bf16 shards with `model.safetensors.index.json`;
- `inputs.safetensors`: i64 `input_ids`, `attention_mask` (a padded batch of 2) and
  `decoder_input_ids`;
- `outputs.safetensors`: f32 `encoder_last_hidden_state`, `decoder_hidden` (after the final
  layer norm), `logits`, and i64 `greedy_sequences`, `beam_sequences` from `generate` with
  `max_new_tokens`, `num_beams` (stored as i64 scalars too).

The reference outputs are computed in f32 from the half-precision-rounded weights, so they are
exactly what the stored checkpoint encodes. To keep the files small in git, rows >= 2048 of the
embedding and LM head are zero (they compress away); EOS's LM-head row is scaled so that some
sequences end early, which exercises the padding rules of greedy and beam search.
`buckets.safetensors` holds HF's `_relative_position_bucket` over -300..300 for a few settings.

    python tools/make_t5_fixtures.py --bf16-run

adds `flan-t5-test/bf16_run.safetensors` from the committed bf16 checkpoint and inputs: HF run in
bf16 (weights and activations, `torch_dtype=torch.bfloat16`): `logits` (as f32, the first 2048
vocabulary columns: the others are zero rows of the head), and
`greedy_sequences`, `beam_sequences` with the settings above. pixel-lm's bf16 path keeps f32
activations, so its ids must equal these and its logits lie within bf16 tolerance of them.
"""
import argparse
import json
import os
import random
import shutil

import torch
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pixel-lm", "tests", "fixtures")
LIVE_ROWS = 2048
MAX_NEW_TOKENS = 8
NUM_BEAMS = 3

PRESETS = {
    "t5-test": dict(
        vocab_size=32128, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2,
        num_decoder_layers=2, feed_forward_proj="relu", tie_word_embeddings=True,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
    ),
    "flan-t5-test": dict(
        vocab_size=32128, d_model=64, d_kv=16, num_heads=4, d_ff=96, num_layers=3,
        num_decoder_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
    ),
}


def build(name, seed, overrides=None):
    params = dict(PRESETS[name], layer_norm_epsilon=1e-6)
    params.update(overrides or {})
    cfg = T5Config(**params, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.shared.weight[LIVE_ROWS:] = 0
        head = model.lm_head.weight
        if not cfg.tie_word_embeddings:
            head[LIVE_ROWS:] = 0
    return model


def make_inputs(seed, shape=None):
    """The committed fixtures' inputs; with `shape = (batch, source, target)` random ones."""
    if shape is not None:
        return random_inputs(seed, *shape)
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, LIVE_ROWS, (2, 11), generator=g)
    input_ids[0, -1] = 1
    input_ids[1, 6] = 1
    input_ids[1, 7:] = 0
    attention_mask = (torch.arange(11)[None, :] < torch.tensor([[11], [7]])).long()
    decoder_input_ids = torch.randint(2, LIVE_ROWS, (2, 5), generator=g)
    decoder_input_ids[:, 0] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)


def random_inputs(seed, batch, source, target):
    """Random ids, every row ending in EOS at a random length; rows after the first padded."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, LIVE_ROWS, (batch, source), generator=g)
    lengths = [source] + torch.randint(1, source + 1, (batch - 1,), generator=g).tolist()
    for r, n in enumerate(lengths):
        input_ids[r, n - 1] = 1
        input_ids[r, n:] = 0
    attention_mask = (torch.arange(source)[None, :] < torch.tensor(lengths)[:, None]).long()
    decoder_input_ids = torch.randint(2, LIVE_ROWS, (batch, target), generator=g)
    decoder_input_ids[:, 0] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)


def generate(model, inputs, beams):
    return model.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
        max_new_tokens=MAX_NEW_TOKENS, num_beams=beams, do_sample=False,
        length_penalty=1.0, early_stopping=False,
    )


def tune_eos(model, inputs):
    """Scales EOS's output row until greedy ends some but not all rows early."""
    head = model.shared.weight if model.config.tie_word_embeddings else model.lm_head.weight
    row = head[1].clone()
    best = None
    for scale in [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20]:
        with torch.no_grad():
            head[1] = row * scale
        greedy = generate(model, inputs, 1)
        beam = generate(model, inputs, NUM_BEAMS)
        ends = [(s == 1).any().item() for s in list(greedy) + list(beam)]
        if any(ends) and not all(ends):
            best = scale
            break
    with torch.no_grad():
        head[1] = row * (best or 1)
    print(f"  EOS row scale {best}")


def bf16_run(root):
    """HF in bf16 on the committed flan-t5-test checkpoint and inputs."""
    from safetensors.torch import load_file

    out_dir = os.path.join(root, "flan-t5-test")
    model = T5ForConditionalGeneration.from_pretrained(out_dir, torch_dtype=torch.bfloat16).eval()
    inputs = load_file(os.path.join(out_dir, "inputs.safetensors"))
    logits = model(**inputs).logits.float()
    greedy = generate(model, inputs, 1)
    beam = generate(model, inputs, NUM_BEAMS)
    print("bf16 greedy", greedy.tolist())
    print("bf16 beam", beam.tolist())
    save_file(
        {
            "logits": logits[..., :LIVE_ROWS].contiguous(),
            "greedy_sequences": greedy.contiguous(),
            "beam_sequences": beam.contiguous(),
        },
        os.path.join(out_dir, "bf16_run.safetensors"),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="0 = the committed fixtures")
    parser.add_argument("--out", default=ROOT, help="output folder (default: pixel-lm/tests/fixtures)")
    parser.add_argument("--bf16-run", action="store_true", help="only add flan-t5-test/bf16_run.safetensors")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.bf16_run:
        bf16_run(args.out)
        return
    os.makedirs(args.out, exist_ok=True)
    storage = [("t5-test", torch.float16), ("flan-t5-test", torch.bfloat16)]
    # Seed 0 keeps the committed fixtures' choices; other seeds draw them.
    pick = random.Random(args.seed)
    if args.seed != 0 and pick.random() < 0.5:
        storage = [("t5-test", torch.bfloat16), ("flan-t5-test", torch.float16)]
    for i, (name, dtype) in enumerate(storage):
        print(name, dtype)
        out_dir = os.path.join(args.out, name)
        shutil.rmtree(out_dir, ignore_errors=True)
        seed = args.seed + i
        overrides, shape = None, None
        if args.seed != 0:
            overrides = dict(
                relative_attention_max_distance=pick.choice([128, 64, 20]),
                layer_norm_epsilon=pick.choice([1e-6, 1e-5]),
            )
            shape = (pick.randint(1, 4), pick.randint(3, 40), pick.randint(1, 12))
            print(f"  {overrides}, batch/source/target {shape}")
        model = build(name, seed, overrides)
        inputs = make_inputs(100 + seed, shape)
        # Round to the storage dtype first, so the reference is what the checkpoint encodes.
        model = model.to(dtype).to(torch.float32)
        tune_eos(model, inputs)
        if dtype == torch.bfloat16:
            model.to(dtype).save_pretrained(out_dir, safe_serialization=True, max_shard_size="3MB")
        else:
            model.to(dtype).save_pretrained(out_dir, safe_serialization=True)
        model = model.to(torch.float32)
        out = model(**inputs, output_hidden_states=True, return_dict=True)
        greedy = generate(model, inputs, 1)
        beam = generate(model, inputs, NUM_BEAMS)
        print("  greedy", greedy.tolist())
        print("  beam", beam.tolist())
        save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(out_dir, "inputs.safetensors"))
        save_file(
            {
                "encoder_last_hidden_state": out.encoder_last_hidden_state.contiguous(),
                "decoder_hidden": out.decoder_hidden_states[-1].contiguous(),
                "logits": out.logits.contiguous(),
                "greedy_sequences": greedy.contiguous(),
                "beam_sequences": beam.contiguous(),
                "max_new_tokens": torch.tensor([MAX_NEW_TOKENS]),
                "num_beams": torch.tensor([NUM_BEAMS]),
            },
            os.path.join(out_dir, "outputs.safetensors"),
        )
        for f in ["generation_config.json"]:
            path = os.path.join(out_dir, f)
            if os.path.exists(path):
                os.remove(path)

    rel = torch.arange(-300, 301)[:, None]
    buckets = {}
    for bidirectional in [True, False]:
        for nb, md in [(32, 128), (8, 20), (16, 64)]:
            key = f"{'bi' if bidirectional else 'causal'}_{nb}_{md}"
            buckets[key] = T5Attention._relative_position_bucket(
                rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md
            )[:, 0].contiguous()
    buckets["relative_position"] = rel[:, 0].contiguous()
    save_file(buckets, os.path.join(args.out, "buckets.safetensors"))


if __name__ == "__main__":
    main()
