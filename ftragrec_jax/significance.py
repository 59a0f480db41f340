"""Is model B's hit rate different from model A's on the same users? A paired, exact sign test.

Both models rank the same target for the same user, so the only users that carry evidence are the discordant
ones: hit@K by A and not B (`a_only`), or by B and not A (`b_only`). Under "no difference" each discordant
user is a fair coin, so the two-sided p-value is the exact binomial tail (McNemar's exact test):

    >>> sign_test_p(5, 0)       # 5 of 5 discordant users favour A: 2 * 0.5**5
    0.0625
    >>> round(sign_test_p(62, 56), 3)  # FTragrec's default vs its backbone, Sports HR@10: a 6-user gap
    0.645

Users whose ranks tie (both hit or both miss) do not enter, so no tie rule is needed.

NDCG@K is paired the same way (`paired_ndcg`): a user's NDCG@K is 1/log2(rank + 1) within the top K, else 0,
so the discordant users are those with different ranks and at least one of them within K; each counts for the
model that ranks the target higher.
"""

from __future__ import annotations

from math import comb

import numpy as np

from ftragrec_jax.metrics import single_target_metrics


def sign_test_p(a_only: int, b_only: int) -> float:
    """Exact two-sided p-value of `a_only` vs `b_only` discordant pairs (1.0 when there are none)."""
    a_only, b_only = int(a_only), int(b_only)
    if a_only < 0 or b_only < 0:
        raise ValueError(f"counts must be >= 0, got {a_only} and {b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(a_only, b_only) + 1))  # exact integers: no float underflow
    return min(1.0, 2 * tail / 2**n)


def _paired_ranks(ranks_a, ranks_b):
    a, b = np.asarray(ranks_a, np.int64), np.asarray(ranks_b, np.int64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"rank arrays must be 1-d and the same length, got {a.shape} and {b.shape}")
    if a.size and min(a.min(), b.min()) < 1:
        raise ValueError("ranks are 1-based: found a rank below 1")
    return a, b


def paired_ndcg(ranks_a, ranks_b, ks) -> list[dict]:
    """Per cut-off K: both mean NDCG@K, the users whose NDCG@K is higher under A (`a_better`) or under B
    (`b_better`), and the exact sign-test p-value over them. ranks_* as in paired_hits."""
    a, b = _paired_ranks(ranks_a, ranks_b)
    ks = [int(k) for k in ks]
    gains_a, gains_b = single_target_metrics(a, ks)["ndcg"], single_target_metrics(b, ks)["ndcg"]
    rows = []
    for i, k in enumerate(ks):
        gain_a, gain_b = gains_a[:, i], gains_b[:, i]
        a_better, b_better = int((gain_a > gain_b).sum()), int((gain_b > gain_a).sum())
        rows.append(
            {
                "k": k,
                "ndcg_a": float(gain_a.mean()) if a.size else 0.0,
                "ndcg_b": float(gain_b.mean()) if b.size else 0.0,
                "a_better": a_better,
                "b_better": b_better,
                "p_value": sign_test_p(a_better, b_better),
            }
        )
    return rows


def paired_hits(ranks_a, ranks_b, ks) -> list[dict]:
    """Per cut-off K: both hit rates, the discordant users each way and the sign-test p-value.

    ranks_*: 1-based target rank per user, same users in the same order (evaluation.sample_ranks)."""
    a, b = _paired_ranks(ranks_a, ranks_b)
    ks = [int(k) for k in ks]
    hits_a, hits_b = single_target_metrics(a, ks)["hit"] > 0, single_target_metrics(b, ks)["hit"] > 0
    rows = []
    for i, k in enumerate(ks):
        hit_a, hit_b = hits_a[:, i], hits_b[:, i]
        a_only, b_only = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
        rows.append(
            {
                "k": k,
                "hit_a": float(hit_a.mean()) if a.size else 0.0,
                "hit_b": float(hit_b.mean()) if b.size else 0.0,
                "a_only": a_only,
                "b_only": b_only,
                "p_value": sign_test_p(a_only, b_only),
            }
        )
    return rows


def pooled_sign_test(ranks_a, ranks_b_seeds, ks) -> dict:
    """Model A against model B trained with several seeds, on the same users: per "ndcg@K" and "hit@K", A's
    mean, the mean over B's seeds, and the sign test of each user's value under A against that user's mean over
    B's seeds (`a_better` / `b_better`: users whose mean is below / above A's value; equal ones carry no
    evidence). Pooling over seeds before pairing keeps one user one vote however many seeds B has.

    ranks_a: 1-based ranks [N]; ranks_b_seeds: a list of such rank arrays, one per seed of B."""
    if not len(ranks_b_seeds):
        raise ValueError("pooled_sign_test needs at least one rank array for model B")
    ks = [int(k) for k in ks]
    a = single_target_metrics(_paired_ranks(ranks_a, ranks_a)[0], ks)
    per_seed = [single_target_metrics(_paired_ranks(ranks_a, r)[1], ks) for r in ranks_b_seeds]
    out = {}
    for i, k in enumerate(ks):
        for name in ("ndcg", "hit"):
            value_a = a[name][:, i]
            mean_b = np.mean([m[name][:, i] for m in per_seed], axis=0)
            a_better = int((mean_b < value_a - 1e-12).sum())  # 1e-12: float means of equal gains may differ
            b_better = int((mean_b > value_a + 1e-12).sum())
            out[f"{name}@{k}"] = {
                "a": float(value_a.mean()) if value_a.size else 0.0,
                "b_mean": float(mean_b.mean()) if mean_b.size else 0.0,
                "a_better": a_better,
                "b_better": b_better,
                "p_value": sign_test_p(a_better, b_better),
            }
    return out
