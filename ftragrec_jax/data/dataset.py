"""RecBole's sequential preprocessing (0.2.1, the version DuoRec vendors, and 1.x, which does the same steps),
in numpy.

Steps, in RecBole's order (recbole/data/dataset/{dataset,sequential_dataset}.py):
1. duplicate removal (`rm_dup_inter` "first"/"last", off by default): RecBole sorts the table by time, then keeps
   the first or last row of each (user, item) pair; the sorted order is the order ids are then assigned in;
2. iterative k-core: users whose interaction count is outside the allowed interval(s) and items likewise
   (0.2's `min_*_inter_num`/`max_*_inter_num`, 1.x's `user_inter_num_interval`/`item_inter_num_interval`) are
   banned from the SAME counts, their interactions dropped, counts updated, repeated until nothing is banned;
3. token -> id in order of first appearance in the filtered table, file order (pandas.factorize), 0 = "[PAD]";
4. stable sort by timestamp, then stable sort by user id. Timestamps are compared as float32: RecBole turns
   float columns into torch.FloatTensor before sorting, so times closer than float32 resolution tie and keep
   file order. With `normalize_time` (RecBole's `normalize_all`, or the time field in `normalize_field`)
   timestamps are min-max scaled first, which changes those float32 ties. RecBole's bundled ml-100k settings
   turn it on for a dataset *named* ml-100k; here it is a setting, never inferred from a file's name (the
   converter reads it from the checkpoint's own config);
5. prefix augmentation: every interaction after a user's first is a target, its prefix (the last
   max_seq_length items before it) the input;
6. leave-one-out on each user's samples: last = test, second last = valid, rest train, with RecBole's
   `min(2, n_samples - 1)` rule (a user with 2 samples has train + test and no valid sample; a user with a
   single sample only trains).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from importlib import resources
from pathlib import Path

import numpy as np

from ftragrec_jax.data.readers import DEFAULT_FIELDS, Interactions, detect_format, read_interactions
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
                    f"{split} sample (leave-one-out: last item test, second-to-last valid)"
                )


def default_dataset_path() -> Path:
    """The embedded Amazon Beauty file (one line per user, gzip), see data/default/README.md."""
    return Path(str(resources.files("ftragrec_jax.data") / "default" / "Beauty.txt.gz"))


def dataset_name(path: str | os.PathLike) -> str:
    """A label for logs and results (the file name without extensions); no data decision depends on it."""
    name = Path(path).name
    for ext in (".gz", ".inter", ".txt"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


Interval = tuple[str, float, float, str]  # ("[" or "(", low, high, "]" or ")")


def parse_intervals(text: str, key: str) -> tuple[Interval, ...]:
    """RecBole 1.x interval syntax: "[5,inf)", "(0,10]", several joined by ";" (a count is kept when it lies
    in any of them). "" = no bound. Raises DataError naming `key` on anything RecBole would not parse as an
    interval (RecBole itself warns and skips such a part, which silently changes what is filtered)."""
    if text is None or str(text).strip() == "":
        return ()
    out = []
    for part in str(text).split(";"):
        part = part.strip()
        bounds = part[1:-1].split(",") if len(part) >= 2 else []
        try:
            lo, hi = (float(b) for b in bounds)
        except ValueError:
            lo = hi = None
        if (
            len(bounds) != 2
            or part[0] not in "(["
            or part[-1] not in ")]"
            or lo is None
            or math.isnan(lo)
            or math.isnan(hi)
            or lo > hi
        ):
            raise DataError(
                f"{key}={text!r}: {part!r} is not an interval; expected e.g. '[5,inf)' or "
                f"'(0,10]', several joined by ';'"
            )
        out.append((part[0], lo, hi, part[-1]))
    return tuple(out)


def min_count_interval(min_count: int) -> str:
    """RecBole 0.2's `min_*_inter_num` as an interval: `min_num or -1`, so 0 keeps every count."""
    return f"[{int(min_count)},inf)" if min_count else ""


def within(counts: np.ndarray, intervals: tuple[Interval, ...]) -> np.ndarray:
    """RecBole's _within_intervals, vectorised: True where a count lies in any interval (all, for none)."""
    if not intervals:
        return np.ones(np.shape(counts), dtype=bool)
    ok = np.zeros(np.shape(counts), dtype=bool)
    for left, lo, hi, right in intervals:
        above = counts >= lo if left == "[" else counts > lo
        below = counts <= hi if right == "]" else counts < hi
        ok |= above & below
    return ok


DUPLICATE_RULES = ("", "first", "last")


def load_dataset(
    path: str | os.PathLike,
    *,
    fmt: str = "auto",
    min_user_inter_num: int = 5,
    min_item_inter_num: int = 5,
    max_seq_length: int = 50,
    normalize_time: bool = False,
    user_inter_num_interval: str = "",
    item_inter_num_interval: str = "",
    rm_dup_inter: str = "",
    fields: tuple[str, str, str] = DEFAULT_FIELDS,
) -> SequentialDataset:
    """Read a dataset file and build RecBole's train/valid/test samples and vocabulary.

    min_user_inter_num / min_item_inter_num: RecBole 0.2's k-core (0 = off); a non-empty
    user_inter_num_interval / item_inter_num_interval (RecBole 1.x syntax, e.g. "[5,inf)") replaces them.
    normalize_time: min-max normalise timestamps before the float32 ordering (RecBole's normalize_all); it only
    changes the order of near-equal timestamps. rm_dup_inter: "" (keep duplicates), "first" or "last".
    fields: the user, item and time columns of an atomic file (RecBole's USER_ID_FIELD, ITEM_ID_FIELD,
    TIME_FIELD).
    """
    for key, val in (("min_user_inter_num", min_user_inter_num), ("min_item_inter_num", min_item_inter_num)):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < 0:
            raise DataError(f"{key}={val!r}: expected an integer >= 0")
    if not isinstance(max_seq_length, (int, np.integer)) or max_seq_length < 1:
        raise DataError(f"max_seq_length={max_seq_length!r}: expected an integer >= 1")
    if not isinstance(normalize_time, bool):
        raise DataError(f"normalize_time={normalize_time!r}: expected true or false")
    if rm_dup_inter not in DUPLICATE_RULES:
        raise DataError(f"rm_dup_inter={rm_dup_inter!r}: expected one of {list(DUPLICATE_RULES)}")
    parse_intervals(user_inter_num_interval, "user_inter_num_interval")  # fail before reading a large file
    parse_intervals(item_inter_num_interval, "item_inter_num_interval")
    if fmt == "auto":
        fmt = detect_format(path)
    inter = read_interactions(path, fmt, fields=tuple(fields))
    settings = {
        "format": fmt,
        "normalize_time": normalize_time,
        "min_user_inter_num": int(min_user_inter_num),
        "min_item_inter_num": int(min_item_inter_num),
        "user_inter_num_interval": user_inter_num_interval,
        "item_inter_num_interval": item_inter_num_interval,
        "rm_dup_inter": rm_dup_inter,
        "max_seq_length": int(max_seq_length),
        "split": "leave_one_out",
        "order": "timestamp(float32), then user",
    }
    if fmt == "atomic" and tuple(fields) != DEFAULT_FIELDS:
        settings["fields"] = list(fields)
    return build_dataset(inter, dataset_name(path), settings)


def build_dataset(inter: Interactions, name: str, settings: dict) -> SequentialDataset:
    if len(inter) == 0:
        raise DataError(f"{inter.source}: no interactions (expected at least one data line)")
    if settings.get("rm_dup_inter"):
        inter = remove_duplicates(inter, settings["rm_dup_inter"])
    intervals, named = [], []
    for who in ("user", "item"):
        key = f"{who}_inter_num_interval"
        text = settings.get(key) or min_count_interval(settings[f"min_{who}_inter_num"])
        intervals.append(parse_intervals(text, key))
        named.append(
            f"{key}={settings[key]!r}"
            if settings.get(key)
            else f"min_{who}_inter_num={settings[f'min_{who}_inter_num']}"
        )
    kept = kcore_filter(inter, *intervals) if any(intervals) else np.ones(len(inter), bool)
    if not kept.any():
        raise DataError(
            f"{inter.source}: empty after k-core filtering ({', '.join(named)}); expected users and "
            f"items with that many interactions"
        )
    if not kept.all():
        inter = inter.take(np.flatnonzero(kept))
    uid, user_first = factorize(inter.user)
    iid, item_first = factorize(inter.item)
    user_tokens, item_tokens = inter.tokens("user", user_first), inter.tokens("item", item_first)
    vocab = Vocab(item_tokens=(PAD, *item_tokens.tolist()), user_tokens=(PAD, *user_tokens.tolist()))

    ts = inter.timestamp
    if settings.get("normalize_time"):
        lo, hi = ts.min(), ts.max()
        # RecBole sets a constant column to 1.0
        ts = (ts - lo) / (hi - lo) if hi > lo else np.ones_like(ts)
    order = time_then_user_order(ts, uid)
    uid, iid = uid[order], iid[order]
    history = _history(uid, iid, len(user_tokens))
    # the samples' windows and the history share one int32 copy of the sorted items
    samples, is_train, is_valid, is_test = augment_and_split(uid, history.items, settings["max_seq_length"])
    return SequentialDataset(
        name=name,
        vocab=vocab,
        train=samples.take(is_train),
        valid=samples.take(is_valid),
        test=samples.take(is_test),
        n_items=vocab.n_items,
        n_users=len(user_tokens),
        n_interactions=len(uid),
        settings=dict(settings),
        history=history,
        source=str(inter.source),
    )


def remove_duplicates(inter: Interactions, keep: str) -> Interactions:
    """RecBole's _remove_duplication: sort by time, then keep the first or last row of each (user, item).

    RecBole sorts with pandas' default (unstable) quicksort, so rows with equal timestamps end up in an order
    that depends on the platform's sort; that order fixes which duplicate is kept and the ids assigned next.
    With tied timestamps its result cannot be reproduced, so they are refused; without ties every sort agrees."""
    n_distinct = len(np.unique(inter.timestamp))
    if n_distinct != len(inter):
        raise DataError(
            f"{inter.source}: rm_dup_inter={keep!r} with {len(inter) - n_distinct} interaction(s) sharing a "
            f"timestamp with an earlier one: RecBole sorts by time with an unstable sort before removing "
            f"duplicates, so which tied row it kept (and the item ids it assigned) cannot be reproduced; "
            f"supported only with distinct timestamps"
        )
    inter = inter.take(np.argsort(inter.timestamp, kind="stable"))
    pair = np.char.add(np.char.add(inter.user.astype(str), "\x00"), inter.item.astype(str))
    if keep == "last":
        _, last_from_end = np.unique(pair[::-1], return_index=True)
        rows = np.sort(len(pair) - 1 - last_from_end)
    else:
        _, rows = np.unique(pair, return_index=True)
        rows = np.sort(rows)
    dropped = len(inter) - len(rows)
    if dropped:
        log.info("%s: rm_dup_inter=%s dropped %d duplicate user-item interaction(s)", inter.source, keep, dropped)
    return inter.take(rows)


def kcore_filter(
    inter: Interactions, user_intervals: tuple[Interval, ...] = (), item_intervals: tuple[Interval, ...] = ()
) -> np.ndarray:
    """Boolean mask of the interactions that survive RecBole's iterative k-core: every round bans the users
    and items whose current count lies outside their intervals (no intervals: never banned)."""
    ucode, _ = factorize(inter.user)
    icode, _ = factorize(inter.item)
    ucode -= 1
    icode -= 1
    kept = np.ones(len(inter), dtype=bool)
    rounds = 0
    while True:
        ucount = np.bincount(ucode[kept], minlength=ucode.max() + 1)
        icount = np.bincount(icode[kept], minlength=icode.max() + 1)
        # only ids still present can be banned (RecBole's Counter drops ids whose count reached 0)
        ban_u = (ucount > 0) & ~within(ucount, user_intervals)
        ban_i = (icount > 0) & ~within(icount, item_intervals)
        if not ban_u.any() and not ban_i.any():
            break
        kept &= ~(ban_u[ucode] | ban_i[icode])
        rounds += 1
    dropped = len(inter) - int(kept.sum())
    if dropped:
        log.info(
            "%s: k-core filtering (users %s, items %s) dropped %d of %d interactions (%d users, %d items) in %d rounds",
            inter.source,
            _describe(user_intervals),
            _describe(item_intervals),
            dropped,
            len(inter),
            len(np.unique(ucode)) - len(np.unique(ucode[kept])),
            len(np.unique(icode)) - len(np.unique(icode[kept])),
            rounds,
        )
    return kept


def _describe(intervals: tuple[Interval, ...]) -> str:
    return ";".join(f"{a}{lo:g},{hi:g}{b}" for a, lo, hi, b in intervals) or "any count"


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
    # positions in int32 below 2**31 interactions: each [n] temporary costs half (10^8 interactions: 400 MB)
    idx_t = np.int32 if n < 2**31 else np.int64
    pos = np.arange(n, dtype=idx_t)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = uid[1:] != uid[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, pos, 0))
    is_target = ~new_user
    del new_user
    tgt = pos[is_target]
    del pos
    prefix_len = tgt - user_start[is_target]
    del user_start, is_target
    items = iid if iid.dtype == np.int32 else iid.astype(np.int32)
    samples = SequenceSamples(
        items=items,  # the windows read the sorted interactions themselves: no [N, max_len] copy
        end=tgt,
        item_seq_len=np.minimum(prefix_len, max_len).astype(np.int32),
        target=items[tgt],
        user=uid[tgt].astype(np.int32),
        prefix_len=prefix_len.astype(np.int32),
        max_len=int(max_len),
    )
    del prefix_len

    # Per user: n_s samples; RecBole leaves min(2, n_s - 1) of them out, last one to test.
    m = len(tgt)
    s_user = samples.user
    s_new = np.ones(m, dtype=bool)
    s_new[1:] = s_user[1:] != s_user[:-1]
    group_starts = np.flatnonzero(s_new).astype(idx_t)
    del s_new
    group_ends = np.append(group_starts[1:], idx_t(m))[: len(group_starts)]  # exclusive end of each user's group
    sizes = group_ends - group_starts
    from_end = np.repeat(group_ends, sizes)
    from_end -= np.arange(m, dtype=idx_t)  # 1 = last sample of the user
    leave = np.minimum(np.repeat(sizes, sizes) - 1, 2)
    is_test = (leave >= 1) & (from_end == 1)
    is_valid = (leave == 2) & (from_end == 2)
    is_train = from_end > leave
    return samples, is_train, is_valid, is_test


def dataset_from_config(cfg):
    """The dataset a run Config names ("" = the embedded Amazon Beauty file), with its data settings."""
    return load_dataset(cfg.data or default_dataset_path(), **cfg.dataset_kwargs())
