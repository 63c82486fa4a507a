#!/usr/bin/env python3
"""Converts the refer toolkit's refs pickle (refs(unc).p, refs(google).p, refs(umd).p) to JSON.

pixel-data reads the JSON (pixel_data::datasets::refcoco::read_refer) together with the
dataset's instances.json; an experiment config's [dataset] split names them as
`refer = { instances = "...", refs = "...", split = "train" }`. Usage:

    python3 tools/refer_pickle_to_json.py data/refcoco/refs(unc).p data/refcoco/refs_unc.json

The pickles were written by Python 2; they are loaded with encoding="latin1" so byte strings
decode. Each ref keeps ref_id, ann_id, image_id, split, category_id, file_name, sent_ids and
sentences ([{sent, raw, sent_id, tokens}]).
"""

import json
import pickle
import sys


def to_jsonable(x):
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    if isinstance(x, dict):
        return {to_jsonable(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    return x


def main(argv):
    if len(argv) != 3:
        sys.exit(f"usage: {argv[0]} REFS.p OUT.json")
    with open(argv[1], "rb") as f:
        refs = pickle.load(f, encoding="latin1")
    if not isinstance(refs, list):
        sys.exit(f"error: {argv[1]} holds a {type(refs).__name__}, expected a list of refs")
    out = to_jsonable(refs)
    for i, r in enumerate(out):
        missing = [k for k in ("ref_id", "ann_id", "image_id", "split", "sentences") if k not in r]
        if missing:
            sys.exit(f"error: {argv[1]} ref {i} lacks {missing}")
    with open(argv[2], "w") as f:
        json.dump(out, f)
    print(f"wrote {len(out)} refs to {argv[2]}")


if __name__ == "__main__":
    main(sys.argv)
