"""Does training g pay once the knowledge base's values are windows of later items (probe.py)? g (the library's
Retriever: LN(h + W2 gelu(W1 h)), W2 = 0 at the start, so it starts as the untrained g) is fitted on the fitting
half of the validation queries (`valid_query_split`, holdout 0.5: the library's split) to maximise the pool's
retrieval mass on its target,

    loss = -log sum_j softmax_j(q . k_j / T_train) v_j(target),   j over the top-`pool` entries by the current g,

v_j(target) = the weight of target in entry j's window (decay**w, normalised per entry); queries with no such
entry in their pool do not count. With m = 1 this is the library's "contrastive" objective on this pool.
Keys are recomputed and the pool re-searched with the current g before every epoch. With `--queries train`, g is
fitted on every training sample instead: the pool is searched 64 entries deeper and the query's own user's entries
are dropped from it (their windows reach the query's own target, which no validation or test query can see).
The epoch is chosen by held-out validation NDCG@10 at the evaluation temperature and alpha given; then
temperature x alpha are chosen on the held-out half for the untrained and each trained g alike, and test is
scored and paired per user.

    python experiments/results/2026-12-06_future_window_values/train_g.py MODEL_DIR --m 3 --decay 1.0 --out OUT.json
"""

import argparse
import itertools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from probe import KS, future_windows, load_backbone, ranks, search

from ftragrec_jax.atomic import write_json_atomic
from ftragrec_jax.data.batches import valid_query_split
from ftragrec_jax.metrics import single_target_metrics, summarize
from ftragrec_jax.models.knowledge_base import compute_keys, encode_samples
from ftragrec_jax.models.retriever import Retriever, embed
from ftragrec_jax.significance import paired_hits, paired_ndcg, pooled_sign_test


def window_weights(windows, decay):
    present = windows > 0
    w = np.where(present, decay ** np.arange(windows.shape[1], dtype=np.float32), 0.0).astype(np.float32)
    return w / np.maximum(w.sum(1, keepdims=True), 1e-30)


def make_step(temperature):
    def loss_fn(g, h_q, h_pool, v_pool, counted, allowed):
        q = embed(g, h_q)
        k = embed(g, h_pool)  # [B, P, H]
        logits = jnp.where(allowed, jnp.einsum("bh,bph->bp", q, k) / temperature, -jnp.inf)
        log_p = jax.nn.log_softmax(logits, axis=-1)
        mass = jax.nn.logsumexp(jnp.where(v_pool > 0, log_p + jnp.log(jnp.maximum(v_pool, 1e-30)), -jnp.inf), -1)
        rows = jnp.where(counted, -mass, 0.0)
        return rows.sum() / jnp.maximum(counted.sum(), 1)

    @nnx.jit
    def step(g, opt, h_q, h_pool, v_pool, counted, allowed):
        loss, grads = nnx.value_and_grad(loss_fn)(g, h_q, h_pool, v_pool, counted, allowed)
        opt.update(g, grads)
        return loss

    return step


def score(g, table, h_tr, windows, s, target, rows, temperature, alpha, decay):
    """Ranks of target[rows] under the window kNN-LM with g's keys (exact top-50)."""
    cos, ids = search(np.asarray(compute_keys(g, s[rows])), compute_keys(g, h_tr))
    return ranks(jnp.asarray(s[rows]), table, cos, ids, windows, target[rows], temperature, alpha, decay)


def summary(r):
    """Every metric@K of KS, RecBole-rounded, from 1-based ranks."""
    return summarize(single_target_metrics(r, KS), KS, columns=range(len(KS)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--m", type=int, default=3)
    p.add_argument("--decay", type=float, default=1.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pool", type=int, default=200)
    p.add_argument("--train-temperature", type=float, default=0.07)
    p.add_argument(
        "--queries",
        choices=("valid", "train"),
        default="valid",
        help="fit g on the fitting half of validation, or on every training sample (its user's entries excluded)",
    )
    p.add_argument("--select", type=float, nargs=2, default=[1.0, 0.3], help="temperature alpha for epoch choice")
    p.add_argument("--temperature", type=float, nargs="+", default=[0.3, 0.6, 1.0])
    p.add_argument("--alpha", type=float, nargs="+", default=[0.2, 0.3, 0.4])
    a = p.parse_args()
    t0 = time.time()
    encoder, dataset, table = load_backbone(a.model)
    h_tr = encode_samples(encoder, dataset.train, None)
    windows = future_windows(dataset.train, a.m)
    wts = window_weights(windows, a.decay)
    s_va = encode_samples(encoder, dataset.valid, None)
    s_te = encode_samples(encoder, dataset.test, None)
    t_va = np.asarray(dataset.valid.target, np.int32)
    t_te = np.asarray(dataset.test.target, np.int32)
    fit, held = valid_query_split(len(t_va), 0.5)
    all_te = np.arange(len(t_te))
    if a.queries == "valid":
        q_h, q_t, q_user, extra = s_va[fit], t_va[fit], None, 0
    else:  # a training query's own user's entries are dropped: their windows reach the query's target
        q_h, q_t, extra = h_tr, np.asarray(dataset.train.target, np.int32), 64
        q_user = e_user = np.asarray(dataset.train.user)
    print(f"encoded in {time.time() - t0:.0f}s; fit {len(fit)} held {len(held)}", file=sys.stderr, flush=True)

    def choose(g, label):
        grid = []
        for temperature, alpha in itertools.product(a.temperature, a.alpha):
            r = score(g, table, h_tr, windows, s_va, t_va, held, temperature, alpha, a.decay)
            grid.append({"temperature": temperature, "alpha": alpha, "held_valid": summary(r)})
        best = max(grid, key=lambda x: (x["held_valid"]["ndcg@10"], x["held_valid"]["hit@10"]))
        r = score(g, table, h_tr, windows, s_te, t_te, all_te, best["temperature"], best["alpha"], a.decay)
        test = summary(r)
        print(
            label,
            best["temperature"],
            best["alpha"],
            best["held_valid"]["ndcg@10"],
            "test",
            test["ndcg@10"],
            test["hit@10"],
            file=sys.stderr,
            flush=True,
        )
        return {"grid": grid, "chosen": best, "test": test}, r

    g0 = Retriever(h_tr.shape[1], 256, 1, 0.02, rngs=nnx.Rngs(0))
    out = {"model": a.model, "args": vars(a), "untrained": None, "seeds": {}}
    out["untrained"], r0 = choose(g0, "untrained")
    test_ranks = {}
    for seed in a.seeds:
        g = Retriever(h_tr.shape[1], 256, 1, 0.02, rngs=nnx.Rngs(seed))
        opt = nnx.Optimizer(g, optax.adam(a.lr), wrt=nnx.Param)
        step = make_step(a.train_temperature)
        rng = np.random.default_rng(seed)
        best_state, best_val, log = nnx.state(g), -1.0, []
        for epoch in range(a.epochs):
            keys = compute_keys(g, h_tr)
            _, pool = search(np.asarray(compute_keys(g, q_h)), keys, k=a.pool + extra)
            allowed = np.ones(pool.shape, bool) if q_user is None else e_user[pool] != q_user[:, None]
            v = np.where(allowed[..., None] & (windows[pool] == q_t[:, None, None]), wts[pool], 0.0)
            v = v.sum(-1).astype(np.float32)
            counted = v.max(1) > 0
            order = rng.permutation(len(q_h))
            losses = []
            for b in range(0, len(order), 256):
                i = order[b : b + 256]
                if len(i) < 256:
                    i = np.concatenate([i, i[: 256 - len(i)]])
                losses.append(float(step(g, opt, q_h[i], h_tr[pool[i]], v[i], counted[i], allowed[i])))
            r = score(g, table, h_tr, windows, s_va, t_va, held, *a.select, a.decay)
            val = summary(r)["ndcg@10"]
            log.append(
                {
                    "epoch": epoch,
                    "loss": float(np.mean(losses)),
                    "queries_counted": float(counted.mean()),
                    "held_valid_ndcg@10": val,
                }
            )
            print(seed, log[-1], file=sys.stderr, flush=True)
            if val > best_val:
                best_val, best_state = val, jax.tree.map(lambda x: x, nnx.state(g))
        nnx.update(g, best_state)
        res, r = choose(g, f"trained {seed}")
        res["log"] = log
        out["seeds"][seed] = res
        test_ranks[seed] = r
    out["paired"] = {}
    for seed, r in test_ranks.items():
        out["paired"][seed] = {"hits": paired_hits(r0, r, KS), "ndcg": paired_ndcg(r0, r, KS)}
    pooled = pooled_sign_test(r0, list(test_ranks.values()), KS)["ndcg@10"]
    out["pooled_ndcg@10"] = {
        "untrained": pooled["a"],
        "trained_mean": pooled["b_mean"],
        "untrained_better": pooled["a_better"],
        "trained_better": pooled["b_better"],
        "p_value": pooled["p_value"],
    }
    out["seconds"] = round(time.time() - t0)
    write_json_atomic(a.out, out)
    print(out["pooled_ndcg@10"], file=sys.stderr)


if __name__ == "__main__":
    main()
