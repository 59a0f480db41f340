"""Untrained retriever g = LN(h) on a backbone's frozen vectors: how often its top-50 training entries include one
whose target is the query's own next item, and the kNN-LM (windows 3, T 0.07, alpha 0.2) ranking against the
backbone alone, on validation queries."""

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
ds = dataset_from_config(Config(data=data))
enc, meta = load_pretrained_encoder(pre, ds)
tr, q = ds.train, getattr(ds, split)
h_kb = encode_samples(enc, tr.item_seq, tr.item_seq_len)
h_q = encode_samples(enc, q.item_seq, q.item_seq_len)
E = jnp.asarray(np.asarray(enc.item_table()))


def ln_unit(h):
    x = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-12)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


g_kb, g_q = ln_unit(h_kb), ln_unit(h_q)
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

    def rank(s):
        st = jnp.take_along_axis(s, target[:, None], 1)
        return (s > st).sum(-1) + ((s == st) & (jnp.arange(s.shape[1])[None] < target[:, None])).sum(-1)

    p_t = jnp.take_along_axis(pk, target[:, None], 1)[:, 0]
    return rank(base), rank(f), p_t


rb, rf, pt, hit = [], [], [], []
for s in range(0, len(q), 1000):
    idx = np.arange(s, min(s + 1000, len(q)))
    sc = g_q[idx] @ g_kb.T
    same = (tr.user[None, :] == q.user[idx, None]) & (tr.prefix_len[None, :] >= q.prefix_len[idx, None])
    sc[same] = -np.inf
    top = np.argpartition(-sc, K, axis=1)[:, :K]
    s_nb = np.take_along_axis(sc, top, 1)
    hit.append((tr.target[top] == q.target[idx, None]).any(1))
    items = win[top]
    wv = np.where(items > 0, wdec, 0.0)
    wv = wv / np.maximum(wv.sum(-1, keepdims=True), 1e-30)
    a, b, c = ranks(
        jnp.asarray(h_q[idx]),
        jnp.asarray(items),
        jnp.asarray(wv, jnp.float32),
        jnp.asarray(s_nb, jnp.float32),
        jnp.asarray(q.target[idx]),
    )
    rb.append(np.asarray(a))
    rf.append(np.asarray(b))
    pt.append(np.asarray(c))
rb, rf, pt, hit = map(np.concatenate, (rb, rf, pt, hit))


def m(r):
    return {"hr10": float((r < 10).mean()), "ndcg10": float(np.where(r < 10, 1 / np.log2(r + 2), 0).mean())}


out = {
    "backbone": pre,
    "split": split,
    "queries": int(len(q)),
    "target_in_top50_targets": float(hit.mean()),
    "p_knn_target": float(pt.mean()),
    "backbone_alone": m(rb),
    "knn_lm_untrained_g": m(rf),
}
json.dump(out, open(out_json, "w"), indent=1)
print(json.dumps(out))
