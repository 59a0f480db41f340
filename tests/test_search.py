"""Retrieval backends against a naive numpy reference; the exclusion rule; the FAISS callback under jit/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftragrec_jax.errors import ConfigError
from ftragrec_jax.models.search import FaissSearcher, Memory, exact_search, faiss_search, retrieve


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _base(seed, n=700, b=37, h=16, n_users=40):
    rng = np.random.default_rng(seed)
    keys = _unit(rng.normal(size=(n, h)))
    user = rng.integers(1, n_users, n).astype(np.int32)
    prefix = rng.integers(1, 30, n).astype(np.int32)
    # queries near some entries of their own user, so the exclusion rule has something to exclude
    src = rng.integers(0, n, b)
    q = _unit(keys[src] + 0.05 * rng.normal(size=(b, h)))
    return q, user[src], prefix[src], keys, user, prefix


def naive_top_k(q, q_user, q_prefix, keys, user, prefix, k):
    """np.argsort(-scores) with the exclusion rule applied entry by entry."""
    scores = q @ keys.T
    out = np.full((len(q), k), -1, np.int32)
    for i in range(len(q)):
        allowed = [
            j for j in np.argsort(-scores[i], kind="stable") if not (user[j] == q_user[i] and prefix[j] >= q_prefix[i])
        ]
        out[i, : min(k, len(allowed))] = allowed[:k]
    return out


@pytest.mark.parametrize("n,chunk", [(700, 64), (700, 700), (700, 100000), (700, 333), (5000, 100000), (5000, 1500)])
def test_exact_matches_naive_reference(n, chunk):
    q, qu, qp, keys, user, prefix = _base(0, n=n)
    ids, scores = jax.jit(lambda *a: exact_search(*a, top_k=5, chunk_size=chunk))(q, qu, qp, keys, user, prefix)
    ref = naive_top_k(q, qu, qp, keys, user, prefix, 5)
    np.testing.assert_array_equal(np.asarray(ids), ref)
    np.testing.assert_allclose(np.asarray(scores), np.take_along_axis(q @ keys.T, ref, 1), rtol=1e-5, atol=1e-6)


def test_two_stage_top_k_equals_lax_top_k():
    from ftragrec_jax.models.search import GROUP, _top_k

    rng = np.random.default_rng(7)
    scores = rng.normal(size=(9, 50 * GROUP + 17)).astype(np.float32)
    scores[0, 3:] = -np.inf  # fewer finite values than k
    scores[1, :] = -np.inf
    scores[2, rng.integers(0, scores.shape[1], 2000)] = -np.inf
    top, idx = jax.jit(lambda s: _top_k(s, 6))(scores)
    ref_top, ref_idx = jax.lax.top_k(scores, 6)
    np.testing.assert_array_equal(np.asarray(top), np.asarray(ref_top))
    finite = np.isfinite(np.asarray(ref_top))
    np.testing.assert_array_equal(np.asarray(idx)[finite], np.asarray(ref_idx)[finite])


def test_exclusion_rule_both_backends():
    q, qu, qp, keys, user, prefix = _base(1)
    # make the query's own sample the best match: it must still never come back
    keys = keys.copy()
    keys[:37] = q
    user, prefix = user.copy(), prefix.copy()
    user[:37], prefix[:37] = qu, qp
    searcher = FaissSearcher("Flat", 16, top_k=5, overfetch=0)  # overfetch 0 forces the re-search path
    searcher.build(keys, user, prefix)
    for ids in (np.asarray(exact_search(q, qu, qp, keys, user, prefix, top_k=5)[0]), searcher.search_host(q, qu, qp)):
        assert (ids >= 0).all()
        bad = (user[ids] == qu[:, None]) & (prefix[ids] >= qp[:, None])
        assert not bad.any()
        assert not (ids == np.arange(37)[:, None]).any()
        np.testing.assert_array_equal(ids, naive_top_k(q, qu, qp, keys, user, prefix, 5))


def test_fewer_allowed_than_k_gives_minus_one():
    keys = _unit(np.random.default_rng(2).normal(size=(6, 8)))
    user = np.array([1, 1, 1, 1, 2, 2], np.int32)
    prefix = np.array([1, 2, 3, 4, 1, 2], np.int32)
    q, qu, qp = keys[:2], np.array([1, 2], np.int32), np.array([2, 1], np.int32)
    ref = naive_top_k(q, qu, qp, keys, user, prefix, 5)  # query 0 may see entry 0 and user 2's two: 3 allowed
    assert (ref[0] >= 0).sum() == 3 and (ref[1] >= 0).sum() == 4
    searcher = FaissSearcher("Flat", 8, top_k=5)
    searcher.build(keys, user, prefix)
    np.testing.assert_array_equal(searcher.search_host(q, qu, qp), ref)
    np.testing.assert_array_equal(
        np.asarray(exact_search(q, qu, qp, keys, user, prefix, top_k=5, chunk_size=4)[0]), ref
    )


def test_faiss_flat_equals_exact_and_ivf_recall():
    q, qu, qp, keys, user, prefix = _base(3, n=4000, b=128, h=16)
    exact = np.asarray(exact_search(q, qu, qp, keys, user, prefix, top_k=10, chunk_size=1024)[0])
    flat = FaissSearcher("Flat", 16, top_k=10, overfetch=8)
    flat.build(keys, user, prefix)
    got = flat.search_host(q, qu, qp)
    same = (got == exact).mean()
    assert same >= 0.999, same  # ties aside (none expected on random floats)
    for nprobe, floor in ((1, 0.0), (8, 0.6), (32, 0.999)):
        ivf = FaissSearcher("IVF32,Flat", 16, top_k=10, nprobe=nprobe)
        ivf.build(keys, user, prefix)
        ids = ivf.search_host(q, qu, qp)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
        print(f"IVF32,Flat nprobe={nprobe}: recall@10 vs exact = {recall:.3f}")
        assert recall >= floor


def test_faiss_callback_under_jit_and_grad():
    q, qu, qp, keys, user, prefix = _base(4)
    searcher = FaissSearcher("Flat", 16, top_k=5)
    searcher.build(keys, user, prefix)
    memory = Memory(
        h=jnp.asarray(keys),
        keys=jnp.asarray(keys),
        target=jnp.zeros(len(keys), jnp.int32),
        user=jnp.asarray(user),
        prefix_len=jnp.asarray(prefix),
    )
    ref = naive_top_k(q, qu, qp, keys, user, prefix, 5)

    def loss(w, backend):
        query = q * w
        ids = retrieve(query, qu, qp, memory, backend=backend, top_k=5, searcher=searcher)
        return jnp.sum(query[:, None, :] * memory.h[ids]), ids

    for backend in ("faiss", "exact"):
        (value, ids), grad = jax.jit(jax.value_and_grad(lambda w: loss(w, backend), has_aux=True))(jnp.float32(1.0))
        np.testing.assert_array_equal(np.asarray(ids), ref)
        expected = float(np.sum(q[:, None, :] * keys[ref]))
        assert np.isclose(float(value), expected, rtol=1e-5)
        assert np.isclose(float(grad), expected, rtol=1e-5)  # d/dw of w·const: ids carry no gradient
    # the index is read at run time: a rebuilt index changes results without recompiling
    f = jax.jit(lambda x: faiss_search(searcher, x, qu, qp))
    before = np.asarray(f(q))
    searcher.build(-keys, user, prefix)
    assert not np.array_equal(np.asarray(f(q)), before)


def test_bad_factory_string_is_config_error():
    with pytest.raises(ConfigError, match="faiss_index"):
        FaissSearcher("NotAnIndex,,7", 16, top_k=5)
    searcher = FaissSearcher("IVF4096,Flat", 16, top_k=5)
    keys = _unit(np.random.default_rng(0).normal(size=(100, 16)))
    with pytest.raises(ConfigError, match="faiss_index"):
        searcher.build(keys, np.zeros(100, np.int32), np.zeros(100, np.int32))


def _tie_heavy(seed, n=3000, b=64, h=8, n_users=25):
    """Keys and queries with small integer entries: every dot product is an exact small integer in float32, so
    equal scores are equal in every implementation (XLA, FAISS, numpy) whatever the summation order, and there
    are many of them (duplicated rows and distinct rows with the same score)."""
    rng = np.random.default_rng(seed)
    distinct = rng.integers(-3, 4, size=(n // 2, h)).astype(np.float32)
    keys = distinct[rng.integers(0, len(distinct), n)]
    user = rng.integers(1, n_users, n).astype(np.int32)
    prefix = rng.integers(1, 30, n).astype(np.int32)
    src = rng.integers(0, n, b)
    return keys[src].copy(), user[src], prefix[src], keys, user, prefix


def test_two_stage_top_k_breaks_ties_by_smaller_column():
    """0.9 at column 300 and 0.5 at columns 310 and 5: the second slot is column 5, as lax.top_k says, although
    column 310's group ranks before column 5's by group order."""
    from ftragrec_jax.models.search import _top_k

    scores = np.zeros((1, 1000), np.float32)
    scores[0, 300], scores[0, 310], scores[0, 5] = 0.9, 0.5, 0.5
    _, idx = jax.jit(lambda s: _top_k(s, 2))(scores)
    np.testing.assert_array_equal(np.asarray(idx), [[300, 5]])
    np.testing.assert_array_equal(np.asarray(jax.lax.top_k(scores, 2)[1]), [[300, 5]])


def test_two_stage_top_k_equals_lax_top_k_on_quantised_scores():
    from ftragrec_jax.models.search import GROUP, _top_k

    rng = np.random.default_rng(11)
    scores = rng.integers(0, 2000, size=(16, 40 * GROUP + 5)).astype(np.float32)  # ~2.6 ties per value
    for k in (1, 3, 7):
        top, idx = jax.jit(lambda s: _top_k(s, k))(scores)
        ref_top, ref_idx = jax.lax.top_k(scores, k)
        np.testing.assert_array_equal(np.asarray(top), np.asarray(ref_top))
        np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))


@pytest.mark.parametrize("chunk", [64, 500, 1024, 3000, 100000])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_exact_ties_go_to_the_smaller_id_across_chunk_sizes(chunk, k):
    q, qu, qp, keys, user, prefix = _tie_heavy(5)
    ids, _ = jax.jit(lambda *a: exact_search(*a, top_k=k, chunk_size=chunk))(q, qu, qp, keys, user, prefix)
    np.testing.assert_array_equal(np.asarray(ids), naive_top_k(q, qu, qp, keys, user, prefix, k))


@pytest.mark.parametrize("overfetch", [0, 3, 32])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_faiss_flat_ties_go_to_the_smaller_id(overfetch, k):
    """FAISS orders equal scores as it likes and may stop inside a run of ties: the searcher re-orders and
    re-fetches until the last slot is settled, so Flat gives the naive (and exact) ids, ties included."""
    q, qu, qp, keys, user, prefix = _tie_heavy(6)
    searcher = FaissSearcher("Flat", keys.shape[1], top_k=k, overfetch=overfetch)
    searcher.build(keys, user, prefix)
    np.testing.assert_array_equal(searcher.search_host(q, qu, qp), naive_top_k(q, qu, qp, keys, user, prefix, k))
    assert searcher.take_counts() == {"short": 0, "capped": 0}


def test_faiss_max_fetch_bounds_the_re_search_and_warns():
    """A run of ties longer than max_fetch cannot be settled: the rows keep what was found, are counted, and one
    warning names the index and its nprobe."""
    q, qu, qp, keys, user, prefix = _tie_heavy(7)
    searcher = FaissSearcher("Flat", keys.shape[1], top_k=5, overfetch=0, max_fetch=20)
    searcher.build(keys, user, prefix)
    with pytest.warns(RuntimeWarning, match=r"FAISS index 'Flat' \(nprobe 16\)"):
        ids = searcher.search_host(q, qu, qp)
    counts = searcher.take_counts()
    assert counts["capped"] > 0 and (ids >= 0).all()
    assert searcher.take_counts() == {"short": 0, "capped": 0}  # taken, then reset


def test_ivf_shortfall_stops_when_the_probed_lists_run_out_and_is_counted():
    """A tiny IVF (2 lists) probed with nprobe 1: the query's one list holds 200 entries, 198 of them its own
    user's later samples. The re-search grows the fetch until the list runs out (FAISS pads with -1), then stops
    there with the 2 allowed entries instead of escalating to the whole base, and the searcher counts the short
    query."""
    rng = np.random.default_rng(8)
    centres = np.zeros((2, 16), np.float32)
    centres[0, 0], centres[1, 1] = 1.0, 1.0  # two far-apart clusters: k-means with 2 lists separates them
    keys = _unit(np.repeat(centres, [200, 1400], axis=0) + 0.01 * rng.normal(size=(1600, 16)))
    user = np.arange(len(keys), dtype=np.int32)
    user[2:200] = 7  # cluster 0: all but two entries belong to the query's user ...
    prefix = np.full(len(keys), 5, np.int32)  # ... with prefixes not shorter than its 5: excluded
    searcher = FaissSearcher("IVF2,Flat", 16, top_k=5, nprobe=1, overfetch=0)
    searcher.build(keys, user, prefix)
    calls = []
    search = searcher.index.search
    searcher.index.search = lambda x, k: calls.append(k) or search(x, k)
    ids = searcher.search_host(centres[:1], np.array([7], np.int32), np.array([5], np.int32))
    assert sorted(ids[0, :2]) == [0, 1] and (ids[0, 2:] == -1).all(), ids
    assert max(calls) < len(keys) and calls[-1] >= 200, calls  # stopped once the list ran out
    assert searcher.take_counts()["short"] == 1


def test_compressed_index_with_a_wider_exact_rerank():
    """IVF-PQ as a backend (4-bit product codes: 8 bytes per entry instead of 64): the exclusion rule holds,
    ids come in exact-score order (the jitted search re-scores its candidates exactly), and re-scoring more
    candidates (faiss_rerank) recovers the exact top_k that PQ's approximate scores put further down."""
    q, qu, qp, keys, user, prefix = _base(3, n=4000, b=128, h=16)
    naive = naive_top_k(q, qu, qp, keys, user, prefix, 10)
    recall = {}
    for rerank in (0, 400):
        searcher = FaissSearcher("IVF32,PQ8x4", 16, top_k=10, nprobe=32, rerank=rerank)
        searcher.build(keys, user, prefix)
        ids = np.asarray(jax.jit(lambda a, b, c: faiss_search(searcher, a, b, c, keys))(q, qu, qp))
        assert (ids >= 0).all()
        for r, row in enumerate(ids):
            assert not ((user[row] == qu[r]) & (prefix[row] >= qp[r])).any()
            assert len(set(row)) == len(row)
        scores = np.einsum("bh,bkh->bk", q, keys[ids])
        assert (np.diff(scores, axis=1) <= 1e-6).all()
        recall[rerank] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, naive)])
    print("IVF32,PQ8x4 recall@10 vs exact, by faiss_rerank:", recall)
    assert recall[0] < 0.95 and recall[400] >= 0.99, recall
    with pytest.raises(ConfigError, match="faiss_rerank"):
        FaissSearcher("Flat", 16, top_k=10, rerank=-1)
