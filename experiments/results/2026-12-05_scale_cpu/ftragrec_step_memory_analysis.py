"""XLA memory analysis of the compiled FTragrec step (uncached: the frozen encoder and the backbone CE run in
the step; representation fusion, usefulness objective: every whole-catalogue term) at a given catalogue size:
    python experiments/results/2026-12-05_scale_cpu/ftragrec_step_memory_analysis.py ITEMS ITEM_CHUNK_SIZE
"""
import sys, numpy as np, jax, optax
from flax import nnx
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder
from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec
from ftragrec_jax.models.knowledge_base import KnowledgeBase
from ftragrec_jax.train.steps import make_ftragrec_step
n_items, chunk = int(float(sys.argv[1])), int(sys.argv[2])
enc = build_encoder(EncoderConfig(n_items=n_items, max_seq_length=50, hidden_size=64, n_layers=2, n_heads=2, inner_size=256), 0)
hp = FTragrecHParams(retrieval_backend="exact", fusion="representation", retriever_objective="usefulness")
model = build_ftragrec(enc, hp, seed=0)
rng = np.random.default_rng(0)
n_base, B = 100_000, 256
h = rng.standard_normal((n_base, 64), dtype=np.float32)
kb = KnowledgeBase(h, rng.integers(1, n_items, n_base), np.arange(n_base) + 1, np.ones(n_base, np.int32),
                   h / np.linalg.norm(h, axis=1, keepdims=True), backend="exact", top_k=hp.search_k)
gd, params, rest = nnx.split(model, nnx.Param, ...)
tx = optax.adam(1e-3)
lens = rng.integers(1, 51, B).astype(np.int32)
batch = {"item_seq": (rng.integers(1, n_items, (B, 50)) * (np.arange(50) < lens[:, None])).astype(np.int32),
         "item_seq_len": lens, "target": rng.integers(1, n_items, B).astype(np.int32),
         "user": np.full(B, -1, np.int32), "prefix_len": lens, "mask": np.ones(B, np.float32), "index": np.arange(B, dtype=np.int32)}
step = make_ftragrec_step(gd, hp, tx, rest=rest, cached=False, item_chunk_size=chunk)
m = step.lower(params, tx.init(params), batch, kb.memory).compile().memory_analysis()
GB = 1e9
print(f"n_items {n_items} chunk {chunk}: args {m.argument_size_in_bytes/GB:.3f} GB, temp {m.temp_size_in_bytes/GB:.3f} GB, table {n_items*64*4/GB:.3f} GB, [B, n_items] float32 {B*n_items*4/GB:.3f} GB")
