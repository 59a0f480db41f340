"""Training/evaluation samples (prefix -> next item) and each user's chronological history.

A sample is a window on its user's history, not a copy: it stores where its target sits in the flat history
(`end`) and how many items before it it keeps (`item_seq_len`), so N samples cost 20 bytes each (24 from 2**31
interactions) beside the history's 4 bytes per interaction, instead of 4 * max_len bytes each. The
[rows, max_len] item matrix is gathered only for the rows a batch or a chunk needs (`rows`, `sequences`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ftragrec_jax.errors import DataError

FIELDS = ("item_seq", "item_seq_len", "target", "user", "prefix_len")
_PER_SAMPLE = ("end", "item_seq_len", "target", "user", "prefix_len")


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
        end = self.indptr[user].astype(np.int64) + np.asarray(prefix_len, np.int64)
        return gather_windows(self.items, end, prefix_len, width)


def gather_windows(items: np.ndarray, end: np.ndarray, length: np.ndarray, width: int) -> np.ndarray:
    """int32 [len(end), width]: row r = items[end[r] - length[r] : end[r]], right-padded with 0."""
    out = np.zeros((len(end), width), np.int32)
    if not len(end) or not len(items):
        return out
    cols = np.arange(width, dtype=np.int64)
    start = np.asarray(end, np.int64) - np.asarray(length, np.int64)
    idx = start[:, None] + cols[None, :]
    keep = cols[None, :] < np.asarray(length)[:, None]
    np.clip(idx, 0, len(items) - 1, out=idx)
    np.copyto(out, items[idx], where=keep)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceSamples:
    """Samples as windows on `items`: sample i's sequence is items[end[i] - item_seq_len[i] : end[i]] (the last
    item_seq_len items before its target, at most max_len), right-padded with 0 to max_len."""

    items: np.ndarray  # int32 [M]: the histories the windows read (a dataset's UserHistory.items, shared)
    end: np.ndarray  # int32 [N] (int64 from 2**31 items): position in `items` just after the window
    item_seq_len: np.ndarray  # int32 [N], 1..max_len
    target: np.ndarray  # int32 [N], the next item
    user: np.ndarray  # int32 [N], remapped user id (1..n_users)
    prefix_len: np.ndarray  # int32 [N], UNtruncated number of items before the target
    max_len: int

    def __post_init__(self):
        n = len(self.target)
        if any(np.ndim(getattr(self, f)) != 1 or len(getattr(self, f)) != n for f in _PER_SAMPLE):
            raise DataError(
                "SequenceSamples: per-sample fields must be 1-d of one length "
                f"({', '.join(f'{f}{np.shape(getattr(self, f))}' for f in _PER_SAMPLE)})"
            )
        if n and (int(np.max(self.item_seq_len)) > self.max_len or int(np.min(self.end - self.item_seq_len)) < 0):
            raise DataError(f"SequenceSamples: a window is longer than max_len={self.max_len} or starts before 0")
        if n and int(np.max(self.end)) > len(self.items):
            raise DataError(f"SequenceSamples: a window ends at {int(np.max(self.end))} > {len(self.items)} items")

    @classmethod
    def from_matrix(cls, item_seq, item_seq_len, target, user, prefix_len) -> "SequenceSamples":
        """Samples given as an explicit right-padded [N, L] matrix (a file of sequences, tests): each row
        becomes its own stretch of `items`."""
        item_seq = np.asarray(item_seq, np.int32)
        if item_seq.ndim != 2:
            raise DataError(f"SequenceSamples.from_matrix: item_seq of shape {item_seq.shape}, expected [N, L]")
        length = np.asarray(item_seq_len, np.int32)
        if len(length) != len(item_seq):
            raise DataError(f"SequenceSamples.from_matrix: {len(item_seq)} rows but {len(length)} lengths")
        if len(length) and (length.min() < 0 or length.max() > item_seq.shape[1]):
            raise DataError(f"SequenceSamples.from_matrix: lengths must lie in 0..{item_seq.shape[1]}")
        keep = np.arange(item_seq.shape[1])[None, :] < length[:, None]
        return cls(
            items=item_seq[keep],
            end=np.cumsum(length, dtype=np.int64 if length.sum() >= 2**31 else np.int32),
            item_seq_len=length,
            target=np.asarray(target, np.int32),
            user=np.asarray(user, np.int32),
            prefix_len=np.asarray(prefix_len, np.int32),
            max_len=int(item_seq.shape[1]),
        )

    def __len__(self) -> int:
        return len(self.target)

    def sequences(self, idx=slice(None)) -> np.ndarray:
        """int32 [rows, max_len]: the windows of rows `idx` (an index array, a boolean mask or a slice)."""
        return gather_windows(self.items, self.end[idx], self.item_seq_len[idx], self.max_len)

    @property
    def item_seq(self) -> np.ndarray:
        """Every window as one [N, max_len] matrix: gathered on each access (batches use `rows`)."""
        return self.sequences()

    def rows(self, idx) -> dict[str, np.ndarray]:
        """FIELDS of rows `idx`, the item matrix gathered for those rows only."""
        out = {f: getattr(self, f)[idx] for f in FIELDS[1:]}
        return {"item_seq": self.sequences(idx), **out}

    def take(self, idx) -> "SequenceSamples":
        """Rows `idx` (an index array, a boolean mask or a slice), as new samples on the same `items`."""
        return dataclasses.replace(self, **{f: getattr(self, f)[idx] for f in _PER_SAMPLE})

    def as_dict(self) -> dict[str, np.ndarray]:
        return self.rows(slice(None))

    def nbytes(self) -> int:
        """Host bytes of the per-sample arrays (the shared `items` not counted)."""
        return int(sum(getattr(self, f).nbytes for f in _PER_SAMPLE))
