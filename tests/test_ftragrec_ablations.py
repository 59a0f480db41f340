"""FTragrec ablation options: kNN-LM fusion and a learnable alpha, each against a naive reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ftragrec_jax.errors import ConfigError
from ftragrec_jax.models.ftragrec import (
    FTragrecHParams,
    _query_side,
    build_ftragrec,
    ftragrec_loss,
    neighbours,
)
from ftragrec_jax.models.knowledge_base import KnowledgeBase
from ftragrec_jax.models.retriever import embed
from ftragrec_jax.models.search import retrieve
from ftragrec_jax.optim import label_counts, make_optimizer
from ftragrec_jax.scoring import bind, ftragrec_scorer
from ftragrec_jax.train.steps import make_ftragrec_step
from ftragrec_jax.trees import key_names
from tests.ftragrec_helpers import batch_of, make_samples, small_encoder

N_ITEMS, MAX_LEN = 40, 8


def _setup(**kw):
    hp = FTragrecHParams(retrieval_backend="exact", quality_threshold=0.0, top_k=4, alpha=0.3, **kw)
    samples = make_samples(2, 30, N_ITEMS, MAX_LEN)
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=1)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.top_k)
    return hp, samples, model, kb


def _retrieved(model, hp, kb, batch):
    """The model's own pieces, jitted as one program (eager dispatch compiled hundreds of one-op programs):
    the sequence vector, the retrieved ids and the neighbour weights."""

    @nnx.jit
    def run(model, item_seq, item_seq_len, user, prefix_len):
        seq = model.encoder(item_seq, item_seq_len)
        q = embed(model.retriever, seq)
        ids = retrieve(q, user, prefix_len, kb.memory, backend="exact", top_k=hp.top_k)
        nb = neighbours(model.retriever, q, seq, ids, kb.memory.h, kb.memory.target, model.encoder.item_table(), hp)
        return seq, ids, nb

    seq, ids, nb = run(model, *(jnp.asarray(batch[k]) for k in ("item_seq", "item_seq_len", "user", "prefix_len")))
    return seq, np.asarray(ids), nb


def _naive_knn_lm(model, hp, kb, batch):
    """float64 loop: p = (1-a)·softmax(s·Eᵀ) + a·Σ_j P_ret_j·onehot(t_j), from the same retrieved ids."""
    seq, ids, nb = _retrieved(model, hp, kb, batch)
    p_ret, valid = np.asarray(nb["p_ret"], np.float64), np.asarray(nb["valid"])
    logits = np.asarray(seq, np.float64) @ np.asarray(model.encoder.item_table(), np.float64).T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out = []
    for b in range(len(ids)):
        a = hp.alpha if valid[b].any() else 0.0
        mix = (1 - a) * p[b]
        for j in range(hp.top_k):
            if valid[b, j]:
                mix[kb.target[ids[b, j]]] += a * p_ret[b, j]
        out.append(mix)
    return np.asarray(out)


def test_knn_lm_scores_and_loss_match_naive_mixture():
    hp, samples, model, kb = _setup(fusion="knn_lm")
    batch = batch_of(samples, np.arange(20, 52))
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    scores = np.asarray(
        bind(ftragrec_scorer(gd, hp, rest=rest), params, kb.memory)(batch["item_seq"], batch["item_seq_len"], batch)
    )
    mix = _naive_knn_lm(model, hp, kb, batch)
    np.testing.assert_allclose(np.exp(scores), mix, rtol=2e-5, atol=1e-7)
    assert np.isclose(mix.sum(1), 1.0).all()

    # the loss term is -log p(target) of the same mixture, and its gradient reaches g and is finite
    def enhanced(p):
        return ftragrec_loss(nnx.merge(gd, p, rest), batch, kb.memory, hp=hp)[1]["enhanced_rec_loss"]

    loss, grads = jax.jit(jax.value_and_grad(enhanced))(params)
    nll = -np.log(mix[np.arange(len(mix)), batch["target"]]).mean()
    np.testing.assert_allclose(float(loss), nll, rtol=2e-5)
    leaves = jax.tree_util.tree_leaves(grads["retriever"])
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0


def test_knn_lm_ranks_a_neighbour_target_above_backbone_when_alpha_large():
    """Worked example of the mixture: with a = 0.9 the item every neighbour points to ranks first."""
    hp, samples, model, kb = _setup(fusion="knn_lm")
    hp = dataclasses.replace(hp, alpha=0.9, retriever_temperature=1e-3)
    model = build_ftragrec(model.encoder, hp, seed=1)
    batch = batch_of(samples, np.arange(40, 48))
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    scores = np.asarray(
        bind(ftragrec_scorer(gd, hp, rest=rest), params, kb.memory)(batch["item_seq"], batch["item_seq_len"], batch)
    )
    _, ids, nb = _retrieved(model, hp, kb, batch)
    p_ret = np.asarray(nb["p_ret"])
    # temperature 1e-3: P_ret is one-hot on the nearest neighbour unless cosines tie (duplicate sequences);
    # where it is, that neighbour's target holds >= 0.9 of the mass and ranks first
    sharp = p_ret.max(1) > 0.99
    assert sharp.sum() >= 4
    top_target = kb.target[ids[np.arange(len(ids)), p_ret.argmax(1)]]
    np.testing.assert_array_equal(scores.argmax(1)[sharp], top_target[sharp])


def test_learnable_alpha_trains_with_the_retriever_and_nothing_else():
    hp, samples, model, kb = _setup(learnable_alpha=True)
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    assert float(jax.nn.sigmoid(params["fusion"]["alpha_logit"][...])) == pytest.approx(0.3, rel=1e-6)
    counts = label_counts(params)
    assert counts["train"] == 6 + 1  # one FeedForward block + alpha_logit
    before = {key_names(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    tx = make_optimizer(5e-2)
    opt_state = tx.init(params)
    step = make_ftragrec_step(gd, hp, tx, rest=rest, cached=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = batch_of(samples, rng.choice(len(samples["target"]), 24, replace=False), 32)
        params, opt_state, aux = step(params, opt_state, batch, kb.memory)
    after = {key_names(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert not np.array_equal(after[("fusion", "alpha_logit", "value")], before[("fusion", "alpha_logit", "value")])
    assert 0.0 < float(aux["alpha"]) < 1.0
    for key, old in before.items():
        if key[0] == "encoder":
            assert after[key].tobytes() == old.tobytes(), key


@pytest.mark.parametrize(
    "kw", [dict(fusion="mix"), dict(fusion="knn_lm", alpha=1.0), dict(learnable_alpha=True, alpha=0.0)]
)
def test_bad_ablation_settings_rejected(kw):
    with pytest.raises(ConfigError, match="fusion|alpha"):
        FTragrecHParams(**kw)


def test_exclude_same_user_retrieves_no_sample_of_the_query_user():
    hp, samples, model, kb = _setup()
    batch = batch_of(samples, np.arange(len(samples["target"])))  # every sample of the base, not 5 rows
    assert len(batch["target"]) > 200
    seq = model.encoder(jnp.asarray(batch["item_seq"]), jnp.asarray(batch["item_seq_len"]))

    def retrieved(h):
        _, _, ids = _query_side(model, batch, kb.memory, h, seq, None)
        ids = np.asarray(ids)
        assert (ids >= 0).all()
        return kb.user[ids] == batch["user"][:, None], kb.prefix_len[ids]

    same, prefix = retrieved(hp)
    # the default rule allows the same user's shorter prefixes, and this small base has such neighbours
    assert same.any()
    assert (prefix < batch["prefix_len"][:, None])[same].all()
    same, _ = retrieved(dataclasses.replace(hp, exclude_same_user=True))
    assert not same.any()
