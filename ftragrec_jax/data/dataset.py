"""RecBole 0.2.1's sequential preprocessing (the version DuoRec vendors), in numpy.

Steps, in RecBole's order (recbole/data/dataset/{dataset,sequential_dataset}.py):
1. iterative k-core: users with < min_user_inter_num and items with < min_item_inter_num interactions are
   banned from the SAME counts, their interactions dropped, counts updated, repeated until nothing is banned;
2. token -> id in order of first appearance in the filtered table, file order (pandas.factorize), 0 = "[PAD]";
3. stable sort by timestamp, then stable sort by user id. Timestamps are compared as float32: RecBole turns
   float columns into torch.FloatTensor before sorting, so times closer than float32 resolution tie and keep
   file order. For a dataset named "ml-100k" RecBole first min-max normalises float columns (its bundled
   properties/dataset/ml-100k.yaml sets normalize_all: True), which changes those float32 ties: with
   normalize_time=None we follow that rule by name, as RecBole does;
4. prefix augmentation: every interaction after a user's first is a target, its prefix (the last
   max_seq_length items before it) the input;
5. leave-one-out on each user's samples: last = test, second last = valid, rest train, with RecBole's
   `min(2, n_samples - 1)` rule (a user with 2 samples has train + test and no valid sample; a user with a
   single sample only trains).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from importlib import resources
from pathlib import Path

import numpy as np

from ftragrec_jax.data.readers import Interactions, detect_format, read_interactions
from ftragrec_jax.data.samples import SequenceSamples, UserHistory
from ftragrec_jax.data.vocab import PAD, Vocab
from ftragrec_jax.errors import DataError

log = logging.getLogger("ftragrec_jax")


@dataclasses.dataclass(frozen=True)
class SequentialDataset:
    name: str
    vocab: Vocab
    train: SequenceSamples
    valid: SequenceSamples
    test: SequenceSamples
    n_items: int  # rows of the item table, padding included (= vocab.n_items, RecBole's item_num)
    n_users: int  # real users, padding excluded
    n_interactions: int  # after filtering
    settings: dict  # the options used, stored with every model and result
    history: UserHistory  # all items of every user, chronological (for history masking)
    source: str = ""  # the file read, for messages

    def require_samples(self, *splits: str) -> None:
        """DataError naming the file if a split a run needs is empty: training evaluates valid every epoch and
        both splits at the end, so an empty split must stop the run before its first epoch, not after."""
        need = {"train": 2, "test": 3, "valid": 4}
        for split in splits:
            if len(getattr(self, split)) == 0:
                raise DataError(
                    f"{self.source or self.name}: no {split} samples ({self.n_users} users, {self.n_interactions} "
                    f"interactions after filtering): a user needs at least {need[split]} interactions to have a "
                    f"{split} sample (leave-one-out: last item test, second-to-last valid)")


def default_dataset_path() -> Path:
    """The embedded Amazon Beauty file (one line per user, gzip), see data/default/README.md."""
    return Path(str(resources.files("ftragrec_jax.data") / "default" / "Beauty.txt.gz"))


def dataset_name(path: str | os.PathLike) -> str:
    name = Path(path).name
    for ext in (".gz", ".inter", ".txt"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


def load_dataset(path: str | os.PathLike, *, fmt: str = "auto", min_user_inter_num: int = 5,
                 min_item_inter_num: int = 5, max_seq_length: int = 50,
                 normalize_time: bool | None = None) -> SequentialDataset:
    """Read a dataset file and build RecBole 0.2.1's train/valid/test samples and vocabulary.

    normalize_time: min-max normalise timestamps before the float32 ordering; None = RecBole 0.2.1's
    default (only for a dataset named "ml-100k"). It only changes the order of near-equal timestamps.
    """
    for key, val in (("min_user_inter_num", min_user_inter_num), ("min_item_inter_num", min_item_inter_num)):
        if not isinstance(val, (int, np.integer)) or val < 0:
            raise DataError(f"{key}={val!r}: expected an integer >= 0")
    if not isinstance(max_seq_length, (int, np.integer)) or max_seq_length < 1:
        raise DataError(f"max_seq_length={max_seq_length!r}: expected an integer >= 1")
    if fmt == "auto":
        fmt = detect_format(path)
    inter = read_interactions(path, fmt)
    name = dataset_name(path)
    if normalize_time is None:
        normalize_time = name == "ml-100k"
    settings = {"format": fmt, "normalize_time": bool(normalize_time), "min_user_inter_num": int(min_user_inter_num),
                "min_item_inter_num": int(min_item_inter_num), "max_seq_length": int(max_seq_length),
                "split": "leave_one_out", "order": "timestamp(float32), then user"}
    return build_dataset(inter, name, settings)


def build_dataset(inter: Interactions, name: str, settings: dict) -> SequentialDataset:
    if len(inter) == 0:
        raise DataError(f"{inter.source}: no interactions (expected at least one data line)")
    kept = kcore_filter(inter, settings["min_user_inter_num"], settings["min_item_inter_num"])
    if not kept.any():
        raise DataError(f"{inter.source}: empty after k-core filtering (min_user_inter_num="
                        f"{settings['min_user_inter_num']}, min_item_inter_num={settings['min_item_inter_num']}); "
                        f"expected users and items with at least that many interactions")
    inter = inter.take(np.flatnonzero(kept))
    uid, user_tokens = factorize(inter.user)
    iid, item_tokens = factorize(inter.item)
    vocab = Vocab(item_tokens=(PAD, *item_tokens.tolist()), user_tokens=(PAD, *user_tokens.tolist()))

    ts = inter.timestamp
    if settings.get("normalize_time"):
        lo, hi = ts.min(), ts.max()
        # RecBole sets a constant column to 1.0
        ts = (ts - lo) / (hi - lo) if hi > lo else np.ones_like(ts)
    order = time_then_user_order(ts, uid)
    uid, iid = uid[order], iid[order]
    history = _history(uid, iid, len(user_tokens))
    samples, is_train, is_valid, is_test = augment_and_split(uid, iid, settings["max_seq_length"])
    return SequentialDataset(
        name=name, vocab=vocab,
        train=samples.take(is_train), valid=samples.take(is_valid), test=samples.take(is_test),
        n_items=vocab.n_items, n_users=len(user_tokens), n_interactions=len(uid),
        settings=dict(settings), history=history, source=str(inter.source))


def kcore_filter(inter: Interactions, min_user: int, min_item: int) -> np.ndarray:
    """Boolean mask of the interactions that survive RecBole's iterative k-core."""
    ucode, _ = factorize(inter.user)
    icode, _ = factorize(inter.item)
    ucode -= 1
    icode -= 1
    kept = np.ones(len(inter), dtype=bool)
    # RecBole: `min_num or -1`, so 0 disables the bound.
    min_user = min_user or -1
    min_item = min_item or -1
    rounds = 0
    while True:
        ucount = np.bincount(ucode[kept], minlength=ucode.max() + 1)
        icount = np.bincount(icode[kept], minlength=icode.max() + 1)
        # only ids still present can be banned (RecBole's Counter drops ids whose count reached 0)
        ban_u = (ucount > 0) & (ucount < min_user)
        ban_i = (icount > 0) & (icount < min_item)
        if not ban_u.any() and not ban_i.any():
            break
        kept &= ~(ban_u[ucode] | ban_i[icode])
        rounds += 1
    dropped = len(inter) - int(kept.sum())
    if dropped:
        log.info("%s: k-core filtering (min_user_inter_num=%d, min_item_inter_num=%d) dropped %d of %d "
                 "interactions (%d users, %d items) in %d rounds", inter.source, max(min_user, 0),
                 max(min_item, 0), dropped, len(inter),
                 len(np.unique(ucode)) - len(np.unique(ucode[kept])),
                 len(np.unique(icode)) - len(np.unique(icode[kept])), rounds)
    return kept


def factorize(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes 1..K, uniques in order of first appearance), like pandas.factorize with codes + 1."""
    uniq, first, inverse = np.unique(tokens, return_index=True, return_inverse=True)
    by_first = np.argsort(first, kind="stable")
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[by_first] = np.arange(len(uniq))
    return (rank[inverse.reshape(-1)] + 1).astype(np.int64), uniq[by_first]


def time_then_user_order(timestamp: np.ndarray, uid: np.ndarray) -> np.ndarray:
    """RecBole's Interaction.sort(by=[user, time]): stable argsort on time (as float32), then on user."""
    by_time = np.argsort(timestamp.astype(np.float32), kind="stable")
    by_user = np.argsort(uid[by_time], kind="stable")
    return by_time[by_user]


def _history(uid: np.ndarray, iid: np.ndarray, n_users: int) -> UserHistory:
    counts = np.bincount(uid, minlength=n_users + 1)
    indptr = np.zeros(n_users + 2, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return UserHistory(indptr=indptr, items=iid.astype(np.int32))


def augment_and_split(uid: np.ndarray, iid: np.ndarray, max_len: int):
    """Prefix samples of interactions sorted by (user, time), and the train/valid/test masks over them."""
    n = len(uid)
    pos = np.arange(n, dtype=np.int64)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = uid[1:] != uid[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, pos, 0))
    is_target = ~new_user
    tgt = pos[is_target]
    prefix_len = tgt - user_start[is_target]
    start = np.maximum(user_start[is_target], tgt - max_len)
    seq_len = tgt - start
    # int32 index arithmetic and in-place ops: ML-1M has ~1M samples x 50 positions
    idx_t = np.int32 if n < 2**31 else np.int64
    cols = np.arange(max_len, dtype=idx_t)
    gather = start.astype(idx_t)[:, None] + cols[None, :]
    np.minimum(gather, n - 1, out=gather)
    item_seq = iid.astype(np.int32)[gather]
    item_seq[cols[None, :] >= seq_len.astype(idx_t)[:, None]] = 0
    del gather
    samples = SequenceSamples(item_seq=item_seq, item_seq_len=seq_len.astype(np.int32),
                              target=iid[tgt].astype(np.int32), user=uid[tgt].astype(np.int32),
                              prefix_len=prefix_len.astype(np.int32))

    # Per user: n_s samples; RecBole leaves min(2, n_s - 1) of them out, last one to test.
    m = len(tgt)
    s_user = uid[tgt]
    s_new = np.ones(m, dtype=bool)
    s_new[1:] = s_user[1:] != s_user[:-1]
    group_starts = np.flatnonzero(s_new)
    sizes = np.diff(np.append(group_starts, m))
    s_start = np.repeat(group_starts, sizes)
    s_end = s_start + np.repeat(sizes, sizes)  # exclusive end of each sample's user group
    n_s = s_end - s_start
    from_end = s_end - np.arange(m)  # 1 = last sample of the user
    leave = np.minimum(2, n_s - 1)
    is_test = (leave >= 1) & (from_end == 1)
    is_valid = (leave == 2) & (from_end == 2)
    is_train = from_end > leave
    return samples, is_train, is_valid, is_test
