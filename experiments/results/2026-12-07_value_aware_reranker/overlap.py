"""How much training g changes WHICH entries are retrieved: for each query, the overlap of the trained g's top-50
training entries with the untrained g's (g = LN(h)), and how often each top-50 holds an entry whose target is the
query's own next item. Exact search, the library's exclusion rule (same-user entries at or after the query's
prefix). Memory: 500 queries at a time."""

import json
import sys

import jax.numpy as jnp
import numpy as np

from ftragrec_jax.config import Config
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.model_dir import load_model
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder
from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec
from ftragrec_jax.models.knowledge_base import encode_samples
from ftragrec_jax.models.retriever import embed
from ftragrec_jax.trees import assign_params

data, out_json, *models = sys.argv[1:]
ds = dataset_from_config(Config(data=data))
tr = ds.train
K = 50
out = {"k": K, "models": {}}
for path in models:
    meta, params, _ = load_model(path)
    hp = FTragrecHParams.from_config(meta["ftragrec"])
    model = build_ftragrec(build_encoder(EncoderConfig(**meta["encoder"]), seed=0), hp, seed=0)
    assign_params(model, params, path)
    h_kb = np.asarray(encode_samples(model.encoder, tr.item_seq, tr.item_seq_len))

    def ln_unit(h):
        x = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-12)
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    def g(h):
        return np.asarray(embed(model.retriever, jnp.asarray(h)))

    k_un, k_tr = ln_unit(h_kb), np.concatenate([g(h_kb[i : i + 8192]) for i in range(0, len(h_kb), 8192)])
    res = {}
    for split in ("valid", "test"):
        q = getattr(ds, split)
        h_q = np.asarray(encode_samples(model.encoder, q.item_seq, q.item_seq_len))
        q_un, q_tr = ln_unit(h_q), g(h_q)
        ov, hit_un, hit_tr, only_tr_hit, only_un_hit = [], [], [], [], []
        for s in range(0, len(q), 500):
            idx = np.arange(s, min(s + 500, len(q)))
            same = (tr.user[None, :] == q.user[idx, None]) & (tr.prefix_len[None, :] >= q.prefix_len[idx, None])
            tops = []
            for qq, kk in ((q_un, k_un), (q_tr, k_tr)):
                sc = qq[idx] @ kk.T
                sc[same] = -np.inf
                tops.append(np.argpartition(-sc, K, axis=1)[:, :K])
                del sc
            a, b = tops
            ov.append(np.array([len(np.intersect1d(x, y)) for x, y in zip(a, b)]) / K)
            ha = (tr.target[a] == q.target[idx, None]).any(1)
            hb = (tr.target[b] == q.target[idx, None]).any(1)
            hit_un.append(ha)
            hit_tr.append(hb)
        ov, hit_un, hit_tr = map(np.concatenate, (ov, hit_un, hit_tr))
        res[split] = {
            "queries": int(len(ov)),
            "mean_overlap": float(ov.mean()),
            "overlap_quartiles": [float(x) for x in np.percentile(ov, [25, 50, 75])],
            "target_in_top50_untrained": float(hit_un.mean()),
            "target_in_top50_trained": float(hit_tr.mean()),
            "only_trained_has_target": int((hit_tr & ~hit_un).sum()),
            "only_untrained_has_target": int((hit_un & ~hit_tr).sum()),
        }
        print(path, split, json.dumps(res[split]), flush=True)
    out["models"][path] = res
json.dump(out, open(out_json, "w"), indent=1)
