"""The paired sign test against brute force over every outcome, and paired_hits against a per-user loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ftragrec_jax.significance import paired_hits, paired_ndcg, pooled_sign_test, sign_test_p


def brute_force_p(a_only: int, b_only: int) -> float:
    """P(a split at least as uneven as the observed one) over all 2^n equally likely discordant outcomes."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    observed = abs(a_only - b_only)
    extreme = sum(abs(2 * sum(bits) - n) >= observed for bits in itertools.product((0, 1), repeat=n))
    return extreme / 2**n


@pytest.mark.parametrize(
    "a_only,b_only", [(0, 0), (1, 0), (0, 1), (3, 3), (5, 0), (0, 7), (2, 9), (6, 5), (4, 8), (10, 2)]
)
def test_sign_test_matches_brute_force(a_only, b_only):
    assert sign_test_p(a_only, b_only) == pytest.approx(brute_force_p(a_only, b_only), abs=1e-12)
    assert sign_test_p(a_only, b_only) == sign_test_p(b_only, a_only)  # two-sided: symmetric


def test_sign_test_large_counts_stay_finite_and_ordered():
    # 2**n overflows floats past n ~ 1024; the exact integer tail does not
    assert 0 < sign_test_p(600, 500) < sign_test_p(560, 540) < 1
    assert sign_test_p(2000, 2000) == 1.0
    with pytest.raises(ValueError, match="counts must be >= 0"):
        sign_test_p(-1, 3)


def test_paired_hits_against_a_per_user_loop():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 40, size=500)
    b = np.where(rng.random(500) < 0.3, rng.integers(1, 40, size=500), a)  # mostly the same ranks
    rows = paired_hits(a, b, (1, 5, 10, 20))
    for row in rows:
        k = row["k"]
        a_only = sum(1 for x, y in zip(a, b) if x <= k and not y <= k)
        b_only = sum(1 for x, y in zip(a, b) if y <= k and not x <= k)
        assert (row["a_only"], row["b_only"]) == (a_only, b_only)
        assert row["hit_a"] == pytest.approx(sum(x <= k for x in a) / 500)
        assert row["hit_b"] - row["hit_a"] == pytest.approx((b_only - a_only) / 500)
        assert row["p_value"] == sign_test_p(a_only, b_only)
    same = paired_hits(a, a, (10,))[0]
    assert (same["a_only"], same["b_only"], same["p_value"]) == (0, 0, 1.0)


def test_paired_ndcg_against_a_per_user_loop():
    rng = np.random.default_rng(1)
    a = rng.integers(1, 40, size=500)
    b = np.where(rng.random(500) < 0.3, rng.integers(1, 40, size=500), a)
    for row in paired_ndcg(a, b, (1, 5, 10, 20)):
        k = row["k"]
        gain = lambda r: 1.0 / np.log2(r + 1) if r <= k else 0.0  # noqa: E731
        a_better = sum(1 for x, y in zip(a, b) if gain(x) > gain(y))
        b_better = sum(1 for x, y in zip(a, b) if gain(y) > gain(x))
        assert (row["a_better"], row["b_better"]) == (a_better, b_better)
        assert row["ndcg_a"] == pytest.approx(np.mean([gain(x) for x in a]))
        assert row["ndcg_b"] == pytest.approx(np.mean([gain(y) for y in b]))
        assert row["p_value"] == sign_test_p(a_better, b_better)
    # a rank change within the top K counts; one outside it (11 -> 30 at K 10) does not
    row = paired_ndcg([3, 11, 1], [2, 30, 1], (10,))[0]
    assert (row["a_better"], row["b_better"]) == (0, 1)
    with pytest.raises(ValueError, match="1-based"):
        paired_ndcg([0, 2], [1, 2], (5,))


def test_paired_hits_rejects_unpaired_or_zero_based_ranks():
    with pytest.raises(ValueError, match="same length"):
        paired_hits([1, 2, 3], [1, 2], (5,))
    with pytest.raises(ValueError, match="1-based"):
        paired_hits([0, 2], [1, 2], (5,))


def test_pooled_sign_test_against_a_per_user_loop():
    rng = np.random.default_rng(2)
    a = rng.integers(1, 30, size=400)
    seeds = [np.where(rng.random(400) < 0.4, rng.integers(1, 30, size=400), a) for _ in range(3)]
    out = pooled_sign_test(a, seeds, (5, 10))
    assert sorted(out) == ["hit@10", "hit@5", "ndcg@10", "ndcg@5"]
    for k in (5, 10):
        for name, gain in (
            ("ndcg", lambda r, k=k: 1.0 / np.log2(r + 1) if r <= k else 0.0),
            ("hit", lambda r, k=k: float(r <= k)),
        ):
            mean_b = [np.mean([gain(s[u]) for s in seeds]) for u in range(len(a))]
            a_better = sum(1 for u in range(len(a)) if mean_b[u] < gain(a[u]) - 1e-12)
            b_better = sum(1 for u in range(len(a)) if mean_b[u] > gain(a[u]) + 1e-12)
            row = out[f"{name}@{k}"]
            assert (row["a_better"], row["b_better"]) == (a_better, b_better)
            assert a_better + b_better > 0
            assert row["a"] == pytest.approx(np.mean([gain(r) for r in a]))
            assert row["b_mean"] == pytest.approx(np.mean(mean_b))
            assert row["p_value"] == sign_test_p(a_better, b_better)
    # one seed equal to A and one that moves a user: the user counts once, by the mean over the seeds
    row = pooled_sign_test([1, 4], [[1, 4], [2, 4]], (10,))["ndcg@10"]
    assert (row["a_better"], row["b_better"]) == (1, 0)
    with pytest.raises(ValueError, match="at least one"):
        pooled_sign_test([1, 2], [], (5,))
    with pytest.raises(ValueError, match="same length"):
        pooled_sign_test([1, 2], [[1, 2], [1]], (5,))
