"""retrieval: exact, FAISS Flat and IVF search of clustered keys, with recall against exact."""

from __future__ import annotations

import numpy as np

import experiments.benchlib as benchlib
from experiments.benches.context import Context, ivf_factory


def clustered_keys(n: int, dim: int, rng, n_clusters: int = 256) -> np.ndarray:
    """Unit vectors around random centres: nearest-neighbour structure like encoded sequences, unlike
    uniform noise (on which any IVF index has poor recall)."""
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, n_clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(ids: np.ndarray, ref: np.ndarray) -> float:
    hits = [len(set(r[r >= 0]) & set(e[e >= 0])) / max((e >= 0).sum(), 1) for r, e in zip(ids, ref)]
    return float(np.mean(hits))


def bench_retrieval(ctx: Context) -> list[dict]:
    """Search only: B queries over N keys with the exclusion rule, exact in-graph vs FAISS through the
    callback, against a direct host FAISS Flat call (what the PyTorch reference does, minus its per-row
    Python filter)."""
    import jax
    import jax.numpy as jnp

    from ftragrec_jax.models.search import FaissSearcher, exact_search, faiss_search

    a = ctx.args
    dim, k = 64, a.top_k
    out = []
    for n in a.kb:
        rng = np.random.default_rng(a.seed + n)
        keys = clustered_keys(n, dim, rng)
        users = rng.integers(1, max(2, n // 6), n).astype(np.int32)
        prefix = rng.integers(1, 20, n).astype(np.int32)
        q = clustered_keys(a.batch, dim, rng)
        qu = users[rng.integers(0, n, a.batch)]  # queries of users present in the base: exclusion applies
        qp = rng.integers(1, 20, a.batch).astype(np.int32)
        dq, dqu, dqp = jnp.asarray(q), jnp.asarray(qu), jnp.asarray(qp)
        dkeys, dusers, dprefix = jnp.asarray(keys), jnp.asarray(users), jnp.asarray(prefix)

        exact = jax.jit(lambda q_, u_, p_, kk, eu, ep: exact_search(q_, u_, p_, kk, eu, ep, top_k=k)[0])
        flat = FaissSearcher("Flat", dim, top_k=k)
        flat.build(keys, users, prefix)
        ivf_name = ivf_factory(n)
        ivf = FaissSearcher(ivf_name, dim, top_k=k, nprobe=16)
        ivf_build_s = ivf.build(keys, users, prefix)
        cb_flat = jax.jit(lambda q_, u_, p_: faiss_search(flat, q_, u_, p_))
        cb_ivf = jax.jit(lambda q_, u_, p_: faiss_search(ivf, q_, u_, p_))
        ids = {}

        def timed(name, fn):
            def run():
                ids[name] = jax.block_until_ready(fn())

            return run

        sides = [
            benchlib.Side(
                "host faiss Flat (direct call)",
                "cpu (faiss)",
                timed("host", lambda: flat.search_host(q, qu, qp)),
                reference=True,
            ),
            benchlib.Side(
                "jax exact (in-graph)",
                ctx.jax_device,
                timed("exact", lambda: exact(dq, dqu, dqp, dkeys, dusers, dprefix)),
                compiled=True,
            ),
            benchlib.Side(
                "jax faiss Flat (callback)",
                ctx.jax_device + " + host faiss",
                timed("flat", lambda: cb_flat(dq, dqu, dqp)),
                compiled=True,
            ),
            benchlib.Side(
                f"jax faiss {ivf_name} nprobe 16 (callback)",
                ctx.jax_device + " + host faiss",
                timed("ivf", lambda: cb_ivf(dq, dqu, dqp)),
                compiled=True,
            ),
        ]
        timings = benchlib.compare(sides, a.repeats)
        ref = np.asarray(ids["exact"]) if "exact" in ids else None
        recalls = {}
        for t, key in zip(timings, ("host", "exact", "flat", "ivf")):
            if ref is not None and key in ids:
                recalls[t.side] = recall(np.asarray(ids[key]), ref)
                t.note = f"recall@{k} vs exact {recalls[t.side]:.3f}"
        if "ivf" in ids:
            timings[3].note += f"; index build {ivf_build_s:.2f}s"
        rows = benchlib.rows("retrieval", f"{a.batch} queries x {n} keys, top_k={k}", timings, kb=n)
        for r in rows:
            r["recall_vs_exact"] = recalls.get(r["side"])
        out += rows
    return out
