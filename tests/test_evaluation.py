"""Full-sort evaluation: tie rule, K beyond the catalogue, chunking, history masking, RecBole's numbers."""

import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from ftragrec_jax.data.samples import SequenceSamples, UserHistory
from ftragrec_jax.errors import FtragrecError
from ftragrec_jax.evaluation import PROTOCOL, PROTOCOL_MASKED, full_sort_evaluate, sample_ranks
from ftragrec_jax.metrics import summarize, topk_metrics

REF_DIR = Path(__file__).parent / "data" / "recbole021"


def make_samples(target, user=None, prefix_len=None, max_len=3):
    n = len(target)
    user = np.arange(1, n + 1) if user is None else np.asarray(user)
    prefix_len = np.ones(n, np.int32) if prefix_len is None else np.asarray(prefix_len)
    return SequenceSamples.from_matrix(
        item_seq=np.ones((n, max_len), np.int32),
        item_seq_len=np.ones(n, np.int32),
        target=np.asarray(target, np.int32),
        user=user.astype(np.int32),
        prefix_len=prefix_len.astype(np.int32),
    )


def table_scorer(table):
    """score_fn returning fixed rows: the batch's `index` says which sample each row is."""
    table = np.asarray(table, np.float32)
    return lambda item_seq, item_seq_len, batch: jnp.asarray(table[batch["index"]])


def naive_metrics(table, target, ks, hidden=None):
    """Reference: stable argsort of -scores over the real items, top-K lists, RecBole's pos_index formulas."""
    table = np.asarray(table, np.float64).copy()
    if hidden is not None:
        for r, items in enumerate(hidden):
            for i in items:
                if i != target[r]:
                    table[r, i] = -np.inf
    order = np.argsort(-table[:, 1:], axis=1, kind="stable") + 1  # lower id first among equal scores
    if hidden is not None:  # hidden items are not in the list at all
        lists = [[i for i in row if i not in set(h) or i == t] for row, h, t in zip(order, hidden, target)]
    else:
        lists = order.tolist()
    max_k = max(ks)
    pos_index = np.zeros((len(target), max_k), bool)
    for r, lst in enumerate(lists):
        lst = lst[:max_k]  # shorter than K when K exceeds the catalogue
        pos_index[r, : len(lst)] = np.asarray(lst) == target[r]
    return summarize(topk_metrics(pos_index, np.ones(len(target), np.int64)), ks)


def test_hand_computed_ties_padding_and_k_beyond_catalogue():
    # 5 real items; column 0 (padding) has the highest score and must never count
    row = [9.0, 0.5, 0.9, 0.5, 0.1, 0.5]
    samples = make_samples([3, 1, 5])
    ks = (1, 2, 3, 5, 10)
    res = full_sort_evaluate(table_scorer([row] * 3), samples, 6, ks=ks, batch_size=2)
    # target 3: item 2 higher, item 1 equal with a lower id -> rank 3; target 1 -> rank 2; target 5 -> rank 4
    assert sample_ranks(table_scorer([row] * 3), samples, 6, batch_size=2).tolist() == [3, 2, 4]
    assert res["hit@1"] == 0.0 and res["hit@2"] == 0.3333 and res["recall@3"] == 0.6667
    assert res["mrr@5"] == round((1 / 3 + 1 / 2 + 1 / 4) / 3, 4) == 0.3611
    assert res["ndcg@5"] == round((0.5 + 1 / math.log2(3) + 1 / math.log2(5)) / 3, 4) == 0.5205
    assert res["precision@5"] == 0.2 and res["precision@10"] == 0.1  # K=10 > 5 items: still divided by K
    assert res["hit@10"] == 1.0 and res["ndcg@10"] == res["ndcg@5"]
    assert res.protocol == PROTOCOL and res.n_samples == 3 and res.ties == "lower_id_first"
    assert res.to_json()["metrics"] == dict(res)


def test_all_equal_scores_rank_by_id():
    samples = make_samples([1, 4, 7])
    ranks = sample_ranks(table_scorer(np.zeros((3, 8))), samples, 8)
    assert ranks.tolist() == [1, 4, 7]


@pytest.mark.parametrize("seed", range(3))
def test_matches_naive_argsort_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, n_items = 157, 41
    table = rng.integers(0, 6, size=(n, n_items)).astype(np.float32)  # many ties
    target = rng.integers(1, n_items, size=n)
    ks = (1, 5, 10, 20, 50)  # 50 > 40 real items
    res = full_sort_evaluate(table_scorer(table), make_samples(target), n_items, ks=ks, batch_size=32)
    assert dict(res) == naive_metrics(table, target, ks)


def test_history_masking_hides_earlier_items_but_not_the_target():
    # chronological items: user 1: 2 3 1 4, user 2: 4 5, user 3: 2 2 (a repeated item)
    history = UserHistory(indptr=np.array([0, 0, 4, 6, 8]), items=np.array([2, 3, 1, 4, 4, 5, 2, 2], np.int32))
    table = np.tile(np.array([0, 0.9, 0.8, 0.7, 0.6, 0.5], np.float32), (3, 1))
    samples = make_samples([4, 5, 2], user=[1, 2, 3], prefix_len=[3, 1, 1])
    plain = sample_ranks(table_scorer(table), samples, 6)
    masked = sample_ranks(table_scorer(table), samples, 6, history=history)
    assert plain.tolist() == [4, 5, 2]
    # user 1: items 2, 3, 1 hidden -> first; user 2: item 4 hidden; user 3: the target 2 was seen before
    # and stays rankable (only item 1 is above it)
    assert masked.tolist() == [1, 4, 2]
    res = full_sort_evaluate(table_scorer(table), samples, 6, ks=(1, 5), history=history)
    assert res.protocol == PROTOCOL_MASKED and res["hit@1"] == 0.3333
    assert dict(res) == naive_metrics(table, np.array([4, 5, 2]), (1, 5), hidden=[[2, 3, 1], [4], [2]])


def test_history_masking_on_random_data_matches_reference():
    rng = np.random.default_rng(5)
    n_users, n_items = 30, 25
    lengths = rng.integers(2, 12, size=n_users)
    items = rng.integers(1, n_items, size=lengths.sum()).astype(np.int32)
    indptr = np.concatenate([[0, 0], np.cumsum(lengths)])
    history = UserHistory(indptr=indptr, items=items)
    user = np.arange(1, n_users + 1)
    prefix = lengths - 1
    target = items[indptr[user] + prefix]
    table = rng.integers(0, 4, size=(n_users, n_items)).astype(np.float32)
    ks = (1, 3, 10, 30)
    res = full_sort_evaluate(
        table_scorer(table), make_samples(target, user, prefix), n_items, ks=ks, batch_size=8, history=history
    )
    hidden = [items[indptr[u] : indptr[u] + p].tolist() for u, p in zip(user, prefix)]
    assert dict(res) == naive_metrics(table, target, ks, hidden=hidden)


def test_same_numbers_as_recbole_topk_evaluator():
    """Scores and RecBole 0.2.1's own TopKEvaluator output (its trainer's target swap, torch.topk, rounding),
    produced by running DuoRec's vendored recbole on these scores; no ties involve a target."""
    case = json.loads((REF_DIR / "eval_case.json").read_text())
    z = np.load(REF_DIR / "eval_case.npz")
    scores, target = z["scores"], z["target"]
    ks = tuple(case["ks"])
    res = full_sort_evaluate(table_scorer(scores), make_samples(target), scores.shape[1], ks=ks, batch_size=64)
    assert dict(res) == case["decimals_4"]
    ranks = sample_ranks(table_scorer(scores), make_samples(target), scores.shape[1], batch_size=100)
    from ftragrec_jax.metrics import single_target_metrics

    fine = summarize(single_target_metrics(ranks, ks), ks, columns=range(len(ks)), decimals=15)
    assert fine == case["decimals_15"]


def test_errors_are_clear():
    samples = make_samples([1, 2])
    nan = np.zeros((2, 4), np.float32)
    nan[1, 3] = np.nan
    with pytest.raises(FtragrecError, match="NaN scores \\(sample 1\\)"):
        full_sort_evaluate(table_scorer(nan), samples, 4)
    nan_pad = np.zeros((2, 4), np.float32)
    nan_pad[:, 0] = np.nan  # padding column is never ranked, so it may hold anything
    assert full_sort_evaluate(table_scorer(nan_pad), samples, 4, ks=(1,))["hit@1"] == 0.5
    with pytest.raises(FtragrecError, match="expected \\(2, 5\\)"):
        full_sort_evaluate(table_scorer(np.zeros((2, 4))), samples, 5, batch_size=2)
    with pytest.raises(FtragrecError, match="0 samples"):
        full_sort_evaluate(table_scorer(nan), samples.take(np.arange(0)), 4)
    with pytest.raises(FtragrecError, match="targets outside"):
        full_sort_evaluate(table_scorer(np.zeros((2, 2))), samples, 2)


def test_mesh_evaluation_equals_numpy_batches_and_checks_divisibility():
    """On a mesh (one device here; 4 in tests/test_scale_out.py) the batch reaches score_fn as device arrays
    and the ranks are those of the numpy path; a batch the device count does not divide is refused before
    anything is scored."""
    from types import SimpleNamespace

    import jax

    from ftragrec_jax import parallel
    from ftragrec_jax.errors import ConfigError

    rng = np.random.default_rng(7)
    table = rng.integers(0, 4, size=(37, 19)).astype(np.float32)
    samples = make_samples(rng.integers(1, 19, size=37))
    seen = []

    def scorer(item_seq, item_seq_len, batch):
        seen.append(isinstance(item_seq, jax.Array) and isinstance(batch["user"], jax.Array))
        return table_scorer(table)(item_seq, item_seq_len, batch)

    mesh = parallel.make_mesh(1)
    assert (
        sample_ranks(scorer, samples, 19, batch_size=8, mesh=mesh).tolist()
        == sample_ranks(table_scorer(table), samples, 19, batch_size=8).tolist()
    )
    assert len(seen) == 5 and all(seen)
    four = SimpleNamespace(size=4)  # check_batch_divides only reads the device count
    with pytest.raises(ConfigError, match="config key 'eval_batch_size': 6 is not divisible by the 4 devices"):
        full_sort_evaluate(lambda *a: pytest.fail("scored before the check"), samples, 19, batch_size=6, mesh=four)


def _linear_case(seed=0, n=23, n_items=57, h=6, ties=True):
    """Sample vectors, an item table (with duplicated rows and a duplicated sample: exact ties), targets, users
    with histories."""
    rng = np.random.default_rng(seed)
    rep = rng.standard_normal((n, h)).astype(np.float32)
    table = rng.standard_normal((n_items, h)).astype(np.float32)
    if ties:
        table[[10, 30, 50]] = table[20]  # items 10, 20, 30, 50 tie for every sample
        rep[5] = rep[4]
    target = rng.integers(1, n_items, n).astype(np.int32)
    target[:4] = [20, 30, 10, 50]  # targets among the tied items
    user = np.arange(1, n + 1, dtype=np.int32)
    lens = rng.integers(1, 9, n)
    items = np.concatenate([rng.integers(1, n_items, k) for k in lens]).astype(np.int32)
    history = UserHistory(np.concatenate([[0, 0], np.cumsum(lens)]).astype(np.int64), items)
    samples = make_samples(target, user=user, prefix_len=lens.astype(np.int32))
    return rep, table, samples, history


@pytest.mark.parametrize("chunk", [1, 8, 19, 56])
@pytest.mark.parametrize("masked", [False, True])
def test_item_chunked_ranks_equal_the_whole_catalogue(chunk, masked):
    """item_chunk_size with a LinearScoreFn: the ranks counted over item chunks are the ranks of the full
    scores, exact ties (to the lower id) and history masking included, on one device and through a mesh."""
    from ftragrec_jax import parallel
    from ftragrec_jax.scoring import LinearScoreFn

    rep, table, samples, history = _linear_case()
    n_items = table.shape[0]
    full = table_scorer(rep @ table.T)
    hist = history if masked else None
    want = sample_ranks(full, samples, n_items, batch_size=8, history=hist)

    # a LinearScoreFn whose rows follow the batch order: sample_ranks walks the samples in order, 8 at a time
    order = iter(range(0, len(samples), 8))

    def represent_in_order(item_seq, item_seq_len):
        start = next(order)
        block = np.zeros((8, rep.shape[1]), np.float32)
        part = rep[start : start + 8]
        block[: len(part)] = part
        block[len(part) :] = rep[start]  # padding rows copy the first, as iterate_batches does
        return jnp.asarray(block)

    linear = LinearScoreFn(lambda s, ln: None, represent_in_order, jnp.asarray(table))
    got = sample_ranks(linear, samples, n_items, batch_size=8, history=hist, item_chunk_size=chunk)
    np.testing.assert_array_equal(got, want)
    assert (want[:4] != want[0]).any() or masked  # the tied targets get different ranks by the lower-id rule

    order = iter(range(0, len(samples), 8))
    mesh = parallel.make_mesh(1)
    got = sample_ranks(linear, samples, n_items, batch_size=8, history=hist, item_chunk_size=chunk, mesh=mesh)
    np.testing.assert_array_equal(got, want)


def test_item_chunking_leaves_other_score_fns_whole():
    """A plain score_fn (no ChunkedScoreFn) is scored whole whatever item_chunk_size says: the same ranks."""
    rep, table, samples, _ = _linear_case(ties=False)
    full = table_scorer(rep @ table.T)
    want = sample_ranks(full, samples, table.shape[0], batch_size=8)
    np.testing.assert_array_equal(sample_ranks(full, samples, table.shape[0], batch_size=8, item_chunk_size=5), want)
