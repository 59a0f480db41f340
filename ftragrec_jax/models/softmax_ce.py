"""Full-softmax cross-entropy over the item catalogue, computed from vectors rather than from a logits matrix.

-log softmax(x·Eᵀ)[t] = logsumexp(x·Eᵀ) - x·E[t]. Reading the target's logit as the row dot product x·E[t]
(instead of picking column t out of the [B, n_items] logits) keeps the backward pass free of a scatter into a
zero-filled [B, n_items] array. On the 2-core CPU that broadcast and scatter cost about as much as the logits
matmul itself in FTragrec's step (profiled 2026-11-28, experiments/results/2026-11-28_bench_ftragrec_cpu_ce.md).
The value equals RecBole's CE up to float32 rounding (tests/test_parity_*.py).

Large catalogues (`item_chunk_size` > 0 and below n_items): logsumexp(x·Eᵀ) is computed over item chunks with a
running maximum and sum, and its gradient chunk by chunk again from the saved result, so no [B, n_items] array
exists in the forward or the backward pass: memory is [B, chunk] plus the table's own gradient. Off by default
(item_chunk_size 0), where the whole-catalogue expression above runs unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def chunking(table, item_chunk_size: int) -> bool:
    """Whether item_chunk_size asks for item chunks on this table (> 0 and below its row count)."""
    return 0 < item_chunk_size < table.shape[0]


def logsumexp_rows(x, table, item_chunk_size: int = 0):
    """logsumexp(x @ table.T, axis=-1) [B], over item chunks when `chunking` says so."""
    if chunking(table, item_chunk_size):
        return chunked_logsumexp(x, table, item_chunk_size)
    return jax.nn.logsumexp(x @ table.T, axis=-1)


def cross_entropy_rows(x, table, target, item_chunk_size: int = 0):
    """x [B, H], table [n_items, H], target int [B] -> [B] per-row CE over all n_items (row 0 included).
    item_chunk_size > 0 and < n_items: the logsumexp runs over item chunks (`chunked_logsumexp`)."""
    target = target.astype(jnp.int32)
    return logsumexp_rows(x, table, item_chunk_size) - jnp.sum(x * table[target], axis=-1)


def softmax_mean(x, table, item_chunk_size: int = 0):
    """Σ_i softmax(x·Eᵀ)_i E[i] [B, H], the table's mean under each row's softmax; over item chunks (the
    softmax of a chunk from the whole logsumexp) when `chunking` says so. For frozen x and table: the chunked
    form has no gradient rule of its own."""
    if not chunking(table, item_chunk_size):
        return jax.nn.softmax(x @ table.T, axis=-1) @ table
    lse = chunked_logsumexp(x, table, item_chunk_size)
    parts, real = item_chunks(table, item_chunk_size)

    def body(acc, part):
        t, ok = part
        p = jnp.where(ok[None, :], jnp.exp(x @ t.T - lse[:, None]), 0.0)
        return acc + p @ t, None

    out, _ = jax.lax.scan(body, jnp.zeros_like(x), (parts, real))
    return out


def masked_cross_entropy(x, table, target, weights, item_chunk_size: int = 0):
    """Weighted mean of `cross_entropy_rows`; weight 0 drops a row (padding of the last batch)."""
    return jnp.sum(cross_entropy_rows(x, table, target, item_chunk_size) * weights) / jnp.sum(weights)


def linear_chunk_scores(state, part, start):
    """Scores of an item chunk when each row's scores are a vector times the item table: state [B, H] @ part.T.
    The (state, part [C, H], start) -> [B, C] form every chunked scorer shares (scoring.ChunkedScoreFn)."""
    del start
    return state @ part.T


def item_chunks(table, chunk: int):
    """table [N, H] -> [C, chunk, H] zero-padded, and the [C, chunk] mask of real rows."""
    n = table.shape[0]
    c = -(-n // chunk)
    padded = jnp.zeros((c * chunk, table.shape[1]), table.dtype).at[:n].set(table)
    real = (jnp.arange(c * chunk) < n).reshape(c, chunk)
    return padded.reshape(c, chunk, table.shape[1]), real


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def chunked_logsumexp(x, table, chunk: int):
    """logsumexp(x @ table.T, axis=-1) [B] over item chunks of `chunk` rows: a running max and sum in the
    forward pass, the softmax recomputed chunk by chunk in the backward pass."""
    return _chunked_lse(x, table, chunk)


def _chunked_lse(x, table, chunk: int):
    parts, real = item_chunks(table, chunk)

    def body(carry, part):
        m, s = carry
        t, ok = part
        logits = jnp.where(ok[None, :], x @ t.T, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - m_new[:, None]), axis=-1)
        return (m_new, s), None

    init = (jnp.full(x.shape[:1], -jnp.inf, x.dtype), jnp.zeros(x.shape[:1], x.dtype))
    (m, s), _ = jax.lax.scan(body, init, (parts, real))
    return m + jnp.log(s)


def _lse_fwd(x, table, chunk):
    lse = _chunked_lse(x, table, chunk)
    return lse, (x, table, lse)


def _lse_bwd(chunk, residuals, g):
    x, table, lse = residuals
    parts, real = item_chunks(table, chunk)

    def body(gx, part):
        t, ok = part
        p = jnp.where(ok[None, :], jnp.exp(x @ t.T - lse[:, None]), 0.0) * g[:, None]  # softmax chunk * g
        return gx + p @ t, p.T @ x

    gx, gt = jax.lax.scan(body, jnp.zeros_like(x), (parts, real))
    return gx, gt.reshape(-1, table.shape[1])[: table.shape[0]]


chunked_logsumexp.defvjp(_lse_fwd, _lse_bwd)
