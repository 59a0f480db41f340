"""Does a knowledge base whose entries carry more than their next item hold information the frozen backbone
lacks? kNN-LM over the untrained g (LN(h), cosine, exact top-50, no quality threshold beyond cos >= 0), where
entry j's value is not only its target t_j but the window t_j, t_{j+1}, ..., t_{j+m-1} of the same user's later
*training* targets, weighted decay**w and normalised per entry. m = 1 is the library's kNN-LM.

Every setting is scored on all validation users; the best m = 1 setting and the best setting overall (by
NDCG@10 on validation) are then scored on test and compared per user (exact sign test).

    python experiments/results/2026-12-06_future_window_values/probe.py MODEL_DIR --out OUT.json [--m 1 2 3 5]
"""

import argparse
import functools
import itertools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ftragrec_jax.atomic import write_json_atomic
from ftragrec_jax.config import Config
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.evaluation import target_ranks
from ftragrec_jax.metrics import single_target_metrics, summarize
from ftragrec_jax.model_dir import load_model
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder
from ftragrec_jax.models.knowledge_base import encode_samples
from ftragrec_jax.significance import paired_hits, paired_ndcg
from ftragrec_jax.trees import assign_params

TOP_K = 50
KS = (5, 10, 20, 50)


def untrained_keys(h):
    """g at its initialisation: LN(h) (eps 1e-12, unit scale, zero bias), then unit norm."""
    h = jnp.asarray(h, jnp.float32)
    x = h - h.mean(-1, keepdims=True)
    x = x / jnp.sqrt((x * x).mean(-1, keepdims=True) + 1e-12)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames="k")
def _top(q, keys, k):
    return jax.lax.top_k(q @ keys.T, k)


def search(q, keys, chunk=512, k=TOP_K):
    """Exact top-k (cos, ids) of every query over all keys (the query is not in the base: valid/test)."""
    cos, ids = [], []
    for s in range(0, len(q), chunk):
        c, i = _top(q[s : s + chunk], keys, k)
        cos.append(np.asarray(c))
        ids.append(np.asarray(i))
    return np.concatenate(cos), np.concatenate(ids)


def future_windows(train, m):
    """[N, m] item ids: sample j's target and the targets of the same user's next m-1 training samples
    (0 = none; item 0 is padding in every dataset file's vocabulary)."""
    order = np.lexsort((train.prefix_len, train.user))
    user, target = np.asarray(train.user)[order], np.asarray(train.target)[order]
    out = np.zeros((len(order), m), np.int32)
    for w in range(m):
        same = np.zeros(len(order), bool)
        same[: len(order) - w] = user[w:] == user[: len(order) - w]
        shifted = np.zeros(len(order), np.int32)
        shifted[: len(order) - w] = target[w:]
        out[order, w] = np.where(same, shifted, 0)
    return out


@jax.jit
def _ranks(s, table, cos, values, target, temperature, alpha, decay):
    """Ranks of target under log((1-a) softmax(s E^T) + a p_knn), p_knn from the windows' weighted items."""
    valid = cos >= 0.0
    logits = jnp.where(valid, cos / temperature, -jnp.inf)
    p_ret = jnp.where(valid, jax.nn.softmax(logits, axis=-1), 0.0)  # [B, k]
    present = values > 0
    w = jnp.where(present, decay ** jnp.arange(values.shape[-1], dtype=jnp.float32), 0.0)
    w = w / jnp.maximum(w.sum(-1, keepdims=True), 1e-30)  # [B, k, m]
    base = jax.nn.log_softmax(s @ table.T, axis=-1)
    rows = jnp.arange(base.shape[0])[:, None, None]
    p_knn = jnp.zeros_like(base).at[rows, values].add(p_ret[..., None] * w)
    p_knn = p_knn.at[:, 0].set(0.0)
    mixed = jnp.logaddexp(jnp.log1p(-alpha) + base, jnp.log(alpha) + jnp.log(p_knn))
    mixed = jnp.where(valid.any(-1, keepdims=True), mixed, base)
    return target_ranks(mixed, target, None, mask_history=False)[0]


def ranks(s, table, cos, ids, windows, target, temperature, alpha, decay, chunk=1024):
    out = []
    for a in range(0, len(s), chunk):
        b = slice(a, a + chunk)
        vals = windows[ids[b]]
        out.append(np.asarray(_ranks(s[b], table, cos[b], vals, target[b], temperature, alpha, decay)))
    return np.concatenate(out)


def load_backbone(model):
    """(encoder, dataset, item table) of a DuoRec model directory, on the dataset its model.json names."""
    meta, params, _ = load_model(model)
    encoder = build_encoder(EncoderConfig(**meta["encoder"]), seed=0)
    assign_params(encoder, params, model)
    return encoder, dataset_from_config(Config(**meta["dataset"])), jnp.asarray(encoder.item_table())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--m", type=int, nargs="+", default=[1, 2, 3, 5])
    p.add_argument("--decay", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--temperature", type=float, nargs="+", default=[0.3, 0.6, 1.0])
    p.add_argument("--alpha", type=float, nargs="+", default=[0.2, 0.3, 0.4])
    a = p.parse_args()
    t0 = time.time()
    encoder, dataset, table = load_backbone(a.model)
    keys = untrained_keys(encode_samples(encoder, dataset.train, None))
    windows = future_windows(dataset.train, max(a.m))
    split = {}
    for name in ("valid", "test"):
        samples = getattr(dataset, name)
        s = encode_samples(encoder, samples, None)
        cos, ids = search(np.asarray(untrained_keys(s)), keys)
        split[name] = (jnp.asarray(s), cos, ids, np.asarray(samples.target, np.int32))
    print(f"encoded and searched in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)

    grid = []
    for m, decay, temperature, alpha in itertools.product(a.m, a.decay, a.temperature, a.alpha):
        if m == 1 and decay != a.decay[0]:
            continue  # decay has no effect on a one-item window
        s, cos, ids, target = split["valid"]
        r = ranks(s, table, cos, ids, windows[:, :m], target, temperature, alpha, decay)
        row = {"m": m, "decay": decay, "temperature": temperature, "alpha": alpha}
        row |= {"valid": summarize(single_target_metrics(r, KS), KS, columns=range(len(KS)))}
        grid.append(row)
        print(
            json.dumps({k: row[k] for k in ("m", "decay", "temperature", "alpha")}),
            "valid ndcg@10 %.4f hit@10 %.4f" % (row["valid"]["ndcg@10"], row["valid"]["hit@10"]),
            file=sys.stderr,
            flush=True,
        )

    def best(rows):
        return max(rows, key=lambda r: (r["valid"]["ndcg@10"], r["valid"]["hit@10"]))

    chosen = {"m1": best([r for r in grid if r["m"] == 1]), "any": best(grid)}
    test_ranks = {}
    for label, row in chosen.items():
        s, cos, ids, target = split["test"]
        r = ranks(s, table, cos, ids, windows[:, : row["m"]], target, row["temperature"], row["alpha"], row["decay"])
        row["test"] = summarize(single_target_metrics(r, KS), KS, columns=range(len(KS)))
        test_ranks[label] = r
    out = {
        "model": a.model,
        "dataset": dataset.name,
        "grid": grid,
        "chosen": chosen,
        "paired_test_any_vs_m1": {
            "hits": paired_hits(test_ranks["m1"], test_ranks["any"], KS),
            "ndcg": paired_ndcg(test_ranks["m1"], test_ranks["any"], KS),
        },
        "seconds": round(time.time() - t0),
    }
    write_json_atomic(a.out, out)
    print(json.dumps(out["chosen"], indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
