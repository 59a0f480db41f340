"""FTragrec ablation options: kNN-LM fusion, a learnable alpha and a learnable temperature, each against a naive
reference."""

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


@pytest.mark.parametrize(
    "flag, leaf, value, start",
    [
        ("learnable_alpha", "alpha_logit", lambda x: jax.nn.sigmoid(x), 0.3),
        ("learnable_temperature", "log_temperature", lambda x: jnp.exp(x), 0.07),
    ],
)
def test_learnable_scalar_trains_with_the_retriever_and_nothing_else(flag, leaf, value, start):
    hp, samples, model, kb = _setup(**{flag: True})
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    assert list(params["fusion"]) == [leaf]  # only the scalar asked for
    assert float(value(params["fusion"][leaf][...])) == pytest.approx(start, rel=1e-6)
    counts = label_counts(params)
    assert counts["train"] == 6 + 1  # one FeedForward block + the scalar
    before = {key_names(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    tx = make_optimizer(5e-2)
    opt_state = tx.init(params)
    step = make_ftragrec_step(gd, hp, tx, rest=rest, cached=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = batch_of(samples, rng.choice(len(samples["target"]), 24, replace=False), 32)
        used = float(value(params["fusion"][leaf][...]))  # the step's loss runs on the parameters it is given
        params, opt_state, aux = step(params, opt_state, batch, kb.memory)
        assert float(aux["alpha" if flag == "learnable_alpha" else "temperature"]) == pytest.approx(used, rel=1e-6)
    after = {key_names(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert not np.array_equal(after[("fusion", leaf, "value")], before[("fusion", leaf, "value")])
    for key, old in before.items():
        if key[0] == "encoder":
            assert after[key].tobytes() == old.tobytes(), key


def test_learned_temperature_is_the_one_the_scorer_and_the_loss_use():
    """A model whose learned temperature sits at T scores and computes its loss exactly as the same weights
    with a fixed retriever_temperature T (the fixed path is the one tested against naive references)."""
    hp, samples, model, kb = _setup(learnable_temperature=True, fusion="knn_lm")
    model.fusion.log_temperature.value = jnp.log(jnp.float32(0.21))
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    fixed_hp = dataclasses.replace(
        hp, learnable_temperature=False, retriever_temperature=float(jnp.exp(jnp.log(jnp.float32(0.21))))
    )
    fixed = build_ftragrec(model.encoder, fixed_hp, seed=1)
    fgd, fparams, frest = nnx.split(fixed, nnx.Param, ...)
    fparams["retriever"] = params["retriever"]
    batch = batch_of(samples, np.arange(10, 42))
    args = (batch["item_seq"], batch["item_seq_len"], batch)
    learned = np.asarray(bind(ftragrec_scorer(gd, hp, rest=rest), params, kb.memory)(*args))
    same = np.asarray(bind(ftragrec_scorer(fgd, fixed_hp, rest=frest), fparams, kb.memory)(*args))
    np.testing.assert_allclose(learned, same, rtol=1e-6, atol=1e-6)
    default = np.asarray(bind(ftragrec_scorer(fgd, hp, rest=frest), fparams, kb.memory)(*args))
    assert np.abs(default - same).max() > 1e-3  # 0.21 is not the configured 0.07: the test can tell them apart
    loss = ftragrec_loss(nnx.merge(gd, params, rest), batch, kb.memory, hp=hp)[1]
    fixed_loss = ftragrec_loss(nnx.merge(fgd, fparams, frest), batch, kb.memory, hp=fixed_hp)[1]
    for k in ("loss", "enhanced_rec_loss", "kl_loss"):
        assert float(loss[k]) == pytest.approx(float(fixed_loss[k]), rel=1e-6), k


def test_a_retriever_objective_does_not_train_the_learned_temperature():
    """The objective sees the learned temperature but leaves it to the design's terms (module docstring)."""
    hp, samples, model, kb = _setup(learnable_temperature=True, retriever_objective="contrastive", retriever_pool=12)
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    batch = batch_of(samples, np.arange(0, 60, 2))

    def term(p, name):
        return ftragrec_loss(nnx.merge(gd, p, rest), batch, kb.memory, hp=hp)[1][name]

    g_obj = jax.grad(lambda p: term(p, "objective_loss"))(params)
    assert float(term(params, "objective_loss")) > 0
    assert float(g_obj["fusion"]["log_temperature"][...]) == 0.0
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree_util.tree_leaves(g_obj["retriever"])) > 0
    g_fused = jax.grad(lambda p: term(p, "enhanced_rec_loss"))(params)
    assert float(g_fused["fusion"]["log_temperature"][...]) != 0.0


@pytest.mark.parametrize(
    "kw",
    [
        dict(fusion="mix"),
        dict(fusion="knn_lm", alpha=1.0),
        dict(learnable_alpha=True, alpha=0.0),
        dict(learnable_temperature="yes"),
    ],
)
def test_bad_ablation_settings_rejected(kw):
    with pytest.raises(ConfigError, match="fusion|alpha|learnable_temperature"):
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


@pytest.mark.parametrize(
    "key, flag", [("alpha", "learnable_alpha"), ("retriever_temperature", "learnable_temperature")]
)
def test_an_evaluation_cannot_override_a_learned_scalar(key, flag):
    from ftragrec_jax.scoring import check_inference_overrides

    learned = {"model": "ftragrec", "ftragrec": {flag: True}}
    with pytest.raises(ConfigError, match=f"'{key}' is a trained parameter of this model \\({flag}\\)"):
        check_inference_overrides({key: 0.1}, learned, "runs/x/best_model")
    check_inference_overrides({key: 0.1}, {"model": "ftragrec", "ftragrec": {flag: False}}, "runs/x/best_model")
    other = "retriever_temperature" if key == "alpha" else "alpha"
    check_inference_overrides({other: 0.1}, learned, "runs/x/best_model")  # the fixed one still may change
