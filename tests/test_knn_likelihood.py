"""The "knn_likelihood" retriever objective (models/ftragrec.py): -log Σ_j R_j·v_j(y) over the search pool, v_j(y)
the share of entry j's kNN-LM vote that goes to the query's target. Against the PyTorch reference written from the
spec (term and retriever gradients), against "contrastive" with a window of 1, against a float64 loop through the
training loss with value windows (the query user's future dropped), and its config checks."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from converters.reference.torch_ftragrec import retriever_objective_term  # noqa: E402
from ftragrec_jax.config import Config  # noqa: E402
from ftragrec_jax.errors import ConfigError  # noqa: E402
from ftragrec_jax.models.ftragrec import (  # noqa: E402
    FTragrecHParams,
    _query_side,
    build_ftragrec,
    ftragrec_loss,
    ftragrec_terms,
)
from ftragrec_jax.models.knowledge_base import KnowledgeBase, kb_options  # noqa: E402
from ftragrec_jax.models.retriever import embed  # noqa: E402
from tests.ftragrec_helpers import batch_of, make_samples, small_encoder  # noqa: E402
from tests.test_knn_value_windows import _naive_windows  # noqa: E402
from tests.test_parity_ftragrec import _pair as parity_pair  # noqa: E402
from tests.test_parity_ftragrec import assert_retriever_grads_match  # noqa: E402

N_ITEMS, MAX_LEN = 60, 8


def _hp(**kw):
    return FTragrecHParams(
        **{
            "top_k": 4,
            "retrieval_backend": "exact",
            "quality_threshold": 0.1,
            "fusion": "knn_lm",
            "alpha": 0.3,
            "retriever_objective": "knn_likelihood",
            "retriever_pool": 16,
            "retriever_loss_weight": 2.5,
            **kw,
        }
    )


@pytest.mark.parametrize("window", [1, 3])
def test_term_and_retriever_gradients_match_torch(window):
    """window 3: random value windows in which the row's target sits at any position (or nowhere), with
    renormalised decaying weights; window 1: each entry's target (values=None on both sides)."""
    hp = _hp(knn_value_window=window)
    _, model, tm = parity_pair(hp, n_layers=hp.retriever_layers)
    samples = make_samples(0, 40, N_ITEMS, MAX_LEN)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.search_k)
    rng = np.random.default_rng(5)
    b, p = 40, hp.search_k
    rows = rng.integers(0, len(kb), b)
    seq, target = kb.h[rows], samples["target"][rows]
    ids = rng.integers(-1, len(kb), (b, p)).astype(np.int32)
    ids[b - 3 :] = -1
    mask = (np.arange(b) < b - 2).astype(np.float32)
    if window == 1:
        for r in range(b - 8):
            same = np.flatnonzero(kb.target == target[r])
            ids[r, rng.integers(0, p, 3)] = rng.choice(same, 3)
        values = None
    else:
        items = rng.integers(0, N_ITEMS, (b, p, window)).astype(np.int32)
        for r in range(b - 8):
            items[r, rng.integers(0, p, 4), rng.integers(0, window, 4)] = target[r]
        w = np.where(items > 0, 0.5 ** np.arange(window, dtype=np.float32), 0.0)
        values = (items, (w / np.maximum(w.sum(-1, keepdims=True), 1e-30)).astype(np.float32))
    table = np.asarray(model.encoder.item_table())
    gd, rparams = nnx.split(model.retriever, nnx.Param)

    def objective(params):
        _, aux = ftragrec_terms(
            nnx.merge(gd, params), seq, ids, kb.memory.h, kb.memory.target, table, target, mask, hp, values=values
        )
        return aux["objective_loss"], aux

    (_, aux), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(rparams)
    term, share = retriever_objective_term(
        tm.retriever_encoder,
        *(torch.from_numpy(np.array(x)) for x in (seq, ids, kb.h)),
        torch.from_numpy(kb.target.copy()).long(),
        torch.from_numpy(table),
        torch.from_numpy(target).long(),
        torch.from_numpy(mask),
        objective="knn_likelihood",
        retriever_temperature=hp.retriever_temperature,
        pool_values=values,
    )
    term.backward()
    assert 0 < float(share) < 1 and float(term.detach()) > 0
    assert abs(float(aux["objective_loss"]) - float(term.detach())) <= 1e-5 * max(1.0, float(term.detach()))
    assert abs(float(aux["objective_rows"]) - float(share)) <= 1e-6
    assert_retriever_grads_match(grads, tm, hp.retriever_layers)


def test_worked_example_counts_a_later_window_item():
    """Entry 0's target is the query's (weight 1); entry 1 votes 2/3 for 9 and 1/3 for 7 (its user went on to 7);
    entry 2 never votes for 7: the term is -log(R_0 + R_1/3). "contrastive" would count entry 1 as a negative."""
    hp = _hp(top_k=1, retriever_pool=3, retriever_temperature=1.0, knn_value_window=2)
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=0)
    h = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    seq = h[:1] + 0.1
    items = np.array([[[7, 0], [9, 7], [3, 4]]], np.int32)
    weights = np.array([[[1.0, 0.0], [2 / 3, 1 / 3], [2 / 3, 1 / 3]]], np.float32)
    args = (model.retriever, seq, np.array([[0, 1, 2]], np.int32), h, np.array([7, 9, 3], np.int32))
    table = np.asarray(model.encoder.item_table())
    _, aux = ftragrec_terms(*args, table, np.array([7]), np.ones(1), hp, values=(items, weights))
    q, keys = np.asarray(embed(model.retriever, seq))[0], np.asarray(embed(model.retriever, h))
    r = np.exp(keys @ q)
    r /= r.sum()
    np.testing.assert_allclose(float(aux["objective_loss"]), -np.log(r[0] + r[1] / 3), rtol=1e-5)
    contrastive = dataclasses.replace(hp, retriever_objective="contrastive", knn_value_window=1)
    _, c = ftragrec_terms(*args, table, np.array([7]), np.ones(1), contrastive)
    np.testing.assert_allclose(float(c["objective_loss"]), -np.log(r[0]), rtol=1e-5)


def test_window_of_one_equals_contrastive_through_the_loss():
    hp = _hp(knn_value_window=1, quality_threshold=0.0, retriever_pool=25)
    samples = make_samples(2, 40, N_ITEMS, MAX_LEN)
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=1)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, **kb_options(hp))
    batch = batch_of(samples, np.arange(0, len(samples["target"]), 2)[:48], 48)
    _, got = jax.jit(lambda b: ftragrec_loss(model, b, kb.memory, hp=hp))(batch)
    contrastive = dataclasses.replace(hp, retriever_objective="contrastive")
    _, want = jax.jit(lambda b: ftragrec_loss(model, b, kb.memory, hp=contrastive))(batch)
    assert 0 < float(want["objective_rows"]) < 1
    for k in ("loss", "objective_loss", "objective_rows", "enhanced_rec_loss", "kl_loss"):
        np.testing.assert_allclose(float(got[k]), float(want[k]), rtol=1e-6, err_msg=k)


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_training_queries_score_windows_without_their_users_future(backend):
    """Through ftragrec_loss with windows of 3, on training queries: the term equals a float64 loop over the pool
    that drops, from each window, the items of the query's own user at or after its target; without that rule
    the term would be lower (the pool would vote for the query's own target through its user's earlier entries)."""
    m, decay = 3, 0.5
    hp = _hp(
        retrieval_backend=backend, knn_value_window=m, knn_value_decay=decay, quality_threshold=0.0, retriever_pool=20
    )
    samples = make_samples(2, 30, 40, MAX_LEN)
    model = build_ftragrec(small_encoder(40, MAX_LEN), hp, seed=1)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, **kb_options(hp))
    batch = batch_of(samples, np.arange(len(samples["target"])))
    seq = kb.memory.h[batch["index"]]
    gd, params, rest = nnx.split(model, nnx.Param, ...)

    def objective(p, b):
        _, aux = ftragrec_loss(nnx.merge(gd, p, rest), b, kb.memory, hp=hp, seq_output=seq, searcher=kb.searcher)
        return aux["objective_loss"], aux

    (loss, aux), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params, batch)
    _, query, ids = jax.jit(lambda b: _query_side(model, b, kb.memory, hp, seq, kb.searcher))(batch)
    query, ids = np.asarray(query, np.float64), np.asarray(ids)
    keys = np.asarray(embed(model.retriever, kb.h), np.float64)
    windows = _naive_windows(kb.target, kb.user, kb.prefix_len, m)

    def naive(clip):
        out = []
        for b, row in enumerate(ids):
            row = row[row >= 0]
            r = np.exp(keys[row] @ query[b] / hp.retriever_temperature)
            r /= r.sum()
            vote = np.zeros(len(row))
            for i, e in enumerate(row):
                seen = [
                    w
                    for w in range(m)
                    if windows[e, w] > 0
                    and not (clip and kb.user[e] == batch["user"][b] and kb.prefix_len[e] + w >= batch["prefix_len"][b])
                ]
                z = sum(decay**w for w in seen)
                vote[i] = sum(decay**w / z for w in seen if windows[e, w] == batch["target"][b])
            if (vote > 0).any():
                out.append(-np.log((r * vote).sum()))
        return np.mean(out), len(out) / len(ids)

    want, share = naive(clip=True)
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)
    np.testing.assert_allclose(float(aux["objective_rows"]), share, rtol=1e-6)
    leaky, leaky_share = naive(clip=False)
    assert leaky_share > share or leaky < want - 1e-4
    leaves = jax.tree_util.tree_leaves(grads["retriever"])
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves) and sum(float(abs(x).sum()) for x in leaves) > 0


def test_config_checks():
    with pytest.raises(ConfigError, match="retriever_objective.*knn_lm"):
        FTragrecHParams(retriever_objective="knn_likelihood")
    with pytest.raises(ConfigError, match="retriever_objective.*knn_lm"):
        Config(retriever_objective="knn_likelihood").validate()
    Config(retriever_objective="knn_likelihood", fusion="knn_lm", alpha=0.2).validate()
    assert _hp(top_k=5, retriever_pool=100).search_k == 100
    # ftragrec_terms alone cannot build the pool's windows (they need the queries' users and prefixes)
    hp = _hp(knn_value_window=3)
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=0)
    h = np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32)
    ids = np.zeros((2, hp.search_k), np.int32)
    table = model.encoder.item_table()
    with pytest.raises(ConfigError, match="knn_value_window"):
        ftragrec_terms(
            model.retriever, h[:2], ids, h, np.ones(20, np.int32), table, np.ones(2, np.int32), np.ones(2), hp
        )
