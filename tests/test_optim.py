"""The freeze mask: labels cover every leaf, frozen leaves stay bit-identical, Adam keeps retriever moments only."""

import jax
import numpy as np
import pytest
from flax import nnx

from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec
from ftragrec_jax.models.knowledge_base import KnowledgeBase
from ftragrec_jax.optim import FROZEN, TRAIN, is_trainable, label_counts, make_optimizer, param_labels
from ftragrec_jax.train.steps import make_ftragrec_step
from ftragrec_jax.trees import key_names
from tests.ftragrec_helpers import batch_of, make_samples, small_encoder


def _model(hp):
    return build_ftragrec(small_encoder(50, 8), hp, seed=3)


def _leaves(tree):
    return {key_names(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_every_parameter_has_a_label_and_only_the_retriever_trains():
    hp = FTragrecHParams(retriever_layers=2)
    _, params, _ = nnx.split(_model(hp), nnx.Param, ...)
    labels = param_labels(params)
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_l = jax.tree_util.tree_flatten_with_path(labels)[0]
    assert [p for p, _ in flat_p] == [p for p, _ in flat_l]
    for path, label in flat_l:
        assert label in (TRAIN, FROZEN)
        assert (label == TRAIN) == (key_names(path)[0] == "retriever")
    counts = label_counts(params)
    assert counts[TRAIN] == 2 * 6  # two FeedForward blocks: dense_1, dense_2, layer_norm x (kernel|scale, bias)
    assert counts[FROZEN] == len(flat_p) - counts[TRAIN] > 0
    # a parameter nobody listed is frozen ("no schedule means frozen")
    assert not is_trainable((jax.tree_util.DictKey("new_head"), jax.tree_util.DictKey("kernel")))


@pytest.mark.parametrize(
    "backend,objective", [("exact", "design"), ("faiss", "design"), ("exact", "contrastive"), ("faiss", "usefulness")]
)
def test_n_steps_change_only_the_retriever(backend, objective):
    hp = FTragrecHParams(
        retrieval_backend=backend, quality_threshold=0.0, top_k=3, retriever_objective=objective, retriever_pool=20
    )
    samples = make_samples(1, 30, 50, 8)
    model = _model(hp)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend=backend, top_k=hp.search_k)
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    before = _leaves(params)
    tx = make_optimizer(1e-2)
    opt_state = tx.init(params)
    # Adam's moments exist for retriever leaves only (set_to_zero keeps no state)
    retriever_shapes = sorted(v.shape for k, v in before.items() if k[0] == "retriever")
    moment_shapes = sorted(x.shape for x in jax.tree_util.tree_leaves(opt_state) if x.ndim > 0)
    assert moment_shapes == sorted(retriever_shapes * 2)
    step = make_ftragrec_step(gd, hp, tx, rest=rest, searcher=kb.searcher, cached=True)
    rng = np.random.default_rng(0)
    for _ in range(4):
        batch = batch_of(samples, rng.choice(len(samples["target"]), 24, replace=False), 32)
        params, opt_state, aux = step(params, opt_state, batch, kb.memory)
        assert np.isfinite(float(aux["loss"]))
        assert ("objective_loss" in aux) == (objective != "design")
    after = _leaves(params)
    assert before.keys() == after.keys()
    for key, old in before.items():
        if key[0] == "retriever":
            assert not np.array_equal(after[key], old), f"retriever leaf {key} did not change"
        else:
            assert after[key].tobytes() == old.tobytes(), f"frozen leaf {key} changed"


@pytest.mark.parametrize("learnable", ["", "learnable_alpha", "learnable_temperature"])
def test_freeze_retriever_keeps_g_at_its_initialisation(learnable):
    """The freeze_retriever ablation: g's leaves stay bit-identical through steps (only a learnable alpha or
    temperature may train), and Adam keeps moments for nothing else."""
    from ftragrec_jax.optim import trainable_modules

    flags = {learnable: True} if learnable else {}
    hp = FTragrecHParams(retrieval_backend="exact", quality_threshold=0.0, top_k=3, **flags)
    trainable = trainable_modules(freeze_retriever=True)
    assert trainable == ("reranker", "fusion") and trainable_modules() == ("retriever", "reranker", "fusion")
    samples = make_samples(1, 30, 50, 8)
    model = _model(hp)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.top_k)
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    before = _leaves(params)
    assert label_counts(params, trainable)[TRAIN] == (1 if learnable else 0)
    tx = make_optimizer(1e-2, trainable=trainable)
    opt_state = tx.init(params)
    moment_shapes = [x.shape for x in jax.tree_util.tree_leaves(opt_state) if x.ndim > 0]
    assert moment_shapes == []  # alpha_logit and log_temperature are scalars; g has no moments
    step = make_ftragrec_step(gd, hp, tx, rest=rest, searcher=kb.searcher, cached=True, trainable=trainable)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = batch_of(samples, rng.choice(len(samples["target"]), 24, replace=False), 32)
        params, opt_state, aux = step(params, opt_state, batch, kb.memory)
        assert np.isfinite(float(aux["loss"]))
    after = _leaves(params)
    for key, old in before.items():
        if key[0] == "fusion":
            assert not np.array_equal(after[key], old), f"{learnable} did not train"
        else:
            assert after[key].tobytes() == old.tobytes(), f"leaf {key} changed"


def test_no_retriever_retrieves_by_the_raw_cosine():
    """retriever_layers 0: no g parameters; queries and keys are h/|h|, so the neighbours are the naive top-k of
    the frozen vectors' cosine (ties to the smaller id), within the exclusion rule."""
    from ftragrec_jax.models.ftragrec import _query_side

    hp = FTragrecHParams(retrieval_backend="exact", quality_threshold=0.0, top_k=4, retriever_layers=0)
    samples = make_samples(2, 40, 50, 8)
    model = _model(hp)
    assert not any(k[0] == "retriever" for k in _leaves(nnx.split(model, nnx.Param, ...)[1]))
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.top_k)
    h = np.asarray(kb.h, np.float64)
    unit = h / np.linalg.norm(h, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(kb.keys), unit, rtol=1e-6, atol=1e-6)
    rows = np.arange(0, len(samples["target"]), 3)
    batch = batch_of(samples, rows, len(rows))
    _, _, ids = _query_side(model, batch, kb.memory, hp, np.asarray(kb.h)[rows], None)
    user, prefix = np.asarray(samples["user"]), np.asarray(samples["prefix_len"])
    for r, got in zip(rows, np.asarray(ids)):
        cos = unit @ unit[r]
        allowed = (user != user[r]) | (prefix < prefix[r])
        best = np.sort(cos[allowed])[::-1][: hp.top_k]
        assert allowed[got].all(), r  # the exclusion rule holds
        # the neighbours are the top-k by the raw cosine (values compared: float32 search vs float64 reference)
        np.testing.assert_allclose(cos[got], best, atol=1e-5, err_msg=str(r))
