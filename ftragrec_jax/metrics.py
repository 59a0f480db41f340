"""Top-K metrics exactly as RecBole 0.2.1 computes and rounds them (recbole/evaluator/{metrics,evaluators}.py).

Two formulations that give bit-identical per-user values for a single target:
- `topk_metrics(pos_index, pos_len)`: RecBole's own form, a boolean [N, max_k] "is the item at position j
  relevant" matrix and the number of relevant items per user (general, multi-positive);
- `single_target_metrics(rank, ks)`: the closed form when every user has one target at 1-based `rank`
  (what full-sort evaluation of next-item prediction needs; no [N, max_k] matrix).

`summarize` then averages over users the way RecBole's `np.stack(...).mean(axis=1)` does (a sequential
float64 sum, not numpy's pairwise one) and rounds with numpy's round to 4 decimals (`round(np.float64, 4)`).
A list shorter than K (K larger than the catalogue) is treated as padded with non-relevant slots:
hit/recall/MRR/NDCG stop growing and precision still divides by K.
"""

from __future__ import annotations

import numpy as np

# RecBole's names and the order its results are reported in (overall.yaml's metric list).
METRICS = ("recall", "mrr", "ndcg", "hit", "precision")
DECIMALS = 4  # RecBole's metric_decimal_place


def topk_metrics(pos_index: np.ndarray, pos_len: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user values at every cut-off 1..max_k: dict name -> float64 [N, max_k]."""
    pos_index = np.asarray(pos_index, dtype=bool)
    pos_len = np.asarray(pos_len, dtype=np.int64)
    n, max_k = pos_index.shape
    if n and pos_len.min() < 1:
        raise ValueError("pos_len must be >= 1 for every user")
    hits = np.cumsum(pos_index, axis=1)
    ranks = np.arange(1, max_k + 1, dtype=np.float64)

    first = pos_index.argmax(axis=1)
    found = pos_index[np.arange(n), first]
    mrr = np.where((np.arange(max_k)[None, :] >= first[:, None]) & found[:, None], 1.0 / (first[:, None] + 1.0), 0.0)

    discount = 1.0 / np.log2(ranks + 1.0)
    dcg = np.cumsum(np.where(pos_index, discount[None, :], 0.0), axis=1)
    ideal = np.cumsum(discount)
    idcg_len = np.minimum(pos_len, max_k)  # the ideal list holds min(|relevant|, K) relevant items
    idcg = ideal[np.minimum(np.arange(max_k)[None, :], idcg_len[:, None] - 1)]

    return {
        "recall": hits / pos_len[:, None],
        "mrr": mrr,
        "ndcg": dcg / idcg,
        "hit": (hits > 0).astype(np.float64),
        "precision": hits / ranks[None, :],
    }


def single_target_metrics(rank: np.ndarray, ks) -> dict[str, np.ndarray]:
    """Per-user values for one target at 1-based `rank`: dict name -> float64 [N, len(ks)]."""
    rank = np.asarray(rank, dtype=np.int64)
    k = np.asarray(ks, dtype=np.int64)[None, :]
    hit = (rank[:, None] <= k).astype(np.float64)
    r = rank[:, None].astype(np.float64)
    return {
        "recall": hit / 1.0,
        "mrr": np.where(hit > 0, 1.0 / r, 0.0),
        "ndcg": np.where(hit > 0, (1.0 / np.log2(r + 1.0)) / 1.0, 0.0),  # IDCG of one relevant item is 1
        "hit": hit,
        "precision": hit / k.astype(np.float64),
    }


def rank_to_pos_index(rank: np.ndarray, max_k: int) -> np.ndarray:
    """The pos_index matrix of single targets at 1-based `rank` (for checking one form against the other)."""
    rank = np.asarray(rank, dtype=np.int64)
    return np.arange(1, max_k + 1)[None, :] == rank[:, None]


def summarize(per_user: dict[str, np.ndarray], ks, columns=None, decimals: int = DECIMALS) -> dict[str, float]:
    """Mean over users and RecBole rounding; keys `recall@10`, ... in RecBole's order.
    `columns[i]` is the column of per_user holding cut-off ks[i] (default: column K-1, as from topk_metrics)."""
    ks = tuple(int(k) for k in ks)
    columns = [k - 1 for k in ks] if columns is None else list(columns)
    out = {}
    for name in METRICS:
        values = np.asarray(per_user[name], dtype=np.float64)[:, columns]
        n = values.shape[0]
        # RecBole's mean over users is a left-to-right float64 sum (cumsum gives the same order)
        means = np.cumsum(values, axis=0)[-1] / n if n else np.full(len(ks), np.nan)
        for k, m in zip(ks, means):
            out[f"{name}@{k}"] = float(np.round(np.float64(m), decimals))
    return out
