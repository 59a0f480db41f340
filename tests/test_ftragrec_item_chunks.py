"""FTragrec over item chunks (config key item_chunk_size): the loss, its gradients, the evaluator's ranks and the
cached backbone CE equal the whole-catalogue ones, and no [B, n_items] array is left in the chunked step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ftragrec_jax.data.samples import SequenceSamples, UserHistory
from ftragrec_jax.evaluation import sample_ranks
from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec, ftragrec_terms
from ftragrec_jax.models.knowledge_base import KnowledgeBase, backbone_ce
from ftragrec_jax.models.softmax_ce import softmax_mean
from ftragrec_jax.scoring import ChunkedScoreFn, Scorer, bind, ftragrec_scorer
from ftragrec_jax.train.steps import make_ftragrec_step
from tests.ftragrec_helpers import batch_of, make_samples, small_encoder

N_ITEMS, MAX_LEN, CHUNK = 53, 8, 16  # 53 is prime: no chunk size divides it, the last chunk is padded


@pytest.fixture(scope="module")
def setup():
    samples = make_samples(0, 40, N_ITEMS, MAX_LEN)
    # threshold -1 keeps every neighbour and alpha 0.5 makes them weigh: the fused scores differ from s·Eᵀ
    hp = FTragrecHParams(
        retrieval_backend="exact",
        top_k=4,
        retriever_pool=12,
        quality_threshold=-1.0,
        alpha=0.5,
        retriever_inner_size=16,
    )
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=1)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.search_k)
    return samples, hp, model, kb


def _ids(kb, rows, width, seed=0):
    """Random retrieved ids [B, width] with some -1 (missing) entries and one row with none."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(-1, len(kb), (len(rows), width)).astype(np.int32)
    ids[-1] = -1
    return ids


@pytest.mark.parametrize("fusion", ["representation", "knn_lm"])
@pytest.mark.parametrize("objective", ["design", "usefulness", "contrastive"])
def test_chunked_terms_and_gradients_equal_the_whole_catalogue(setup, fusion, objective):
    samples, hp, model, kb = setup
    hp = dataclasses.replace(hp, fusion=fusion, retriever_objective=objective)
    rows = np.arange(0, 3 * 24, 3)
    seq, target = kb.h[rows], samples["target"][rows]
    ids = _ids(kb, rows, hp.search_k)
    mask = (np.arange(len(rows)) < len(rows) - 2).astype(np.float32)
    table = model.encoder.item_table()
    gd, rparams = nnx.split(model.retriever, nnx.Param)

    def loss(p, chunk):
        r = nnx.merge(gd, p)
        return ftragrec_terms(
            r, seq, ids, kb.memory.h, kb.memory.target, table, target, mask, hp, item_chunk_size=chunk
        )

    run = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (_, whole), g_whole = run(rparams, 0)
    for chunk in (1, 7, CHUNK, N_ITEMS - 1):
        (_, part), g_part = run(rparams, chunk)
        for k in whole:
            np.testing.assert_allclose(float(part[k]), float(whole[k]), rtol=2e-6, atol=1e-6, err_msg=k)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), g_part, g_whole)
    assert float(whole["enhanced_rec_loss"]) != pytest.approx(float(whole["rec_loss"]))  # neighbours matter


def test_softmax_mean_over_chunks():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32)
    table = jnp.asarray(rng.standard_normal((23, 6)), jnp.float32)
    want = np.asarray(jax.nn.softmax(x @ table.T, axis=-1) @ table)
    for chunk in (1, 4, 22):
        np.testing.assert_allclose(np.asarray(softmax_mean(x, table, chunk)), want, rtol=1e-5, atol=1e-6)


def _shapes(jaxpr, out):
    """Every intermediate's shape in a closed jaxpr, sub-jaxprs (scan bodies, custom rules) included."""
    for eqn in jaxpr.eqns:
        out.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else (p,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    _shapes(inner if hasattr(inner, "eqns") else inner.jaxpr, out)
    return out


@pytest.mark.parametrize(
    "fusion,objective,cached", [("representation", "usefulness", False), ("knn_lm", "design", True)]
)
def test_chunked_step_has_no_catalogue_wide_array(setup, fusion, objective, cached):
    """The training step's jaxpr with item_chunk_size holds no [B, n_items] (nor [B, k, n_items]) array; without
    it, it does (so this test can tell)."""
    samples, hp, model, _ = setup
    hp = dataclasses.replace(hp, fusion=fusion, retriever_objective=objective)
    kb = KnowledgeBase.build(
        model.encoder,
        model.retriever,
        samples,
        backend="exact",
        top_k=hp.search_k,
        with_rec_ce=cached,
        item_chunk_size=CHUNK,
    )
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-3)
    batch = batch_of(samples, np.arange(10))

    def catalogue_wide(chunk):
        step = make_ftragrec_step(gd, hp, tx, rest=rest, cached=cached, item_chunk_size=chunk)
        closed = jax.make_jaxpr(step)(params, tx.init(params), batch, kb.memory)
        return {s for s in _shapes(closed.jaxpr, set()) if len(s) >= 2 and s[0] == 10 and s[-1] == N_ITEMS}

    assert catalogue_wide(CHUNK) == set()
    if fusion == "representation" or not cached:
        assert catalogue_wide(0)


def test_cached_backbone_ce_over_chunks(setup):
    samples, _, model, kb = setup
    whole = backbone_ce(model.encoder, kb.h, samples["target"])
    np.testing.assert_allclose(
        backbone_ce(model.encoder, kb.h, samples["target"], item_chunk_size=7), whole, rtol=1e-6, atol=2e-6
    )


@pytest.mark.parametrize("fusion", ["representation", "knn_lm"])
def test_chunked_ranks_equal_the_whole_catalogue(setup, fusion):
    """The evaluator's ranks of an FTragrec ScoreFn counted over item chunks are those of its full scores, with
    and without masking the history (the same-user exclusion rule applies in both)."""
    samples, hp, model, kb = setup
    hp = dataclasses.replace(hp, fusion=fusion)
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    score = bind(ftragrec_scorer(gd, hp, rest=rest), params, kb.memory)
    assert isinstance(score, ChunkedScoreFn)
    rows = np.arange(0, len(samples["target"]), 2)
    evaluated = SequenceSamples.from_matrix(
        **{k: samples[k][rows] for k in ("item_seq", "item_seq_len", "target", "user", "prefix_len")}
    )
    users, per_user = samples["user"], []
    for u in range(1, users.max() + 1):  # a user's history: its first item, then its samples' targets in order
        mine = np.flatnonzero(users == u)
        per_user.append(np.concatenate([samples["item_seq"][mine[0], :1], samples["target"][mine]]))
    offsets = np.concatenate([[0, 0], np.cumsum([len(r) for r in per_user])]).astype(np.int64)
    history = UserHistory(offsets, np.concatenate(per_user).astype(np.int32))
    for hist in (None, history):
        want = sample_ranks(lambda s, ln, b: score(s, ln, b), evaluated, N_ITEMS, batch_size=8, history=hist)
        assert len(set(want.tolist())) > 5  # the ranks are spread out, so equal ranks are not luck
        for chunk in (1, 7, CHUNK):
            got = sample_ranks(score, evaluated, N_ITEMS, batch_size=8, history=hist, item_chunk_size=chunk)
            np.testing.assert_array_equal(got, want)

    def no_whole_scores(*args):
        raise AssertionError("scored the whole catalogue although item_chunk_size was set")

    # a saved model (load_model_dir's Scorer) handed to sample_ranks directly is counted over chunks too
    only_chunks = ChunkedScoreFn(no_whole_scores, score.prepare, score.chunk_scores, score.item_table)
    got = sample_ranks(Scorer(only_chunks, meta={}), evaluated, N_ITEMS, batch_size=8, item_chunk_size=7)
    np.testing.assert_array_equal(got, sample_ranks(score, evaluated, N_ITEMS, batch_size=8))
