"""Full-softmax cross-entropy over the item catalogue, computed from vectors rather than from a logits matrix.

-log softmax(x·Eᵀ)[t] = logsumexp(x·Eᵀ) - x·E[t]. Reading the target's logit as the row dot product x·E[t]
(instead of picking column t out of the [B, n_items] logits) keeps the backward pass free of a scatter into a
zero-filled [B, n_items] array. On the 2-core CPU that broadcast and scatter cost about as much as the logits
matmul itself in FTragrec's step (profiled 2026-11-28, experiments/results/2026-11-28_bench_ftragrec_cpu_ce.md).
The value equals RecBole's CE up to float32 rounding (tests/test_parity_*.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_rows(x, table, target):
    """x [B, H], table [n_items, H], target int [B] -> [B] per-row CE over all n_items (row 0 included)."""
    target = target.astype(jnp.int32)
    return jax.nn.logsumexp(x @ table.T, axis=-1) - jnp.sum(x * table[target], axis=-1)


def masked_cross_entropy(x, table, target, weights):
    """Weighted mean of `cross_entropy_rows`; weight 0 drops a row (padding of the last batch)."""
    return jnp.sum(cross_entropy_rows(x, table, target) * weights) / jnp.sum(weights)
