"""Fixed-shape batches: every batch has exactly batch_size rows, so one compiled step serves the epoch."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ftragrec_jax.data.samples import SequenceSamples
from ftragrec_jax.errors import ConfigError


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: expected >= 1")
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The same order for the same (seed, epoch) on any machine and numpy version: bit generator
    streams are stable across numpy releases (Generator methods such as permutation are not)."""
    bits = np.random.PCG64(np.random.SeedSequence([int(seed) & (2**63 - 1), int(epoch)])).random_raw(n)
    return np.argsort(bits, kind="stable")


def valid_query_split(n: int, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows g is fitted on, rows kept for validation) of an n-row valid split, sorted: the held-out rows are
    the first round(holdout * n) of a fixed permutation (the same for every seed and machine), so runs with
    different seeds are selected on the same users."""
    order = epoch_permutation(n, seed=0, epoch=0)
    n_held = int(round(holdout * n))
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def last_per_user(user: np.ndarray, prefix_len: np.ndarray, n: int) -> np.ndarray:
    """bool [N]: True on each user's last n samples (the largest prefix_len), in any row order. A user with at
    most n samples has all of them marked."""
    user, prefix = np.asarray(user, np.int64), np.asarray(prefix_len, np.int64)
    out = np.zeros(len(user), bool)
    if n <= 0 or not len(user):
        return out
    order = np.lexsort((-prefix, user))  # by user, latest sample first
    u = user[order]
    first = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])  # each user's first row in `order`
    rank = np.arange(len(u)) - np.repeat(first, np.diff(np.r_[first, len(u)]))
    out[order] = rank < n
    return out


def iterate_batches(
    samples: SequenceSamples, batch_size: int, *, seed: int | None = None, epoch: int = 0, drop_last: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """Dicts of numpy arrays: the SequenceSamples fields, `index` (row in `samples`) and `mask`
    (float32, 1 = real row). A short last batch is padded with copies of its first row, mask 0."""
    n = len(samples)
    total = num_batches(n, batch_size, drop_last)
    order = np.arange(n) if seed is None else epoch_permutation(n, seed, epoch)
    for b in range(total):
        index = order[b * batch_size : (b + 1) * batch_size]
        real = len(index)
        mask = np.ones(batch_size, dtype=np.float32)
        if real < batch_size:
            index = np.concatenate([index, np.full(batch_size - real, index[0], dtype=index.dtype)])
            mask[real:] = 0.0
        batch = samples.rows(index)  # the item matrix is gathered for these rows only
        batch["index"] = index.astype(np.int64)
        batch["mask"] = mask
        yield batch
