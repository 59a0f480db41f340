"""The retriever objectives (retriever_objective "contrastive" / "usefulness", models/ftragrec.py): the JAX terms
and their retriever gradients against the PyTorch reference written from the spec
(converters/reference/torch_ftragrec.py), the search pool they use, and their config checks."""

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
    build_ftragrec,
    ftragrec_loss,
    ftragrec_terms,
    validate_setup,
)
from ftragrec_jax.models.knowledge_base import KnowledgeBase  # noqa: E402
from ftragrec_jax.models.search import FaissSearcher, exact_search  # noqa: E402
from tests.ftragrec_helpers import batch_of, make_samples, small_encoder  # noqa: E402
from tests.test_parity_ftragrec import _pair as parity_pair  # noqa: E402
from tests.test_parity_ftragrec import assert_retriever_grads_match  # noqa: E402
from tests.test_search import _tie_heavy, naive_top_k  # noqa: E402

N_ITEMS, MAX_LEN = 60, 8


def _pair(hp):
    """The parity pair of test_parity_ftragrec.py: the same weights (g perturbed off LN(x)) on both sides."""
    _, model, tm = parity_pair(hp, n_layers=hp.retriever_layers)
    return model, tm


@pytest.mark.parametrize("learned_temperature", [False, True])
@pytest.mark.parametrize("objective", ["contrastive", "usefulness"])
def test_objective_terms_and_gradients_match_torch(objective, learned_temperature):
    """learned_temperature: the temperature is a parameter (learnable_temperature) at 0.11, and its gradient
    (through the design's terms only) matches too."""
    hp = FTragrecHParams(
        top_k=4,
        retrieval_backend="exact",
        quality_threshold=0.1,
        retriever_objective=objective,
        retriever_pool=16,
        retriever_loss_weight=2.5,
        usefulness_temperature=0.5,
    )
    model, tm = _pair(hp)
    log_t = np.log(np.float32(0.11 if learned_temperature else hp.retriever_temperature))
    samples = make_samples(0, 40, N_ITEMS, MAX_LEN)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.search_k)
    rng = np.random.default_rng(3)
    b = 40
    rows = rng.integers(0, len(kb), b)
    seq, target = kb.h[rows], samples["target"][rows]
    ids = rng.integers(-1, len(kb), (b, hp.search_k)).astype(np.int32)
    # positives (entries whose target is the row's) in most rows, none in some, rows with nothing valid
    for r in range(0, b - 8):
        same = np.flatnonzero(kb.target == target[r])
        ids[r, rng.integers(0, hp.search_k, 3)] = rng.choice(same, 3)
    ids[b - 3 :] = -1
    mask = (np.arange(b) < b - 2).astype(np.float32)
    table = np.asarray(model.encoder.item_table())

    gd, rparams = nnx.split(model.retriever, nnx.Param)

    def jax_loss(p, lt):
        temperature = jax.numpy.exp(lt) if learned_temperature else None
        return ftragrec_terms(
            nnx.merge(gd, p), seq, ids, kb.memory.h, kb.memory.target, table, target, mask, hp, temperature=temperature
        )

    (_, aux), (grads, g_log_t) = jax.jit(jax.value_and_grad(jax_loss, argnums=(0, 1), has_aux=True))(rparams, log_t)
    t_log_t = torch.tensor(log_t, requires_grad=True)
    t_hp = {**tm.hp, "retriever_temperature": torch.exp(t_log_t)} if learned_temperature else tm.hp
    t = {k: torch.from_numpy(np.array(v)) for k, v in dict(seq=seq, h=kb.h, table=table).items()}
    t_ids, t_target = torch.from_numpy(ids).long(), torch.from_numpy(target).long()
    t_kb_target, t_mask = torch.from_numpy(kb.target.copy()).long(), torch.from_numpy(mask)
    design, terms, _ = torch_terms(
        tm.retriever_encoder, t["seq"], t_ids[:, : hp.top_k], t["h"], t_kb_target, t["table"], t_target, t_mask, **t_hp
    )
    term, share = retriever_objective_term(
        tm.retriever_encoder,
        t["seq"],
        t_ids,
        t["h"],
        t_kb_target,
        t["table"],
        t_target,
        t_mask,
        objective=objective,
        retriever_temperature=t_hp["retriever_temperature"],
        usefulness_temperature=hp.usefulness_temperature,
    )
    total = design + hp.retriever_loss_weight * term
    total.backward()
    assert 0 < float(share.detach()) < 1 and float(term.detach()) > 0
    want = {"objective_loss": term, "objective_rows": share, "loss": total, "kl_loss": terms["kl_loss"]}
    for k, v in want.items():
        assert abs(float(aux[k]) - float(v.detach())) <= 1e-5 * max(1.0, abs(float(v.detach()))), k
    assert_retriever_grads_match(grads, tm, hp.retriever_layers)
    if learned_temperature:
        ref = float(t_log_t.grad)
        assert ref != 0.0
        assert abs(float(g_log_t) - ref) <= 1e-4 * abs(ref), (float(g_log_t), ref)


def test_contrastive_worked_example():
    """Two pool entries share the row's target, one does not: the term is -log of their retrieval mass."""
    hp = FTragrecHParams(
        top_k=1,
        retrieval_backend="exact",
        retriever_objective="contrastive",
        retriever_pool=3,
        retriever_temperature=1.0,
    )
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=0)
    h = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    kb_target = np.array([7, 9, 7], np.int32)
    seq = h[:1] + 0.1
    table = np.asarray(model.encoder.item_table())
    _, aux = ftragrec_terms(
        model.retriever, seq, np.array([[0, 1, 2]], np.int32), h, kb_target, table, np.array([7]), np.ones(1), hp
    )
    from ftragrec_jax.models.retriever import embed

    q, keys = np.asarray(embed(model.retriever, seq))[0], np.asarray(embed(model.retriever, h))
    r = np.exp(keys @ q / hp.retriever_temperature)
    r /= r.sum()
    np.testing.assert_allclose(float(aux["objective_loss"]), -np.log(r[0] + r[2]), rtol=1e-5)


def test_the_pool_starts_with_the_top_k_search():
    """The fused neighbours are the pool's first top_k: equal to a top_k search, ties included, on both backends."""
    q, qu, qp, keys, user, prefix = _tie_heavy(9)
    k, pool = 5, 40
    for chunk in (64, 100000):
        wide, _ = jax.jit(lambda *a: exact_search(*a, top_k=pool, chunk_size=chunk))(q, qu, qp, keys, user, prefix)
        np.testing.assert_array_equal(np.asarray(wide)[:, :k], naive_top_k(q, qu, qp, keys, user, prefix, k))
    searcher = FaissSearcher("Flat", keys.shape[1], top_k=pool, overfetch=8)
    searcher.build(keys, user, prefix)
    np.testing.assert_array_equal(searcher.search_host(q, qu, qp)[:, :k], naive_top_k(q, qu, qp, keys, user, prefix, k))


def test_objective_leaves_the_fused_part_and_the_exclusion_rule_alone():
    """With an objective the design's terms are unchanged (they see the pool's first top_k), and no pool entry is
    the query's own sample or a later one of its user."""
    base = FTragrecHParams(top_k=3, retrieval_backend="exact", quality_threshold=0.0)
    hp = dataclasses.replace(base, retriever_objective="contrastive", retriever_pool=25)
    samples = make_samples(2, 40, N_ITEMS, MAX_LEN)
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=1)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.search_k)
    batch = batch_of(samples, np.arange(0, len(samples["target"]), 2)[:48], 48)
    _, plain = jax.jit(lambda b: ftragrec_loss(model, b, kb.memory, hp=base))(batch)
    _, wide = jax.jit(lambda b: ftragrec_loss(model, b, kb.memory, hp=hp))(batch)
    for k in ("rec_loss", "enhanced_rec_loss", "kl_loss", "fallback_fraction", "neighbours"):
        assert float(wide[k]) == float(plain[k]), k
    np.testing.assert_allclose(float(wide["loss"]), float(plain["loss"]) + float(wide["objective_loss"]), rtol=1e-6)
    from ftragrec_jax.models.ftragrec import _query_side

    _, _, ids = jax.jit(lambda b: _query_side(model, b, kb.memory, hp, kb.memory.h[b["index"]], None))(batch)
    ids = np.asarray(ids)
    assert ids.shape == (48, 25)
    for r, row in enumerate(ids):
        got = row[row >= 0]
        same_user = kb.user[got] == batch["user"][r]
        assert not (same_user & (kb.prefix_len[got] >= batch["prefix_len"][r])).any()


def test_objective_config_is_checked():
    with pytest.raises(ConfigError, match="retriever_objective"):
        FTragrecHParams(retriever_objective="replug")
    with pytest.raises(ConfigError, match="retriever_objective"):
        Config(retriever_objective="replug").validate()
    for key, bad in (("retriever_pool", 0), ("usefulness_temperature", 0.0), ("retriever_loss_weight", -1.0)):
        with pytest.raises(ConfigError, match=key):
            Config(**{key: bad}).validate()
    assert FTragrecHParams(top_k=5, retriever_pool=100).search_k == 5  # the design searches top_k only
    assert FTragrecHParams(top_k=5, retriever_objective="usefulness", retriever_pool=100).search_k == 100
    assert FTragrecHParams(top_k=50, retriever_objective="contrastive", retriever_pool=20).search_k == 50
    with pytest.raises(ConfigError, match="retriever_pool"):
        validate_setup(
            FTragrecHParams(top_k=5, retriever_objective="contrastive", retriever_pool=101), n_base=100, hidden_size=16
        )
