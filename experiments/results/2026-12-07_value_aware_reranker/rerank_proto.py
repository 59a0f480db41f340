"""Prototype outside the library: a trained reranker over the untrained g's pool.

Stage 1 (frozen, untrained): the top-P training entries by cos(LN h_q, LN h_j), the library's exclusion rule.
Stage 2 (trained): score_j = cos_j + u_j with u_j = (W s)·E[t_j] (W [H, H], zero at init, so the untrained
model is stage 1 alone); the fused neighbours are the top-50 of the pool by score_j, weighted softmax(score/T),
kNN-LM windows 3 (decay 0.5), alpha A. W is fitted on half of the validation users with the library's
knn_likelihood loss over the whole pool (-log sum_j R_j v_j(y), R = softmax(score/T) over the pool), chosen by
epoch on the other half (NDCG@10), and compared on test with the untrained model and a fixed beta * z(s·E[t_j]).
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftragrec_jax.config import Config
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.models.knowledge_base import encode_samples, value_windows
from ftragrec_jax.train.ftragrec_task import load_pretrained_encoder

data, pre, out_json = sys.argv[1:4]
P = int(sys.argv[4]) if len(sys.argv) > 4 else 300
SEED = int(sys.argv[5]) if len(sys.argv) > 5 else 0
LR = float(sys.argv[6]) if len(sys.argv) > 6 else 1e-3
# full: u_j = (W s)·E[t_j], W [H, H]; scalar: u_j = c · s·E[t_j], one learned number (is W more than a scale?)
FORM = sys.argv[7] if len(sys.argv) > 7 else "full"
K, M, T, A = 50, 3, 0.07, 0.2
ds = dataset_from_config(Config(data=data))
enc, _ = load_pretrained_encoder(pre, ds)
tr = ds.train
E = np.asarray(enc.item_table())
h_kb = np.asarray(encode_samples(enc, tr.item_seq, tr.item_seq_len))


def ln_unit(h):
    x = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-12)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


g_kb = ln_unit(h_kb)
win = value_windows(tr.target, tr.user, tr.prefix_len, M)
wdec = 0.5 ** np.arange(M)
wv_all = np.where(win > 0, wdec, 0.0)
wv_all = (wv_all / np.maximum(wv_all.sum(-1, keepdims=True), 1e-30)).astype(np.float32)


def pools(split):
    q = getattr(ds, split)
    h_q = np.asarray(encode_samples(enc, q.item_seq, q.item_seq_len))
    g_q = ln_unit(h_q)
    ids, cos = [], []
    for s in range(0, len(q), 500):
        idx = np.arange(s, min(s + 500, len(q)))
        sc = g_q[idx] @ g_kb.T
        sc[(tr.user[None, :] == q.user[idx, None]) & (tr.prefix_len[None, :] >= q.prefix_len[idx, None])] = -np.inf
        top = np.argpartition(-sc, P, axis=1)[:, :P]
        c = np.take_along_axis(sc, top, 1)
        o = np.argsort(-c, 1, kind="stable")
        ids.append(np.take_along_axis(top, o, 1))
        cos.append(np.take_along_axis(c, o, 1))
    return {"h": h_q, "ids": np.concatenate(ids), "cos": np.concatenate(cos).astype(np.float32), "y": q.target}


data_split = {s: pools(s) for s in ("valid", "test")}
print("pools built", flush=True)
Ej = jnp.asarray(E)
tgt_kb = jnp.asarray(tr.target)
win_kb, wv_kb = jnp.asarray(win), jnp.asarray(wv_all)


def extra(params, h, ids):
    if FORM == "scalar":
        return params["c"] * jnp.einsum("bh,bph->bp", h, Ej[tgt_kb[ids]])
    return jnp.einsum("bh,bph->bp", h @ params["W"], Ej[tgt_kb[ids]])


def zeros():
    return {"c": jnp.zeros((), jnp.float32)} if FORM == "scalar" else {"W": jnp.zeros((H, H), jnp.float32)}


@jax.jit
def ranks(params, h, ids, cos, y, t, a, beta):
    logit = h @ Ej.T
    z = (logit - logit.mean(1, keepdims=True)) / logit.std(1, keepdims=True)
    score = cos + extra(params, h, ids) + beta * jnp.take_along_axis(z, tgt_kb[ids], 1)
    s_top, pos = jax.lax.top_k(score, K)
    nb = jnp.take_along_axis(ids, pos, 1)
    p = jax.nn.softmax(s_top / t, -1)
    mass = (p[..., None] * wv_kb[nb]).reshape(p.shape[0], -1)
    base = jax.nn.log_softmax(logit, -1)
    rows = jnp.arange(base.shape[0])[:, None]
    pk = jnp.zeros_like(base).at[rows, win_kb[nb].reshape(p.shape[0], -1)].add(mass)
    f = jnp.logaddexp(jnp.log1p(-a) + base, jnp.log(a) + jnp.log(pk))
    st = jnp.take_along_axis(f, y[:, None], 1)
    return (f > st).sum(-1) + ((f == st) & (jnp.arange(f.shape[1])[None] < y[:, None])).sum(-1)


def evaluate(params, split, rows, t=T, a=A, beta=0.0):
    d = data_split[split]
    r = []
    for s in range(0, len(rows), 1000):
        i = rows[s : s + 1000]
        r.append(np.asarray(ranks(params, jnp.asarray(d["h"][i]), jnp.asarray(d["ids"][i]), jnp.asarray(d["cos"][i]),
                                  jnp.asarray(d["y"][i]), t, a, beta)))
    r = np.concatenate(r)
    return r


def metrics(r):
    return {"hr10": float((r < 10).mean()), "ndcg10": float(np.where(r < 10, 1 / np.log2(r + 2), 0).mean())}


def loss_fn(params, h, ids, cos, y):
    score = (cos + extra(params, h, ids)) / T
    vote = jnp.where(win_kb[ids] == y[:, None, None], wv_kb[ids], 0.0).sum(-1)
    pos = vote > 0
    counted = pos.any(-1)
    lz = jax.nn.logsumexp(score, -1)
    lp = jax.nn.logsumexp(jnp.where(pos, score + jnp.log(jnp.where(pos, vote, 1.0)), -jnp.inf), -1)
    rows = jnp.where(counted, lz - lp, 0.0)
    return rows.sum() / jnp.maximum(counted.sum(), 1)


rng = np.random.default_rng(SEED)
nv = len(data_split["valid"]["y"])
perm = rng.permutation(nv)
fit, sel = np.sort(perm[: nv // 2]), np.sort(perm[nv // 2 :])
test_rows = np.arange(len(data_split["test"]["y"]))
H = E.shape[1]
params = zeros()
opt = optax.adam(LR)
state = opt.init(params)


@jax.jit
def step(params, state, h, ids, cos, y):
    l, g = jax.value_and_grad(loss_fn)(params, h, ids, cos, y)
    u, state = opt.update(g, state, params)
    return optax.apply_updates(params, u), state, l


zero = zeros()
out = {"P": P, "seed": SEED, "lr": LR, "form": FORM, "untrained": {}, "fixed_beta": {}, "trained": []}
grid_t, grid_a = (0.07, 0.3, 1.0), (0.2, 0.3)


def tuned(params, beta=0.0):
    best = max(((t, a) for t in grid_t for a in grid_a), key=lambda ta: metrics(evaluate(params, "valid", sel, *ta, beta))["ndcg10"])
    return best


for beta in (0.0, 0.01, 0.02, 0.05):
    key = "untrained" if beta == 0.0 else "fixed_beta"
    rs = evaluate(zero, "valid", sel, beta=beta)
    rt = evaluate(zero, "test", test_rows, beta=beta)
    ta = tuned(zero, beta)
    rtt = evaluate(zero, "test", test_rows, *ta, beta)
    out[key][beta] = {"sel": metrics(rs), "test": metrics(rt), "tuned": list(ta), "test_tuned": metrics(rtt)}
    print(key, beta, json.dumps(out[key][beta]), flush=True)
    name = "untrained" if beta == 0.0 else f"beta{beta}"
    np.save(out_json.replace(".json", f"_ranks_{name}.npy"), rt)
    np.save(out_json.replace(".json", f"_ranks_{name}_tuned.npy"), rtt)

d = data_split["valid"]
best = (-1, None, None)
for epoch in range(15):
    o = rng.permutation(fit)
    ls = []
    for s in range(0, len(o) - 255, 256):
        i = np.sort(o[s : s + 256])
        params, state, l = step(params, state, jnp.asarray(d["h"][i]), jnp.asarray(d["ids"][i]), jnp.asarray(d["cos"][i]), jnp.asarray(d["y"][i]))
        ls.append(float(l))
    m = metrics(evaluate(params, "valid", sel))
    print("epoch", epoch, "loss", round(np.mean(ls), 4), "sel", m, flush=True)
    out["trained"].append({"epoch": epoch, "loss": float(np.mean(ls)), "sel": m})
    if m["ndcg10"] > best[0]:
        best = (m["ndcg10"], epoch, jax.tree.map(lambda x: x, params))
p_best = best[2]
rt = evaluate(p_best, "test", test_rows)
ta = tuned(p_best)
rtt = evaluate(p_best, "test", test_rows, *ta)
out["trained_best"] = {"epoch": best[1], "test": metrics(rt), "tuned": list(ta), "test_tuned": metrics(rtt)}
print("trained best", json.dumps(out["trained_best"]), flush=True)
np.save(out_json.replace(".json", "_ranks_trained.npy"), rt)
np.save(out_json.replace(".json", "_ranks_trained_tuned.npy"), rtt)
json.dump(out, open(out_json, "w"), indent=1)
