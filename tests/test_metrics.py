"""RecBole 0.2.1 metric formulas: hand-computed cases, both formulations agree, RecBole's rounding/mean."""

import math

import numpy as np
import pytest

from ftragrec_jax.metrics import METRICS, rank_to_pos_index, single_target_metrics, summarize, topk_metrics


def test_multi_positive_hand_computed():
    # relevant items at positions 2 and 4 of a 5-list; the user has 3 relevant items in total
    m = topk_metrics(np.array([[0, 1, 0, 1, 0]], bool), np.array([3]))
    d2, d4 = 1 / math.log2(3), 1 / math.log2(5)
    assert m["hit"][0].tolist() == [0, 1, 1, 1, 1]
    assert m["recall"][0].tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert m["precision"][0].tolist() == pytest.approx([0, 1 / 2, 1 / 3, 2 / 4, 2 / 5])
    assert m["mrr"][0].tolist() == [0, 0.5, 0.5, 0.5, 0.5]
    # IDCG holds min(3, K) relevant items
    idcg = [1, 1 + d2, 1 + d2 + 0.5, 1 + d2 + 0.5, 1 + d2 + 0.5]
    assert m["ndcg"][0].tolist() == pytest.approx(
        [0, d2 / idcg[1], d2 / idcg[2], (d2 + d4) / idcg[3], (d2 + d4) / idcg[4]]
    )
    # no relevant item in the list at all
    z = topk_metrics(np.zeros((1, 3), bool), np.array([1]))
    assert all(not z[name].any() for name in METRICS)


def test_single_target_hand_computed():
    m = single_target_metrics(np.array([1, 3, 7]), ks=(1, 5, 10))
    assert m["hit"].tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1]]
    assert m["mrr"].tolist() == [[1, 1, 1], [0, 1 / 3, 1 / 3], [0, 0, 1 / 7]]
    assert m["ndcg"][1].tolist() == [0, 0.5, 0.5] and m["ndcg"][2, 2] == pytest.approx(1 / 3)  # 1/log2(8)
    assert m["precision"].tolist() == [[1, 0.2, 0.1], [0, 0.2, 0.1], [0, 0, 0.1]]
    assert (m["recall"] == m["hit"]).all()


@pytest.mark.parametrize("seed", range(4))
def test_fast_path_is_bitwise_the_pos_index_formulation(seed):
    rng = np.random.default_rng(seed)
    ks = (1, 5, 10, 20, 50)
    rank = rng.integers(1, 80, size=500)
    fast = single_target_metrics(rank, ks)
    general = topk_metrics(rank_to_pos_index(rank, max(ks)), np.ones(len(rank), np.int64))
    for name in METRICS:
        assert np.array_equal(fast[name], general[name][:, [k - 1 for k in ks]]), name
    assert summarize(fast, ks, columns=range(len(ks)), decimals=17) == summarize(general, ks, decimals=17)


def test_summarize_mean_and_rounding_like_recbole():
    # RecBole averages with numpy's mean over a non-contiguous axis (a left-to-right sum) and rounds a
    # np.float64 with round(x, 4), i.e. numpy's rounding
    rng = np.random.default_rng(0)
    values = rng.random((5, 30001, 50))
    recbole_means = values.mean(axis=1)  # what np.stack(result_list).mean(axis=1) computes
    per_user = {name: values[j] for j, name in enumerate(METRICS)}
    out = summarize(per_user, (1, 10, 50), decimals=17)
    for j, name in enumerate(METRICS):
        for k in (1, 10, 50):
            assert out[f"{name}@{k}"] == float(np.round(recbole_means[j, k - 1], 17))
    rounded = summarize({n: np.array([[0.00005], [0.00015]]) for n in METRICS}, (1,))
    assert rounded["recall@1"] == float(round(np.float64(0.0001), 4))
    assert list(rounded) == [f"{n}@1" for n in METRICS]


def test_key_order_is_recbole_order():
    out = summarize(single_target_metrics(np.array([2]), (5, 10)), (5, 10), columns=[0, 1])
    assert list(out) == [
        "recall@5",
        "recall@10",
        "mrr@5",
        "mrr@10",
        "ndcg@5",
        "ndcg@10",
        "hit@5",
        "hit@10",
        "precision@5",
        "precision@10",
    ]
