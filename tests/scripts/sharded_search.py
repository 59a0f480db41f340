"""Exact search with keys sharded over 4, 3 and 2 forced CPU devices against the one-device search, FAISS Flat
and the naive reference; the tie-heavy cases have integer keys (many exactly equal scores).

Run with XLA_FLAGS=--xla_force_host_platform_device_count=4; prints one JSON line of per-case results.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from ftragrec_jax import parallel
from ftragrec_jax.models.search import FaissSearcher, Memory, retrieve
from tests.test_search import _base, _tie_heavy, naive_top_k

cases = []
for n, devices, chunk, k, ties in [
    (700, 4, 64, 5, False),
    (703, 4, 64, 5, False),
    (703, 3, 50, 5, False),
    (6, 4, 64, 5, False),
    (5, 4, 2, 5, False),
    (2000, 4, 333, 10, True),
    (6001, 2, 6001, 5, "int"),
    (6001, 4, 700, 5, "int"),
    (6001, 4, 100000, 3, "int"),
    (6001, 3, 2000, 12, "int"),
]:
    if ties == "int":  # integer keys: equal scores everywhere, and the two-stage top-k in play
        q, qu, qp, keys, user, prefix = _tie_heavy(n, n=n)
    else:
        q, qu, qp, keys, user, prefix = _base(n, n=n)
    if ties is True:  # duplicated keys: equal scores must go to the smaller id, as on one device
        keys[1000:] = keys[:1000]
    memory = Memory(
        h=jnp.asarray(keys),
        keys=jnp.asarray(keys),
        target=jnp.zeros(n, jnp.int32),
        user=jnp.asarray(user),
        prefix_len=jnp.asarray(prefix),
    )
    mesh = parallel.make_mesh(devices)
    sharded = parallel.place_step_data(memory, mesh)

    def search(query, m):
        return retrieve(query, qu, qp, m, backend="exact", top_k=k, chunk_size=chunk)

    one = np.asarray(jax.jit(search)(q, memory))
    many = np.asarray(jax.jit(search)(q, sharded))
    # ids carry no gradient, and a gradient through the sharded search is still defined (zero)
    grad = (
        float(jax.grad(lambda w: jnp.sum(search(q * w, sharded).astype(jnp.float32)))(jnp.float32(1.0)))
        if not cases
        else None
    )
    searcher = FaissSearcher("Flat", keys.shape[1], top_k=k, overfetch=2)
    searcher.build(keys, user, prefix)
    flat = searcher.search_host(q, qu, qp)
    shard_rows = sorted({s.data.shape[0] for s in sharded.keys.keys.addressable_shards})
    cases.append(
        {
            "n": n,
            "devices": devices,
            "chunk": chunk,
            "top_k": k,
            "ties": ties,
            "same_as_one_device": bool(np.array_equal(one, many)),
            "same_as_naive": bool(np.array_equal(many, naive_top_k(q, qu, qp, keys, user, prefix, k))),
            "faiss_flat_same": bool(np.array_equal(flat, many)),
            "missing": int((many < 0).sum()),
            "grad": grad,
            "keys_type": type(sharded.keys).__name__,
            "shard_rows": shard_rows,
        }
    )
print(json.dumps({"devices": jax.device_count(), "cases": cases}))
