"""Exact two-sided sign test of per-user NDCG@10 (and HR@10) differences, pooled over pairs of rank files
(trained.npy untrained.npy ...): each user of each pair is one comparison; ties drop out."""
import json
import sys
from math import comb

import numpy as np


def nd(r):
    return np.where(r < 10, 1 / np.log2(r + 2), 0.0)


def sign(d):
    w, l = int((d > 0).sum()), int((d < 0).sum())
    k = min(w, l)
    return w, l, min(1.0, 2 * sum(comb(w + l, i) for i in range(k + 1)) / 2 ** (w + l))


pairs = [(np.load(a), np.load(b)) for a, b in zip(sys.argv[1::2], sys.argv[2::2])]
out = {"pairs": [], "pooled": {}}
for (a, b), name in zip(pairs, sys.argv[1::2]):
    out["pairs"].append({"trained": name, "ndcg10": [float(nd(a).mean()), float(nd(b).mean())],
                         "hr10": [float((a < 10).mean()), float((b < 10).mean())],
                         "ndcg10_sign": sign(nd(a) - nd(b)), "hr10_sign": sign((a < 10) * 1.0 - (b < 10))})
for key, f in (("ndcg10", nd), ("hr10", lambda r: (r < 10) * 1.0)):
    out["pooled"][key] = {"trained_mean": float(np.mean([f(a).mean() for a, _ in pairs])),
                          "untrained_mean": float(np.mean([f(b).mean() for _, b in pairs])),
                          "sign": sign(np.concatenate([f(a) - f(b) for a, b in pairs]))}
print(json.dumps(out, indent=1))
