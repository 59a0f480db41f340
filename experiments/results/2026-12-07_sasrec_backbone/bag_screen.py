"""Screen: does a bag-of-items similarity add to the frozen-vector cosine in the kNN-LM vote (validation)?"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from ftragrec_jax.config import Config
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.models.knowledge_base import encode_samples, value_windows
from ftragrec_jax.train.ftragrec_task import load_pretrained_encoder

data, pre = sys.argv[1], sys.argv[2]
split = sys.argv[3] if len(sys.argv) > 3 else "valid"
betas = [float(b) for b in (sys.argv[4].split(",") if len(sys.argv) > 4 else "0,0.05,0.1,0.2,0.4".split(","))]
decay_q = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
t0 = time.time()
ds = dataset_from_config(Config(data=data))
enc, meta = load_pretrained_encoder(pre, ds)
tr, q = ds.train, getattr(ds, split)
h_kb = encode_samples(enc, tr.item_seq, tr.item_seq_len)
h_q = encode_samples(enc, q.item_seq, q.item_seq_len)
E = np.asarray(enc.item_table())
print("encoded", time.time() - t0, flush=True)


def ln_unit(h):
    x = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-12)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


n_items = ds.n_items
ntr = len(tr)
df = np.zeros(n_items)


def bag(samples, decay):
    seq = samples.item_seq
    L = samples.item_seq_len
    pos = np.arange(seq.shape[1])[None, :]
    w = np.where(pos < L[:, None], decay ** (L[:, None] - 1 - pos), 0.0)
    rows = np.repeat(np.arange(len(seq)), seq.shape[1])
    m = sp.csr_matrix((w.ravel(), (rows, seq.ravel())), shape=(len(seq), n_items))
    m.sum_duplicates()
    return m


B_kb = bag(tr, 1.0)
B_kb.data[:] = 1.0
B_q = bag(q, decay_q)
df = np.asarray((B_kb > 0).sum(0)).ravel()
idf = np.log((ntr + 1) / (df + 1))
Didf = sp.diags(idf)


def unit_rows(m):
    m = (m @ Didf).tocsr()
    n = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    return sp.diags(1 / np.maximum(n, 1e-12)) @ m


B_kb = unit_rows(B_kb).astype(np.float32).tocsr()
B_q = unit_rows(B_q).astype(np.float32).tocsr()
g_kb, g_q = ln_unit(h_kb), ln_unit(h_q)
win = value_windows(tr.target, tr.user, tr.prefix_len, 3)
K, T, A, DEC = 50, 0.07, 0.2, 0.5
wdec = DEC ** np.arange(3)


@jax.jit
def fused_rank(hq, nb_items, nb_w, s_nb, target):
    base = jax.nn.log_softmax(hq @ jnp.asarray(E).T, -1)
    p = jax.nn.softmax(s_nb / T, -1)  # [B,K]
    mass = (p[..., None] * nb_w).reshape(p.shape[0], -1)
    rows = jnp.arange(base.shape[0])[:, None]
    pk = jnp.zeros_like(base).at[rows, nb_items.reshape(p.shape[0], -1)].add(mass)
    f = jnp.logaddexp(jnp.log1p(-A) + base, jnp.log(A) + jnp.log(pk))
    st = jnp.take_along_axis(f, target[:, None], 1)
    better = (f > st).sum(-1) + ((f == st) & (jnp.arange(f.shape[1])[None] < target[:, None])).sum(-1)
    return better


res = {b: [] for b in betas}
CH = 1000
for s in range(0, len(q), CH):
    idx = np.arange(s, min(s + CH, len(q)))
    cos_h = g_q[idx] @ g_kb.T
    cos_b = (B_q[idx] @ B_kb.T).toarray()
    # exclusion: entries of the query's user at or after the query's prefix (none for valid/test)
    same = (tr.user[None, :] == q.user[idx, None]) & (tr.prefix_len[None, :] >= q.prefix_len[idx, None])
    for b in betas:
        sc = cos_h + b * cos_b
        sc[same] = -np.inf
        top = np.argpartition(-sc, K, axis=1)[:, :K]
        s_nb = np.take_along_axis(sc, top, 1)
        items = win[top]
        wv = np.where(items > 0, wdec, 0.0)
        wv = wv / np.maximum(wv.sum(-1, keepdims=True), 1e-30)
        r = fused_rank(
            jnp.asarray(h_q[idx]),
            jnp.asarray(items),
            jnp.asarray(wv, jnp.float32),
            jnp.asarray(s_nb, jnp.float32),
            jnp.asarray(q.target[idx]),
        )
        res[b].append(np.asarray(r))
    if s % 5000 == 0:
        print(s, time.time() - t0, flush=True)
out = {}
for b in betas:
    r = np.concatenate(res[b])
    np.save(f"/work/screen/ranks_{split}_b{b}_d{decay_q}.npy", r)
    out[b] = {
        "hr10": float((r < 10).mean()),
        "ndcg10": float(np.where(r < 10, 1 / np.log2(r + 2), 0).mean()),
        "hr50": float((r < 50).mean()),
    }
    print(b, out[b], flush=True)
