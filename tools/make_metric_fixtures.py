#!/usr/bin/env python3.11
"""Writes the caption- and mask-metric parity fixtures of pixel-metrics (and pixel-data's LN reference).

Regenerate (needs java 17 on PATH, pycocoevalcap 1.2 and pycocotools):

    pip install pycocoevalcap pycocotools
    python3.11 tools/make_metric_fixtures.py

Outputs, in pixel-metrics/tests/fixtures/metrics/:

- captions.json: seeded random captions over a small vocabulary plus hand-written ones, raw and
  PTB-tokenized by pycocoevalcap's PTBTokenizer (the CoreNLP jar), and pycocoevalcap's BLEU 1-4,
  ROUGE-L, CIDEr-D and METEOR (meteor-1.5.jar) on the tokenized text, with per-segment
  METEOR scores.
- captions_vocab.json: the same metrics on captions nobody picked: seeded random sentences
  over the whole-word pieces of the T5 vocabulary (assets/t5-tokenizer.json, ~20k words, drawn
  with a skew towards frequent ones), each reference a noisy copy of a hidden "scene" and each
  prediction a noisier one (some share nothing), with random capitals and punctuation.
- meteor_pairs.json: single (candidate, references) pairs with the jar's METEOR, for measuring
  the gap of the native METEOR per segment.
- masks.json: random masks and polygons with pycocotools' compressed RLE strings, areas and IoUs.
- tokenizer.json: tricky raw captions and their pycocoevalcap PTB tokenization.

and, in pixel-data/tests/fixtures/datasets/ (needs scipy):

- ln_scenic_reference.json: random Localized Narratives records with the per-utterance boxes,
  centers and sampled points of scenic's `trace2coord` (build_ln_tfrecord.py logic: scipy
  interp1d with extrapolation, 16 linspace samples, min/max, trapezoid average), unclipped.

The Rust tests in pixel-metrics/tests/metrics_parity.rs read these files.
"""

import json
import os
import random

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pycocotools import mask as mask_utils

OUT = os.path.join(os.path.dirname(__file__), "..", "pixel-metrics", "tests", "fixtures", "metrics")

SUBJECTS = ["a man", "a woman", "the dog", "two dogs", "a cat", "some people", "a child",
            "the player", "a bus", "a red car", "an old truck", "three birds", "a girl's kite"]
VERBS = ["is riding", "rides", "is sitting on", "sits on", "walking along", "walks down",
         "is holding", "holds", "running across", "runs through", "standing next to",
         "plays with", "looking at", "eating", "flies over"]
OBJECTS = ["a horse", "the horses", "a bench", "the street", "a frisbee", "a ball", "the grass",
           "a field", "a red sofa", "the couch", "a surfboard", "the beach", "a pizza",
           "the table", "a skateboard", "the park"]
EXTRAS = ["", "", "", " in the park", " on a sunny day", " near the water", ", smiling",
          " at night", " (in the snow)", " while it's raining", "."]

HAND_WRITTEN = [
    ("A man (wearing a hat) rides a horse.",
     ["A man in a hat is riding a brown horse.", "Someone riding a horse.",
      "A cowboy on horseback.", "The man rides his horse down a dirt road."]),
    ("Don't let the dog's toy fall!",
     ["The dog's toy is falling.", "A dog plays with its toy.", "don't drop it"]),
    ("Two cats sleeping on a couch",
     ["Two cats sleep on a sofa.", "A pair of kittens napping on the couch.",
      "cats lying on a red sofa"]),
    ("a black-and-white photo of a 1,000-year-old church",
     ["An old church in black and white.", "A black-and-white image of an ancient church."]),
    ("People are standing near a bus at the bus stop; it's raining.",
     ["Several people wait for the bus in the rain.", "A crowd at a bus stop.",
      "people waiting near a bus"]),
    ("A pizza with cheese and pepperoni on a wooden table",
     ["A pepperoni pizza sitting on a table.", "Pizza on a wooden table.",
      "A cheesy pizza is on the table."]),
    ("The kids are playing soccer in the field",
     ["Children play football on a field.", "kids playing soccer", "A soccer game with kids."]),
    ("An automobile parked on the street",
     ["A car parked on a street.", "A car is parked by the road."]),
    ("a surfer riding a big wave",
     ["A man surfing a large wave.", "A surfer rides the waves.", "surfing on a wave"]),
    ("Mr. Smith and Dr. Jones at the U.S. embassy, 3.5 p.m.",
     ["Two men at the embassy.", "Mr. Smith meets Dr. Jones."]),
]


def random_caption(rng):
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(EXTRAS)}"
    if rng.random() < 0.5:
        s = s[0].upper() + s[1:]
    return s


def captions_fixture(rng, n_random=150):
    refs, preds = {}, {}
    for i, (p, rs) in enumerate(HAND_WRITTEN):
        refs[f"h{i}"] = rs
        preds[f"h{i}"] = p
    for i in range(n_random):
        refs[f"r{i}"] = [random_caption(rng) for _ in range(rng.randint(1, 5))]
        preds[f"r{i}"] = random_caption(rng)
    return score_fixture(refs, preds)


def score_fixture(refs, preds):
    """pycocoevalcap's tokenization and scores of raw refs {id: [caption]} and preds {id: caption}."""
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in preds.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    meteor, meteor_per = Meteor().compute_score(gts, res)
    return {
        "refs": refs,
        "preds": preds,
        "ids": list(gts.keys()),
        "tokenized_refs": gts,
        "tokenized_preds": {k: v[0] for k, v in res.items()},
        "bleu": [float(b) for b in bleu],
        "rouge_l": float(rouge),
        "cider": float(cider),
        "meteor": float(meteor),
        "meteor_per_segment": [float(m) for m in meteor_per],
    }


def vocabulary_words():
    """Whole-word ASCII pieces of the T5 vocabulary, in its order (roughly by frequency)."""
    path = os.path.join(os.path.dirname(__file__), "..", "assets", "t5-tokenizer.json")
    with open(path) as f:
        vocab = json.load(f)["model"]["vocab"]
    return [p[1:] for p, _ in vocab
            if p.startswith("\u2581") and len(p) > 2 and p[1:].isascii() and p[1:].isalpha()]


def vocab_captions_fixture(rng, n=80):
    words = vocabulary_words()

    def word():
        # P(rank < k) = (k / len) ** (1/3): frequent words dominate, rare ones still appear.
        return words[int(len(words) * rng.random() ** 3)]

    def noisy(scene, keep):
        out = []
        for w in scene:
            r = rng.random()
            if r < keep:
                out.append(w)
            elif r < keep + (1 - keep) / 2:
                out.append(word())
            if rng.random() < 0.1:
                out.append(word())
        out = out or [word()]
        if rng.random() < 0.3:
            out[rng.randrange(len(out))] += rng.choice([",", ";", " -", "'s"])
        s = " ".join(out)
        if rng.random() < 0.5:
            s = s[0].upper() + s[1:]
        return s + rng.choice(["", "", ".", "!", "?"])

    refs, preds = {}, {}
    for i in range(n):
        scene = [word() for _ in range(rng.randint(3, 12))]
        refs[f"v{i}"] = [noisy(scene, 0.75) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.1:
            preds[f"v{i}"] = noisy([word() for _ in range(rng.randint(1, 8))], 1.0)
        else:
            preds[f"v{i}"] = noisy(scene[:rng.randint(1, len(scene))], 0.5)
    return score_fixture(refs, preds)


def masks_fixture(rng):
    out = []
    for i in range(12):
        h, w = rng.randint(5, 40), rng.randint(5, 40)
        m = np.zeros((h, w), dtype=np.uint8, order="F")
        for _ in range(rng.randint(0, 4)):
            y0, x0 = rng.randrange(h), rng.randrange(w)
            m[y0:y0 + rng.randint(1, h), x0:x0 + rng.randint(1, w)] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        n = rng.randint(3, 7)
        poly = [round(rng.uniform(-2, w + 2), 2) if j % 2 == 0 else round(rng.uniform(-2, h + 2), 2)
                for j in range(2 * n)]
        prle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
        out.append({
            "h": h, "w": w,
            "mask_col_major": m.flatten(order="F").tolist(),
            "compressed": rle["counts"].decode(),
            "area": int(mask_utils.area(rle)),
            "polygon": poly,
            "polygon_compressed": prle["counts"].decode(),
            "polygon_area": int(mask_utils.area(prle)),
            "iou_mask_polygon": float(mask_utils.iou([rle], [prle], [0])[0][0]),
        })
    return out


TRICKY = [
    "A man in a t-shirt is holding a 1/2 gallon of milk.",
    "Two dogs (one black, one white) play in the yard!",
    "It's 10:30 and the clock's hands point up.",
    "A woman's purse sits on the table's edge...",
    "The kids aren't wearing hats; they're cold.",
    "A 'STOP' sign at the corner of 5th Ave.",
    "People watch a game -- the score is 3-2.",
    "A cat sleeping on a laptop keyboard",
    "A plate w/ eggs, bacon & toast.",
    "Is this a zebra or a horse?",
    "A Boeing 747 at the gate, ready for take-off.",
    "Several surfers ride waves at sunset; it's beautiful",
    "a man who's wearing a hat that says \"NY\"",
    "An elephant's trunk reaches for food.",
    "Cars parked along the street in front of shops.",
    "The bus is #42 and it's red.",
    "a Giraffe   standing  tall   in the zoo",
    "Child's toys scattered everywhere, isn't it messy?",
    "A close-up of a donut with sprinkles.",
    "Food on a tray: a sandwich, chips, and a pickle.",
    "The man's and the woman's bikes.",
    "I'd say it's a good-looking pizza.",
    "A sign reads 'No Parking' in the U.K.",
    "Three men, e.g. soldiers, stand guard.",
    "There are 2,500 people at the stadium.",
    "The temperature is 25% higher today.",
    "A baseball player swings his bat at the ball",
    "We'll see the ocean; you'll love it.",
    "Hot-dog with mustard and ketchup",
    "Look at the dog!!! So cute.",
]


def stress_captions(rng, n=400):
    """Adversarial caption-like strings: clitics, abbreviations, numbers, glued punctuation."""
    words = ("a man woman's dog's kids it's isn't don't can't won't they're we'll i'm you've he'd "
             "cat t-shirt 3.5 1,000 10:30 $5 50% #1 u.s. mr. dr. st. e.g. etc. w/ and/or 1/2 "
             "o'clock rock'n'roll x-ray 2-3 black-and-white cafe na\u00efve r\u00e9sum\u00e9 90s "
             "1990's '90s the on in of with red big table street").split()
    punct = [".", ",", "!", "?", ";", ":", "...", "--", "-", "(", ")", "\"", "'", "!!", "?!", "&",
             "/", "[", "]"]
    out = []
    for _ in range(n):
        toks = []
        for _ in range(rng.randint(3, 12)):
            w = rng.choice(words)
            if rng.random() < 0.3:
                w = w.capitalize()
            if rng.random() < 0.15:
                w = w + rng.choice(punct)
            if rng.random() < 0.07:
                w = rng.choice(punct) + w
            toks.append(w)
        s = " ".join(toks)
        if rng.random() < 0.5:
            s += rng.choice([".", "!", "?", "..."])
        out.append(s)
    return out


def tokenizer_fixture(rng):
    tok = PTBTokenizer()
    stress = stress_captions(rng)
    res = tok.tokenize({str(i): [{"caption": c}] for i, c in enumerate(TRICKY + stress)})
    toks = [res[str(i)][0] for i in range(len(TRICKY) + len(stress))]
    return {"raw": TRICKY, "tokenized": toks[:len(TRICKY)],
            "stress_raw": stress, "stress_tokenized": toks[len(TRICKY):]}


def ln_fixture(rng):
    """Random narratives and scenic's trace2coord outputs (before any clipping)."""
    from scipy import interpolate

    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    out = []
    for n in range(12):
        traces, t = [], 0.0
        for _ in range(rng.randint(1, 3)):
            seg = []
            for _ in range(rng.randint(1, 6)):
                t += rng.uniform(0.05, 0.8)
                seg.append({"x": round(rng.uniform(-0.05, 1.05), 4), "y": round(rng.uniform(-0.05, 1.05), 4),
                            "t": round(t, 3)})
            traces.append(seg)
        rng.shuffle(traces)  # segments out of time order: the reader must sort
        span = t
        timed = []
        for k in range(rng.randint(1, 5)):
            a = round(rng.uniform(-0.5, span + 0.5), 3)
            b = a if rng.random() < 0.2 else round(a + rng.uniform(0.0, 1.5), 3)
            timed.append({"utterance": " ".join(rng.choice(["a", "dog", "in", "the", "park", "red"])
                                                for _ in range(rng.randint(1, 3))),
                          "start_time": a, "end_time": b})
        pts = [p for tr in traces for p in tr]
        rec = {"dataset_id": "mscoco_val2017", "image_id": str(100 + n), "annotator_id": n,
               "caption": " ".join(u["utterance"] for u in timed), "timed_caption": timed, "traces": traces}
        expected = None
        if len(pts) > 1:
            t_arr = np.array([p["t"] for p in pts])
            x_arr = np.array([p["x"] for p in pts])
            y_arr = np.array([p["y"] for p in pts])
            order = np.argsort(t_arr)
            t_arr, x_arr, y_arr = t_arr[order], x_arr[order], y_arr[order]
            expected = []
            for u in timed:
                xi = interpolate.interp1d(t_arr, x_arr, fill_value="extrapolate")
                yi = interpolate.interp1d(t_arr, y_arr, fill_value="extrapolate")
                tv = np.linspace(u["start_time"], u["end_time"], num=16)
                xv, yv = xi(tv), yi(tv)
                if tv[-1] - tv[0] < 1e-5:
                    cx, cy = np.mean(xv), np.mean(yv)
                else:
                    cx = trapezoid(xv, tv) / (tv[-1] - tv[0])
                    cy = trapezoid(yv, tv) / (tv[-1] - tv[0])
                expected.append({"bbox": [float(xv.min()), float(yv.min()), float(xv.max()), float(yv.max())],
                                 "center": [float(cx), float(cy)],
                                 "points": np.stack([xv, yv], -1).tolist()})
        out.append({"record": rec, "expected": expected})
    return out


def meteor_pairs_fixture(fx):
    """Per-pair jar METEOR for every (prediction, references) of the captions fixture."""
    m = Meteor()
    out = []
    for k in fx["ids"]:
        s = m._stat(fx["tokenized_preds"][k], fx["tokenized_refs"][k])
        m.meteor_p.stdin.write(f"EVAL ||| {s}\n".encode())
        m.meteor_p.stdin.flush()
        seg = float(m.meteor_p.stdout.readline().strip())
        m.meteor_p.stdout.readline()
        out.append({"candidate": fx["tokenized_preds"][k], "references": fx["tokenized_refs"][k],
                    "stats": s, "meteor": seg})
    return out


def main():
    rng = random.Random(20240617)
    os.makedirs(OUT, exist_ok=True)
    fx = captions_fixture(rng)
    with open(os.path.join(OUT, "captions.json"), "w") as f:
        json.dump(fx, f, indent=0)
    vfx = vocab_captions_fixture(random.Random(7))
    with open(os.path.join(OUT, "captions_vocab.json"), "w") as f:
        json.dump(vfx, f, indent=0)
    with open(os.path.join(OUT, "meteor_pairs.json"), "w") as f:
        json.dump(meteor_pairs_fixture(fx), f, indent=0)
    with open(os.path.join(OUT, "masks.json"), "w") as f:
        json.dump(masks_fixture(rng), f)
    with open(os.path.join(OUT, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_fixture(random.Random(5)), f, indent=0)
    ln_out = os.path.join(os.path.dirname(__file__), "..", "pixel-data", "tests", "fixtures", "datasets",
                          "ln_scenic_reference.json")
    with open(ln_out, "w") as f:
        json.dump(ln_fixture(random.Random(11)), f)
    for name, f in [("captions", fx), ("captions_vocab", vfx)]:
        print(name, "bleu", f["bleu"], "rouge", f["rouge_l"], "cider", f["cider"], "meteor", f["meteor"])


if __name__ == "__main__":
    main()
