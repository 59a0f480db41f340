"""Training/evaluation samples (prefix -> next item) and each user's chronological history."""

from __future__ import annotations

import dataclasses

import numpy as np

from ftragrec_jax.errors import DataError

FIELDS = ("item_seq", "item_seq_len", "target", "user", "prefix_len")


@dataclasses.dataclass(frozen=True)
class SequenceSamples:
    item_seq: np.ndarray  # int32 [N, max_len]: the last max_len items before the target, right-padded with 0
    item_seq_len: np.ndarray  # int32 [N], 1..max_len
    target: np.ndarray  # int32 [N], the next item
    user: np.ndarray  # int32 [N], remapped user id (1..n_users)
    prefix_len: np.ndarray  # int32 [N], UNtruncated number of items before the target

    def __post_init__(self):
        n = len(self.target)
        if self.item_seq.ndim != 2 or any(len(getattr(self, f)) != n for f in FIELDS):
            raise DataError(
                "SequenceSamples: fields must share their first dimension "
                f"({', '.join(f'{f}{getattr(self, f).shape}' for f in FIELDS)})"
            )

    def __len__(self) -> int:
        return len(self.target)

    @property
    def max_len(self) -> int:
        return self.item_seq.shape[1]

    def take(self, idx) -> "SequenceSamples":
        """Rows `idx` (an index array, a boolean mask or a slice), as a new SequenceSamples."""
        return SequenceSamples(**{f: getattr(self, f)[idx] for f in FIELDS})

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in FIELDS}


@dataclasses.dataclass(frozen=True)
class UserHistory:
    """Every user's items in chronological order, CSR by user id: user u's items are
    items[indptr[u]:indptr[u+1]] (row 0 = padding user, empty). The items before a sample's
    target are the first `prefix_len` of its user's row."""

    indptr: np.ndarray  # int64 [n_users + 2]
    items: np.ndarray  # int32 [n_interactions]

    def prefix_matrix(self, user: np.ndarray, prefix_len: np.ndarray, width: int) -> np.ndarray:
        """int32 [len(user), width]: each row's first prefix_len history items, right-padded with 0."""
        if len(user) and int(np.max(prefix_len)) > width:
            raise DataError(f"history width {width} < longest prefix {int(np.max(prefix_len))}")
        cols = np.arange(width, dtype=np.int64)
        idx = self.indptr[user].astype(np.int64)[:, None] + cols[None, :]
        valid = cols[None, :] < prefix_len[:, None]
        np.minimum(idx, max(len(self.items) - 1, 0), out=idx)
        if not len(self.items):
            return np.zeros((len(user), width), np.int32)
        return np.where(valid, self.items[idx], 0).astype(np.int32)
