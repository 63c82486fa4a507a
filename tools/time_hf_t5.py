#!/usr/bin/env python3
"""Times HF transformers (PyTorch, CPU) on the work of benches/benches/t5_decode.rs:
flan-t5-small dims with random weights, batch 1, 64 input tokens; encoder forward, greedy
`generate` of 32 new tokens (encoder included) with and without the KV cache, and one
decoding step (cache of 16 tokens) with and without a point head (4-layer MLP 512 -> 4); greedy
at batch 8 (inputs of 64 down to 15 tokens, right-padded, as the Rust bench); greedy with the
model in bf16.

    python tools/time_hf_t5.py [--threads N] [--json out.json] [--only KEY ...]

`--json` writes {work: seconds (median)} for tools/compare_speed.sh.
"""
import argparse
import json
import time

import copy

import torch
from transformers import T5Config, T5ForConditionalGeneration


def timeit(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="write {work: median seconds} here")
    parser.add_argument("--only", nargs="*", help="time only these works (keys of the output)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    cfg = T5Config(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8,
        num_heads=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(cfg).eval()
    model.lm_head.weight[1] = 0  # as the Rust bench: greedy never stops early
    ids = (100 + (torch.arange(64) * 7919) % 30000)[None, :]
    mask = torch.ones_like(ids)
    gen = dict(max_new_tokens=32, do_sample=False, num_beams=1)
    out = model.generate(input_ids=ids, attention_mask=mask, **gen)
    assert out.shape[1] == 33, out.shape
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    wanted = lambda key: not args.only or key in args.only
    results = {}

    def run(key, fn, repeats=args.repeats):
        if wanted(key):
            results[key] = timeit(fn, repeats)

    run("encoder forward", lambda: model.encoder(input_ids=ids, attention_mask=mask))
    run("greedy 32 tokens, KV cache, encoder included",
        lambda: model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **gen))
    run("greedy 32 tokens, no cache, encoder included",
        lambda: model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **gen),
        max(3, args.repeats // 3))
    lengths = [64 - 7 * r for r in range(8)]
    batch_ids = torch.zeros(8, 64, dtype=torch.long)
    for r, n in enumerate(lengths):
        batch_ids[r, :n] = ids[0, :n]
    batch_mask = (torch.arange(64)[None, :] < torch.tensor(lengths)[:, None]).long()
    run("greedy 32 tokens batch 8, KV cache, encoder included",
        lambda: model.generate(input_ids=batch_ids, attention_mask=batch_mask, use_cache=True, **gen),
        max(3, args.repeats // 2))
    if wanted("bf16 greedy 32 tokens, KV cache, encoder included"):
        half = copy.deepcopy(model).to(torch.bfloat16)
        run("bf16 greedy 32 tokens, KV cache, encoder included",
            lambda: half.generate(input_ids=ids, attention_mask=mask, use_cache=True, **gen))
    enc = model.encoder(input_ids=ids, attention_mask=mask)
    prefix = out[:, :16]
    past = model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=prefix, use_cache=True).past_key_values
    nxt = out[:, 16:17]
    head = torch.nn.Sequential(
        torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 4),
    )

    def step(with_head):
        cache = copy.deepcopy(past)
        o = model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=nxt, past_key_values=cache,
                  use_cache=True, output_hidden_states=with_head)
        if with_head:
            head(o.decoder_hidden_states[-1])

    run("one decoding step (incl. cache copy)", lambda: step(False), args.repeats * 5)
    run("one decoding step + point head (incl. cache copy)", lambda: step(True), args.repeats * 5)
    for k, v in results.items():
        print(f"{k:55s} {v * 1000:9.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
