#!/usr/bin/env python3.11
"""Reference dense-captioning evaluator and the fixture pixel-metrics' densecap parity test uses.

A straightforward Python port, written from the logic of
- densecap's Lua evaluator (jcjohnson/densecap `eval/eval_utils.lua`, `DenseCaptioningEvaluator`,
  and `densecap/box_utils.lua` `merge_boxes`/`iou_matrix`), and
- its port in scenic (`projects/pixel_llm/densecap_evaluator.py`, `DensecapEval`), which is what
  PixelLLM reports.

Differences kept per protocol (see pixel_metrics::densecap::DensecapProtocol):
- METEOR thresholds: Lua {0.05..0.25} (25 pairs), scenic {0, 0.05..0.25} (30 pairs);
- boxes: Lua x2 = x + w - 1 with "+1" areas, scenic continuous [x, y, w, h];
- a detection overlapping no ground truth: Lua indexes used[-1] (torch: the last ground truth) and
  marks it taken; scenic has no side effect;
- recall steps: Lua accumulates t = t + 0.01 in floating point; scenic uses t / 100;
- scenic replaces a matched ground truth containing an empty caption by "EMPTY" vs "EMPTY".

METEOR scores come from pycocoevalcap's meteor-1.5.jar (java required) and are written into the
fixture so the Rust test can inject them.

Regenerate:

    pip install pycocoevalcap
    python3.11 tools/densecap_eval_reference.py

writes pixel-metrics/tests/fixtures/metrics/densecap.json.
"""

import json
import os
import random

OUT = os.path.join(os.path.dirname(__file__), "..", "pixel-metrics", "tests", "fixtures", "metrics",
                   "densecap.json")

LUA = dict(meteor_thresholds=[0.05, 0.1, 0.15, 0.2, 0.25], plus_one=True, unmatched_takes_last=True,
           accumulated_steps=True, empty_as_token=False)
PIXEL_LLM = dict(meteor_thresholds=[0.0, 0.05, 0.1, 0.15, 0.2, 0.25], plus_one=False,
                 unmatched_takes_last=False, accumulated_steps=False, empty_as_token=True)
IOU_THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7]


def iou(a, b, plus_one):
    if plus_one:
        ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2] - 1, a[1] + a[3] - 1
        bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2] - 1, b[1] + b[3] - 1
        iw = min(ax2, bx2) - max(ax1, bx1) + 1
        ih = min(ay2, by2) - max(ay1, by1) + 1
        if iw > 0 and ih > 0:
            ua = (ax2 - ax1 + 1) * (ay2 - ay1 + 1) + (bx2 - bx1 + 1) * (by2 - by1 + 1) - iw * ih
            return iw * ih / ua
        return 0.0
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def merge_boxes(boxes, captions, plus_one, thr=0.7):
    n = len(boxes)
    d = [[(1.0 if (i == j and plus_one) else iou(boxes[i], boxes[j], plus_one)) for j in range(n)]
         for i in range(n)]
    merged = []
    while n:
        counts = [sum(1 for j in range(n) if d[i][j] >= thr) for i in range(n)]
        top = max(range(n), key=lambda i: (counts[i], -i))
        if counts[top] == 0:
            break
        members = [j for j in range(n) if d[top][j] >= thr]
        box = [sum(boxes[m][k] for m in members) / len(members) for k in range(4)]
        merged.append({"bbox": box, "captions": [captions[m].replace("\n", "") for m in members]})
        for m in members:
            for k in range(n):
                d[m][k] = 0.0
                d[k][m] = 0.0
    return merged


def records_for(gt, preds, p):
    """Per-detection records (ok, iou, score, candidate, references) and the number of positives."""
    by_img = {im["id"]: ([], []) for im in gt["images"]}
    for a in gt["annotations"]:
        by_img[a["image_id"]][0].append(a["bbox"])
        by_img[a["image_id"]][1].append(a["caption"])
    dets = {im["id"]: [] for im in gt["images"]}
    for x in preds:
        dets[x["image_id"]].append(x)
    records, npos = [], 0
    for im in gt["images"]:
        merged = merge_boxes(*by_img[im["id"]], p["plus_one"])
        npos += len(merged)
        used = [False] * len(merged)
        for d in sorted(dets[im["id"]], key=lambda x: -x["score"]):
            ovmax, jmax = 0.0, -1
            for j, g in enumerate(merged):
                ov = iou(d["bbox"], g["bbox"], p["plus_one"])
                if ov > ovmax:
                    ovmax, jmax = ov, j
            if jmax >= 0:
                ok = not used[jmax]
                used[jmax] = True
                cand, refs = d["caption"], merged[jmax]["captions"]
                if ok and p["empty_as_token"] and "" in refs:
                    cand, refs = "EMPTY", ["EMPTY"]
            else:
                ok, cand, refs = False, None, None
                if p["unmatched_takes_last"] and merged:
                    used[-1] = True  # torch's used[-1] is the last element
            records.append({"ok": ok, "iou": ovmax, "score": d["score"], "candidate": cand,
                            "references": refs})
    return records, npos


def evaluate(records, npos, meteor, p):
    records = sorted(records, key=lambda r: -r["score"])
    if p["accumulated_steps"]:
        steps, t = [], 0.0
        while t <= 1.0:
            steps.append(t)
            t += 0.01
    else:
        steps = [t / 100.0 for t in range(100)]

    def ap(iou_t, meteor_t):
        tp = fp = 0
        rec, prec = [], []
        for r in records:
            m = meteor[(r["candidate"], tuple(r["references"]))] if r["ok"] else 0.0
            if r["ok"] and r["iou"] >= iou_t and (meteor_t is None or m > meteor_t):
                tp += 1
            else:
                fp += 1
            rec.append(tp / npos)
            prec.append(tp / (tp + fp))
        total = 0.0
        for t in steps:
            total += max([pr for rc, pr in zip(rec, prec) if rc >= t], default=0.0)
        return total / len(steps)

    aps = [ap(i, m) for i in IOU_THRESHOLDS for m in p["meteor_thresholds"]]
    dets = [ap(i, None) for i in IOU_THRESHOLDS]
    return {"map": sum(aps) / len(aps), "map_detection": sum(dets) / len(dets)}


WORDS = ["a", "the", "man", "dog", "dogs", "red", "shirt", "white", "plate", "tree", "green",
         "leaves", "sky", "blue", "clouds", "window", "on", "of", "building", "car", "wheel",
         "black", "tire", "person", "walking", "street"]


def caption(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))


def synthesize(rng):
    images, annotations, preds = [], [], []
    for img in range(8):
        images.append({"id": img})
        gts = []
        for _ in range(rng.randint(0 if img == 7 else 2, 8) if img != 7 else 0):
            box = [rng.randint(0, 300), rng.randint(0, 300), rng.randint(8, 120), rng.randint(8, 120)]
            gts.append((box, caption(rng)))
            if rng.random() < 0.35:  # near-duplicate region, to be merged
                dup = [box[0] + rng.randint(-3, 3), box[1] + rng.randint(-3, 3), box[2], box[3]]
                gts.append((dup, caption(rng)))
        if img == 3 and gts:
            gts.append((list(gts[0][0]), ""))  # empty caption in a merged group
        for box, cap in gts:
            annotations.append({"image_id": img, "bbox": box, "caption": cap})
        if img == 6:
            continue  # an image without predictions
        for box, cap in gts:
            if rng.random() < 0.8:
                j = [box[0] + rng.uniform(-6, 6), box[1] + rng.uniform(-6, 6),
                     max(1.0, box[2] + rng.uniform(-10, 10)), max(1.0, box[3] + rng.uniform(-10, 10))]
                c = cap if rng.random() < 0.4 else caption(rng)
                preds.append({"image_id": img, "bbox": j, "caption": c, "score": rng.random()})
        for _ in range(rng.randint(0, 4)):  # background detections, some overlapping nothing
            preds.append({"image_id": img, "bbox": [rng.uniform(400, 600), rng.uniform(0, 500),
                                                     rng.uniform(5, 60), rng.uniform(5, 60)],
                          "caption": caption(rng), "score": rng.random()})
    return {"images": images, "annotations": annotations}, preds


def main():
    rng = random.Random(7)
    gt, preds = synthesize(rng)
    needed = set()
    per_protocol = {}
    for name, p in [("densecap_lua", LUA), ("pixel_llm", PIXEL_LLM)]:
        recs, npos = records_for(gt, preds, p)
        per_protocol[name] = (recs, npos, p)
        for r in recs:
            if r["ok"]:
                needed.add((r["candidate"], tuple(r["references"])))
    from pycocoevalcap.meteor.meteor import Meteor
    m = Meteor()
    meteor = {}
    for cand, refs in sorted(needed):
        stat = m._stat(cand, list(refs))
        m.meteor_p.stdin.write(f"EVAL ||| {stat}\n".encode())
        m.meteor_p.stdin.flush()
        meteor[(cand, refs)] = float(m.meteor_p.stdout.readline().strip())
        m.meteor_p.stdout.readline()
    out = {"gt": gt, "predictions": preds,
           "meteor": [{"candidate": c, "references": list(r), "score": s} for (c, r), s in meteor.items()]}
    for name, (recs, npos, p) in per_protocol.items():
        out[name] = evaluate(recs, npos, meteor, p)
        print(name, out[name], "records", len(recs), "npos", npos)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=0)


if __name__ == "__main__":
    main()
