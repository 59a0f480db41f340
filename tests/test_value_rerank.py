"""value_rerank (models/value_rerank.py): score_j = cos_j + (W s)·E[t_j] over a cosine-searched pool. Against the
PyTorch reference written from the spec (every term and the gradients of g and W), against a naive numpy search and
rerank (both backends, ties to the smaller id), W = 0 against the design, and the freeze mask with g frozen."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from converters.reference.torch_ftragrec import ftragrec_terms as torch_terms  # noqa: E402
from converters.reference.torch_ftragrec import retriever_objective_term  # noqa: E402
from ftragrec_jax.config import Config  # noqa: E402
from ftragrec_jax.errors import ConfigError  # noqa: E402
from ftragrec_jax.models.ftragrec import (  # noqa: E402
    FTragrecHParams,
    _query_side,
    build_ftragrec,
    ftragrec_loss,
    ftragrec_scores,
    ftragrec_terms,
)
from ftragrec_jax.models.knowledge_base import KnowledgeBase, kb_options  # noqa: E402
from ftragrec_jax.models.retriever import embed  # noqa: E402
from ftragrec_jax.models.value_rerank import order_pool  # noqa: E402
from ftragrec_jax.optim import TRAIN, label_counts, make_optimizer, trainable_modules  # noqa: E402
from ftragrec_jax.train.steps import make_ftragrec_step  # noqa: E402
from ftragrec_jax.trees import key_names  # noqa: E402
from tests.ftragrec_helpers import batch_of, make_samples, small_encoder  # noqa: E402
from tests.test_parity_ftragrec import _pair as parity_pair  # noqa: E402
from tests.test_parity_ftragrec import assert_retriever_grads_match  # noqa: E402

N_ITEMS, MAX_LEN = 60, 8
TERMS = ("loss", "rec_loss", "enhanced_rec_loss", "kl_loss", "fallback_fraction")


def _hp(**kw):
    return FTragrecHParams(
        **{
            "top_k": 4,
            "retrieval_backend": "exact",
            "quality_threshold": 0.0,
            "value_rerank": True,
            "retriever_pool": 16,
            **kw,
        }
    )


def _set_kernel(model, seed, scale=0.5):
    h = model.reranker.kernel[...].shape[0]
    model.reranker.kernel[...] = scale * jax.random.normal(jax.random.key(seed), (h, h))


def test_order_pool_is_score_descending_ties_to_the_smaller_id_invalid_last():
    score = np.array([[0.5, 0.9, 0.5, 0.1, 0.7], [1.0, 1.0, 1.0, 2.0, 3.0]], np.float32)
    ids = np.array([[9, 4, 2, -1, 7], [8, 3, 5, -1, 6]], np.int32)
    got = np.asarray(order_pool(score, ids))
    np.testing.assert_array_equal(got, [[4, 7, 2, 9, -1], [6, 3, 5, 8, -1]])
    naive = [np.r_[row[row >= 0][np.lexsort((row[row >= 0], -s[row >= 0]))], -1] for s, row in zip(score, ids)]
    np.testing.assert_array_equal(got, naive)


@pytest.mark.parametrize("objective", ["contrastive", "usefulness"])
def test_terms_and_gradients_of_g_and_w_match_torch(objective):
    """Representation fusion: the design's terms over the first top_k ids and the objective over the whole pool,
    both with u_j in the score; the gradient of every g leaf and of W against the reference's."""
    hp = _hp(quality_threshold=0.1, retriever_objective=objective, retriever_loss_weight=1.5)
    hp, model, tm = parity_pair(hp, n_layers=1)
    _set_kernel(model, 3)
    samples = make_samples(0, 40, N_ITEMS, MAX_LEN)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.search_k)
    rng = np.random.default_rng(2)
    b, p = 40, hp.search_k
    rows = rng.integers(0, len(kb), b)
    seq, target = kb.h[rows], samples["target"][rows]
    ids = rng.integers(-1, len(kb), (b, p)).astype(np.int32)
    ids[b - 2 :] = -1
    for r in range(b - 8):
        same = np.flatnonzero(kb.target == target[r])
        ids[r, rng.integers(0, p, 3)] = rng.choice(same, 3)
    mask = (np.arange(b) < b - 1).astype(np.float32)
    table = np.asarray(model.encoder.item_table())
    gd, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(prm):
        m = nnx.merge(gd, prm, rest)
        args = (seq, ids, kb.memory.h, kb.memory.target, table, target, mask, hp)
        return ftragrec_terms(m.retriever, *args, reranker=m.reranker)

    (_, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    w = torch.tensor(np.asarray(model.reranker.kernel[...]), requires_grad=True)
    t = {k: torch.from_numpy(np.array(v)) for k, v in dict(seq=seq, h=kb.h, table=table, mask=mask).items()}
    t_ids, t_kb, t_y = torch.from_numpy(ids).long(), torch.from_numpy(kb.target.copy()).long(), torch.from_numpy(target)
    t_total, t_terms, _ = torch_terms(
        tm.retriever_encoder, t["seq"], t_ids[:, : hp.top_k], t["h"], t_kb, t["table"], t_y.long(), t["mask"],
        **tm.hp, value_kernel=w,
    )  # fmt: skip
    term, share = retriever_objective_term(
        tm.retriever_encoder, t["seq"], t_ids, t["h"], t_kb, t["table"], t_y.long(), t["mask"],
        objective=objective, retriever_temperature=hp.retriever_temperature, value_kernel=w,
    )  # fmt: skip
    (t_total + hp.retriever_loss_weight * term).backward()
    assert 0 < float(aux["fallback_fraction"]) < 1 and 0 < float(share) <= 1
    for k in TERMS[1:]:
        assert abs(float(aux[k]) - float(t_terms[k].detach())) <= 1e-5, k
    assert abs(float(aux["objective_loss"]) - float(term.detach())) <= 1e-5 * max(1.0, float(term.detach()))
    want = float(t_total.detach()) + hp.retriever_loss_weight * float(term.detach())
    assert abs(float(aux["loss"]) - want) <= 2e-5 * max(1.0, want)
    assert_retriever_grads_match(grads["retriever"], tm, 1)
    gw, tw = np.asarray(grads["reranker"]["kernel"][...]), w.grad.numpy()
    assert np.abs(tw).max() > 0
    assert np.abs(gw - tw).max() <= 1e-4 * np.abs(tw).max()


def test_knn_likelihood_term_and_gradient_of_w_match_torch():
    hp = _hp(fusion="knn_lm", alpha=0.3, retriever_objective="knn_likelihood", retriever_pool=12)
    hp, model, tm = parity_pair(hp, n_layers=1, seed=1)
    _set_kernel(model, 4)
    samples = make_samples(1, 40, N_ITEMS, MAX_LEN)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.search_k)
    rng = np.random.default_rng(6)
    b = 32
    rows = rng.integers(0, len(kb), b)
    seq, target = kb.h[rows], samples["target"][rows]
    ids = rng.integers(0, len(kb), (b, hp.search_k)).astype(np.int32)
    for r in range(b - 6):
        ids[r, rng.integers(0, hp.search_k, 2)] = rng.choice(np.flatnonzero(kb.target == target[r]), 2)
    mask = np.ones(b, np.float32)
    table = np.asarray(model.encoder.item_table())
    gd, params, rest = nnx.split(model, nnx.Param, ...)

    def objective(prm):
        m = nnx.merge(gd, prm, rest)
        args = (seq, ids, kb.memory.h, kb.memory.target, table, target, mask, hp)
        return ftragrec_terms(m.retriever, *args, reranker=m.reranker)[1]["objective_loss"]

    value, grads = jax.jit(jax.value_and_grad(objective))(params)
    w = torch.tensor(np.asarray(model.reranker.kernel[...]), requires_grad=True)
    term, _ = retriever_objective_term(
        tm.retriever_encoder,
        *(torch.from_numpy(np.array(x)) for x in (seq, ids, kb.h)),
        torch.from_numpy(kb.target.copy()).long(),
        torch.from_numpy(table),
        torch.from_numpy(target).long(),
        torch.from_numpy(mask),
        objective="knn_likelihood",
        retriever_temperature=hp.retriever_temperature,
        value_kernel=w,
    )
    term.backward()
    assert abs(float(value) - float(term.detach())) <= 1e-5 * max(1.0, float(term.detach()))
    gw, tw = np.asarray(grads["reranker"]["kernel"][...]), w.grad.numpy()
    assert np.abs(tw).max() > 0 and np.abs(gw - tw).max() <= 1e-4 * np.abs(tw).max()
    assert_retriever_grads_match(grads["retriever"], tm, 1)


def _naive_pool_then_rerank(model, kb, batch, seq, pool, k):
    """float64: the top `pool` entries by cosine that the exclusion rule allows (ties to the smaller id), then
    reordered by cosine + (W s)·E[t_j] (ties to the smaller id); the first k are the fused neighbours."""
    q = np.asarray(embed(model.retriever, seq), np.float64)
    keys = np.asarray(embed(model.retriever, kb.h), np.float64)
    w = np.asarray(model.reranker.kernel[...], np.float64)
    table = np.asarray(model.encoder.item_table(), np.float64)
    s = np.asarray(seq, np.float64)
    out = []
    for b in range(len(q)):
        cos = keys @ q[b]
        allowed = ~((kb.user == batch["user"][b]) & (kb.prefix_len >= batch["prefix_len"][b]))
        cand = np.flatnonzero(allowed)
        cand = cand[np.lexsort((cand, -cos[cand]))][:pool]
        full = cos[cand] + table[kb.target[cand]] @ (s[b] @ w)
        out.append(cand[np.lexsort((cand, -full))][:k])
    return np.array(out)


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_fused_neighbours_are_the_cosine_pools_best_by_full_score(backend):
    """Training (width search_k) and evaluation (width eval_search_k) both search the pool by cosine and fuse its
    best top_k by the full score; with this W the fused set differs from the cosine top_k for most queries."""
    hp = _hp(retrieval_backend=backend, retriever_pool=12)
    samples = make_samples(3, 30, N_ITEMS, MAX_LEN, min_hist=6)
    _, first = np.unique(np.c_[samples["item_seq"], samples["item_seq_len"]], axis=0, return_index=True)
    samples = {k: v[np.sort(first)] for k, v in samples.items()}  # no duplicate keys: exact cosine ties
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=2)
    _set_kernel(model, 7, scale=2.0)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, **kb_options(hp, width=hp.search_k))
    batch = batch_of(samples, np.arange(0, len(samples["target"]), 2)[:48])
    seq = kb.memory.h[batch["index"]]
    for width in (hp.search_k, hp.eval_search_k):
        _, _, ids = jax.jit(lambda b: _query_side(model, b, kb.memory, hp, seq, kb.searcher, width=width))(batch)
        want = _naive_pool_then_rerank(model, kb, batch, seq, hp.retriever_pool, hp.top_k)
        np.testing.assert_array_equal(np.asarray(ids)[:, : hp.top_k], want)
    plain = _naive_pool_then_rerank(model, kb, batch, seq, hp.top_k, hp.top_k)
    assert np.mean([set(a) != set(b) for a, b in zip(want, plain)]) > 0.5


def test_evaluation_scores_use_the_reranked_neighbours_and_full_score():
    """ftragrec_scores (kNN-LM) against numpy: the naive fused ids, P_ret = softmax((cos + u)/T), the mixture."""
    hp = _hp(fusion="knn_lm", alpha=0.3, retriever_pool=10, retriever_temperature=0.2)
    samples = make_samples(5, 30, N_ITEMS, MAX_LEN, min_hist=6)
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=4)
    _set_kernel(model, 8, scale=2.0)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, **kb_options(hp))
    batch = batch_of(samples, np.arange(1, len(samples["target"]), 5)[:32])
    got = np.asarray(jax.jit(lambda b: ftragrec_scores(model, b, kb.memory, hp=hp))(batch))
    seq = np.asarray(model.encoder(batch["item_seq"], batch["item_seq_len"]), np.float64)
    ids = _naive_pool_then_rerank(model, kb, batch, seq.astype(np.float32), hp.retriever_pool, hp.top_k)
    q = np.asarray(embed(model.retriever, seq.astype(np.float32)), np.float64)
    keys = np.asarray(embed(model.retriever, kb.h), np.float64)
    table = np.asarray(model.encoder.item_table(), np.float64)
    w = np.asarray(model.reranker.kernel[...], np.float64)
    for b in range(len(ids)):
        score = keys[ids[b]] @ q[b] + table[kb.target[ids[b]]] @ (seq[b] @ w)
        p = np.exp((score - score.max()) / hp.retriever_temperature)
        p /= p.sum()
        logits = table @ seq[b]
        base = np.exp(logits - logits.max())
        base /= base.sum()
        knn = np.zeros(len(table))
        np.add.at(knn, kb.target[ids[b]], p)
        want = np.log((1 - hp.alpha) * base + hp.alpha * knn)
        np.testing.assert_allclose(got[b], want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("objective", ["design", "knn_likelihood"])
def test_zero_w_trains_and_scores_as_the_design(objective):
    """W = 0 (its initialisation): the loss, every term and the evaluation scores equal those of the same
    configuration without value_rerank (same g; the design searches top_k, value_rerank the wider pool)."""
    kw = dict(fusion="knn_lm", alpha=0.2, retriever_objective=objective, retriever_pool=20, quality_threshold=0.0)
    on, off = _hp(**kw), _hp(**kw, value_rerank=False)
    samples = make_samples(2, 30, N_ITEMS, MAX_LEN)
    m_on = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), on, seed=1)
    m_off = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), off, seed=1)
    assert not np.asarray(m_on.reranker.kernel[...]).any()
    kb = KnowledgeBase.build(m_on.encoder, m_on.retriever, samples, **kb_options(on, width=on.search_k))
    batch = batch_of(samples, np.arange(0, len(samples["target"]), 3)[:40], 48)
    seq = kb.memory.h[batch["index"]]
    _, a_on = jax.jit(lambda b: ftragrec_loss(m_on, b, kb.memory, hp=on, seq_output=seq))(batch)
    _, a_off = jax.jit(lambda b: ftragrec_loss(m_off, b, kb.memory, hp=off, seq_output=seq))(batch)
    assert a_on.keys() == a_off.keys()
    for k in a_on:
        np.testing.assert_allclose(float(a_on[k]), float(a_off[k]), rtol=1e-6, atol=1e-7, err_msg=k)
    s_on = jax.jit(lambda b: ftragrec_scores(m_on, b, kb.memory, hp=on))(batch)
    s_off = jax.jit(lambda b: ftragrec_scores(m_off, b, kb.memory, hp=off))(batch)
    np.testing.assert_allclose(np.asarray(s_on), np.asarray(s_off), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_with_g_frozen_only_w_trains(backend):
    """freeze_retriever + value_rerank: W moves from zero, every other leaf (g included) stays bit-identical,
    and Adam keeps moments for W alone."""
    hp = _hp(retrieval_backend=backend, fusion="knn_lm", alpha=0.2, retriever_objective="knn_likelihood")
    trainable = trainable_modules(freeze_retriever=True)
    samples = make_samples(1, 30, 50, MAX_LEN)
    model = build_ftragrec(small_encoder(50, MAX_LEN), hp, seed=3)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, **kb_options(hp, width=hp.search_k))
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    before = {key_names(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert label_counts(params, trainable)[TRAIN] == 1
    tx = make_optimizer(1e-2, trainable=trainable)
    opt_state = tx.init(params)
    assert sorted(x.shape for x in jax.tree_util.tree_leaves(opt_state) if x.ndim > 0) == [(16, 16)] * 2
    step = make_ftragrec_step(gd, hp, tx, rest=rest, searcher=kb.searcher, cached=True, trainable=trainable)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = batch_of(samples, rng.choice(len(samples["target"]), 24, replace=False), 32)
        params, opt_state, aux = step(params, opt_state, batch, kb.memory)
        assert np.isfinite(float(aux["loss"])) and float(aux["objective_rows"]) > 0
    after = {key_names(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    for key, old in before.items():
        if key[0] == "reranker":
            assert np.abs(after[key]).max() > 0, "W did not train"
        else:
            assert after[key].tobytes() == old.tobytes(), f"leaf {key} changed"


def test_config_checks_and_search_widths():
    with pytest.raises(ConfigError, match="value_rerank"):
        Config(value_rerank="yes").validate()
    with pytest.raises(ConfigError, match="value_rerank"):
        FTragrecHParams(value_rerank=1)
    assert Config(value_rerank=True).validate().value_rerank is True
    hp = _hp(top_k=5, retriever_pool=30)
    assert (hp.search_k, hp.eval_search_k) == (30, 30)
    off = dataclasses.replace(hp, value_rerank=False)
    assert (off.search_k, off.eval_search_k) == (5, 5)
    assert kb_options(hp)["top_k"] == 30 and kb_options(off)["top_k"] == 5
    # a FAISS searcher narrower than the pool is refused, naming the key
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), dataclasses.replace(hp, retrieval_backend="faiss"), seed=0)
    samples = make_samples(0, 20, N_ITEMS, MAX_LEN)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="faiss", top_k=5)
    batch = batch_of(samples, np.arange(8))
    with pytest.raises(ConfigError, match="retriever_pool"):
        _query_side(model, batch, kb.memory, dataclasses.replace(hp, retrieval_backend="faiss"), None, kb.searcher)
