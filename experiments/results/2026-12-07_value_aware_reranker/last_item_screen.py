"""Screen: retrieval score cos(LN h) + beta * feature(last items), untrained, validation queries, kNN-LM
(windows 3, T 0.07, alpha 0.2, top 50). feature 'eq': query's last item == entry's last item;
'emb': cosine of the backbone's item embeddings of the two last items; 'eq2': last two items both equal."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ftragrec_jax.config import Config
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.models.knowledge_base import encode_samples, value_windows
from ftragrec_jax.train.ftragrec_task import load_pretrained_encoder

data, pre, split, out_json = sys.argv[1:5]
betas = [float(b) for b in sys.argv[5].split(",")]
ds = dataset_from_config(Config(data=data))
enc, meta = load_pretrained_encoder(pre, ds)
tr, q = ds.train, getattr(ds, split)
h_kb = encode_samples(enc, tr.item_seq, tr.item_seq_len)
h_q = encode_samples(enc, q.item_seq, q.item_seq_len)
E = jnp.asarray(np.asarray(enc.item_table()))
En = np.asarray(E) / np.linalg.norm(np.asarray(E), axis=-1, keepdims=True)


def ln_unit(h):
    x = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-12)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def last(seq, n, back=1):
    i = np.asarray(n) - back
    return np.where(i >= 0, np.take_along_axis(np.asarray(seq), np.maximum(i, 0)[:, None], 1)[:, 0], -1)


g_kb, g_q = ln_unit(np.asarray(h_kb)), ln_unit(np.asarray(h_q))
l_kb, l_q = last(tr.item_seq, tr.item_seq_len), last(q.item_seq, q.item_seq_len)
l2_kb, l2_q = last(tr.item_seq, tr.item_seq_len, 2), last(q.item_seq, q.item_seq_len, 2)
e_kb, e_q = En[l_kb], En[l_q]
win = value_windows(tr.target, tr.user, tr.prefix_len, 3)
K, T, A = 50, 0.07, 0.2
wdec = 0.5 ** np.arange(3)


@jax.jit
def ranks(hq, nb_items, nb_w, s_nb, target):
    base = jax.nn.log_softmax(hq @ E.T, -1)
    p = jax.nn.softmax(s_nb / T, -1)
    mass = (p[..., None] * nb_w).reshape(p.shape[0], -1)
    rows = jnp.arange(base.shape[0])[:, None]
    pk = jnp.zeros_like(base).at[rows, nb_items.reshape(p.shape[0], -1)].add(mass)
    f = jnp.logaddexp(jnp.log1p(-A) + base, jnp.log(A) + jnp.log(pk))
    st = jnp.take_along_axis(f, target[:, None], 1)
    return (f > st).sum(-1) + ((f == st) & (jnp.arange(f.shape[1])[None] < target[:, None])).sum(-1)


variants = [("none", 0.0)] + [(f, b) for f in ("eq", "emb", "eq2") for b in betas]
res = {v: [] for v in variants}
hits = {v: [] for v in variants}
for s in range(0, len(q), 500):
    idx = np.arange(s, min(s + 500, len(q)))
    cos = g_q[idx] @ g_kb.T
    same = (tr.user[None, :] == q.user[idx, None]) & (tr.prefix_len[None, :] >= q.prefix_len[idx, None])
    for f, b in variants:
        if f == "none":
            sc = cos.copy()
        elif f == "eq":
            sc = cos + b * (l_q[idx, None] == l_kb[None, :])
        elif f == "eq2":
            sc = cos + b * ((l_q[idx, None] == l_kb[None, :]) & (l2_q[idx, None] == l2_kb[None, :]) & (l2_q[idx, None] >= 0))
        else:
            sc = cos + b * (e_q[idx] @ e_kb.T)
        sc[same] = -np.inf
        top = np.argpartition(-sc, K, axis=1)[:, :K]
        s_nb = np.take_along_axis(sc, top, 1)
        del sc
        hits[(f, b)].append((tr.target[top] == q.target[idx, None]).any(1))
        items = win[top]
        wv = np.where(items > 0, wdec, 0.0)
        wv = wv / np.maximum(wv.sum(-1, keepdims=True), 1e-30)
        r = ranks(jnp.asarray(h_q[idx]), jnp.asarray(items), jnp.asarray(wv, jnp.float32),
                  jnp.asarray(s_nb, jnp.float32), jnp.asarray(q.target[idx]))
        res[(f, b)].append(np.asarray(r))
    print(s, flush=True)

out = {"backbone": pre, "split": split, "queries": int(len(q)), "rows": []}
for v in variants:
    r = np.concatenate(res[v])
    row = {"feature": v[0], "beta": v[1], "hr10": float((r < 10).mean()),
           "ndcg10": float(np.where(r < 10, 1 / np.log2(r + 2), 0).mean()),
           "hr50": float((r < 50).mean()), "target_in_top50": float(np.concatenate(hits[v]).mean())}
    out["rows"].append(row)
    print(json.dumps(row), flush=True)
json.dump(out, open(out_json, "w"), indent=1)
