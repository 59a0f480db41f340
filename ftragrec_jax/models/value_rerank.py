"""The value-aware reranker of FTragrec (value_rerank): the retrieval score of entry j becomes

    score_j = cos_j + u_j,   u_j = (W s)·E[t_j],

s the query's frozen representation, E[t_j] the frozen embedding of the entry's target, W [H, H] trained.
u_j is the part of the score the cosine cannot express: how well the entry's *next item* suits this query, in
a bilinear form the frozen backbone's own logit s·E[t_j] is one point of (W = I). W starts at zero, so the
untrained model retrieves exactly as the design does.

The search itself stays a cosine search (an index of keys cannot hold a query-dependent u): the backend returns
the `retriever_pool` best entries by cosine, and the fused top_k are the pool's best by score_j, ties to the
smaller id (`order_pool`). Parameter path: reranker.kernel; it trains with the retriever (optim.TRAINABLE), also
when `freeze_retriever` keeps g at its initialisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class ValueReranker(nnx.Module):
    """u [B, k] = (s·W)·E[t_j] from s [B, H] and the entries' target embeddings target_emb [B, k, H]."""

    def __init__(self, hidden_size: int):
        self.kernel = nnx.Param(jnp.zeros((hidden_size, hidden_size), jnp.float32))

    def __call__(self, seq_output, target_emb):
        return jnp.einsum("bh,bkh->bk", seq_output @ self.kernel[...], target_emb)


def order_pool(score, ids):
    """ids [B, P] (-1 = none) ordered by score [B, P] descending, ties to the smaller id, invalid ids last.
    The order is a selection: it carries no gradient."""
    score = jax.lax.stop_gradient(score)
    valid = ids >= 0
    primary = jnp.where(valid, -score, jnp.inf)
    secondary = jnp.where(valid, ids, jnp.iinfo(jnp.int32).max)
    order = jnp.lexsort((secondary, primary), axis=-1)
    return jnp.take_along_axis(ids, order, axis=-1)
