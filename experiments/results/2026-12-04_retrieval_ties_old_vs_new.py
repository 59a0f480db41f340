"""How many real Amazon Beauty queries get other neighbours from the exact backend before (24c8bff) and after the
tie and rerank change. Random-init DuoRec encoder (seed 0) and the initial g; base = the training split.

    mkdir -p /tmp/oldret && git show 24c8bff:ftragrec_jax/models/retrieval.py > /tmp/oldret/old_retrieval.py
    python experiments/results/2026-12-04_retrieval_ties_old_vs_new.py
"""
import sys, json
import numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, "/tmp/oldret")
import old_retrieval as old
from ftragrec_jax.models import retrieval as new
from ftragrec_jax.data.dataset import default_dataset_path, load_dataset
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder
from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec
from ftragrec_jax.models.knowledge_base import KnowledgeBase, compute_keys, encode_samples

ds = load_dataset(default_dataset_path())
enc = build_encoder(EncoderConfig(n_items=ds.n_items), seed=0)
model = build_ftragrec(enc, FTragrecHParams(retrieval_backend="exact"), seed=0)
kb = KnowledgeBase.build(model.encoder, model.retriever, ds.train, backend="exact", top_k=5)
out = {}
for split in ("valid", "test"):
    sp = getattr(ds, split)
    q = compute_keys(model.retriever, encode_samples(model.encoder, np.asarray(sp.item_seq), np.asarray(sp.item_seq_len)))
    qu, qp = np.asarray(sp.user, np.int32), np.asarray(sp.prefix_len, np.int32)
    for k in (5, 20, 50):
        fo = jax.jit(lambda *a: old.exact_search(*a, top_k=k)[0])
        fn = jax.jit(lambda *a: new.exact_search(*a, top_k=k)[0])
        a, b = [], []
        for s in range(0, len(q), 2048):
            args = (q[s:s+2048], qu[s:s+2048], qp[s:s+2048], kb.keys, kb.user, kb.prefix_len)
            a.append(np.asarray(fo(*args))); b.append(np.asarray(fn(*args)))
        a, b = np.concatenate(a), np.concatenate(b)
        ordered = float((a != b).any(1).mean())
        as_set = float(np.mean([set(x) != set(y) for x, y in zip(a, b)]))
        tgt_set = float(np.mean([sorted(kb.target[x]) != sorted(kb.target[y]) for x, y in zip(a, b)]))
        out[f"{split}_k{k}"] = {"queries": len(q), "order_differs": ordered, "set_differs": as_set,
                                "target_multiset_differs": tgt_set}
        print(split, k, out[f"{split}_k{k}"], flush=True)
print(json.dumps(out))
