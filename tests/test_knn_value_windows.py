"""kNN-LM value windows (knn_value_window, knn_value_decay): each neighbour votes for its target and its user's next
training targets. Against a float64 loop over (user, prefix) lookups, for scores and the loss, with the no-future
rule for training queries."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ftragrec_jax.config import Config
from ftragrec_jax.data.samples import SequenceSamples
from ftragrec_jax.errors import ConfigError
from ftragrec_jax.evaluation import sample_ranks
from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec, ftragrec_loss
from ftragrec_jax.models.knowledge_base import KnowledgeBase, kb_options, value_windows
from ftragrec_jax.scoring import bind, ftragrec_scorer
from tests.ftragrec_helpers import batch_of, make_samples, small_encoder
from tests.test_ftragrec_ablations import _retrieved

N_ITEMS, MAX_LEN, M, DECAY = 40, 8, 3, 0.5


def _naive_windows(target, user, prefix, m):
    """Row j: the targets of entries (user_j, prefix_j + w) for w < m, 0 where no such entry exists."""
    by_key = {(int(u), int(p)): int(t) for t, u, p in zip(target, user, prefix)}
    return np.asarray([[by_key.get((int(u), int(p) + w), 0) for w in range(m)] for u, p in zip(user, prefix)])


def test_value_windows_match_lookup_with_gaps_and_shuffled_entries():
    rng = np.random.default_rng(0)
    user = rng.integers(1, 6, 300)
    prefix = rng.integers(1, 40, 300)
    keep = np.unique(np.stack([user, prefix], 1), axis=0, return_index=True)[1]  # one entry per (user, prefix)
    user, prefix = user[keep], prefix[keep]
    target = rng.integers(1, 50, len(user))
    order = rng.permutation(len(user))  # the base's order is not (user, prefix) order
    user, prefix, target = user[order], prefix[order], target[order]
    got = value_windows(target, user, prefix, 4)
    want = _naive_windows(target, user, prefix, 4)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[:, 0], target)
    assert (got[:, 1:] == 0).any() and (got[:, 1:] > 0).any()  # gaps and continuations both occur


def _setup(m=M, **kw):
    hp = FTragrecHParams(
        **{"retrieval_backend": "exact", **kw},
        quality_threshold=0.0,
        top_k=4,
        alpha=0.3,
        fusion="knn_lm",
        knn_value_window=m,
        knn_value_decay=DECAY,
    )
    samples = make_samples(2, 30, N_ITEMS, MAX_LEN)
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=1)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, **kb_options(hp))
    return hp, samples, model, kb


def _naive_mixture(model, hp, kb, batch, clip=True):
    """float64 loop: p = (1-a)·softmax(s·Eᵀ) + a·Σ_j P_ret_j·Σ_w decay**w/Z_j·onehot(window_jw), over the window
    items the query may see (clip: not of its own user at or after its target); the same retrieved ids."""
    seq, ids, nb = _retrieved(model, hp, kb, batch)
    p_ret, valid = np.asarray(nb["p_ret"], np.float64), np.asarray(nb["valid"])
    windows = _naive_windows(kb.target, kb.user, kb.prefix_len, hp.knn_value_window)
    logits = np.asarray(seq, np.float64) @ np.asarray(model.encoder.item_table(), np.float64).T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out = []
    for b in range(len(ids)):
        a = hp.alpha if valid[b].any() else 0.0
        mix = (1 - a) * p[b]
        for j in range(hp.top_k):
            if not valid[b, j]:
                continue
            e = ids[b, j]
            seen = [
                w
                for w in range(hp.knn_value_window)
                if windows[e, w] > 0
                and not (clip and kb.user[e] == batch["user"][b] and kb.prefix_len[e] + w >= batch["prefix_len"][b])
            ]
            z = sum(hp.knn_value_decay**w for w in seen)
            for w in seen:
                mix[windows[e, w]] += a * p_ret[b, j] * hp.knn_value_decay**w / z
        out.append(mix)
    return np.asarray(out)


def _scores(model, hp, kb, batch):
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    score = bind(ftragrec_scorer(gd, hp, rest=rest, searcher=kb.searcher), params, kb.memory)
    return np.asarray(score(batch["item_seq"], batch["item_seq_len"], batch))


def _after_training(batch):
    """The same rows as queries that come after all of their user's training items (validation/test queries)."""
    return {**batch, "prefix_len": np.full_like(batch["prefix_len"], 1000)}


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_window_scores_match_naive_mixture_for_later_queries(backend):
    """The windows act after the search, so both backends give the naive mixture (its ids: an exact search)."""
    hp, samples, model, kb = _setup(retrieval_backend=backend)
    batch = _after_training(batch_of(samples, np.arange(20, 60)))
    mix = _naive_mixture(model, hp, kb, batch)
    np.testing.assert_allclose(np.exp(_scores(model, hp, kb, batch)), mix, rtol=2e-5, atol=1e-7)
    assert np.isclose(mix.sum(1), 1.0).all()
    # the windows change the scores: the same retrieval with one-item values does not give them
    one = np.exp(_scores(model, dataclasses.replace(hp, knn_value_window=1), kb, batch))
    assert np.abs(one - mix).max() > 1e-3


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_training_loss_matches_naive_mixture_and_drops_the_query_users_future(backend):
    hp, samples, model, kb = _setup(retrieval_backend=backend)
    batch = batch_of(samples, np.arange(len(samples["target"])))  # every sample, as training queries
    gd, params, rest = nnx.split(model, nnx.Param, ...)

    def enhanced(p, b):
        loss = ftragrec_loss(nnx.merge(gd, p, rest), b, kb.memory, hp=hp, searcher=kb.searcher)
        return loss[1]["enhanced_rec_loss"]

    loss, grads = jax.jit(jax.value_and_grad(enhanced))(params, batch)
    rows = np.arange(len(batch["target"]))
    mix = _naive_mixture(model, hp, kb, batch)
    np.testing.assert_allclose(float(loss), -np.log(mix[rows, batch["target"]]).mean(), rtol=2e-5)
    leaves = jax.tree_util.tree_leaves(grads["retriever"])
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves) and sum(float(jnp.abs(x).sum()) for x in leaves) > 0
    # without the rule, a same-user neighbour's window would hand the query its own target: the loss would be
    # lower (so this test can tell the rule is applied)
    leaky = _naive_mixture(model, hp, kb, batch, clip=False)
    assert -np.log(leaky[rows, batch["target"]]).mean() < float(loss) - 1e-4
    # the scorer applies the same rule to the same queries
    np.testing.assert_allclose(np.exp(_scores(model, hp, kb, batch)), mix, rtol=2e-5, atol=1e-7)


def test_window_of_one_is_the_plain_knn_lm_and_builds_no_window():
    hp, samples, model, kb = _setup(m=1)
    assert kb.window is None and kb.memory.window is None
    batch = _after_training(batch_of(samples, np.arange(0, 40)))
    plain = dataclasses.replace(hp, knn_value_window=1, knn_value_decay=1.0)
    np.testing.assert_array_equal(_scores(model, hp, kb, batch), _scores(model, plain, kb, batch))


def test_entries_added_after_training_vote_for_their_own_target_only():
    hp, samples, model, kb = _setup()
    n = len(samples["target"])
    later = {k: v[:10] for k, v in samples.items()}
    later["prefix_len"] = later["prefix_len"] + 100  # after every training entry of their users
    kb.extend(model.encoder, model.retriever, later)
    assert kb.window.shape == (n + 10, M)
    np.testing.assert_array_equal(
        kb.window[:n], value_windows(samples["target"], samples["user"], kb.prefix_len[:n], M)
    )
    np.testing.assert_array_equal(kb.window[n:, 0], later["target"])
    assert (kb.window[n:, 1:] == 0).all()


def test_chunked_ranks_with_windows_equal_the_whole_catalogue():
    hp, samples, model, kb = _setup()
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    score = bind(ftragrec_scorer(gd, hp, rest=rest), params, kb.memory)
    rows = np.arange(0, len(samples["target"]), 3)
    evaluated = SequenceSamples.from_matrix(
        **{k: samples[k][rows] for k in ("item_seq", "item_seq_len", "target", "user", "prefix_len")}
    )
    want = sample_ranks(lambda s, ln, b: score(s, ln, b), evaluated, N_ITEMS, batch_size=8)
    assert len(set(want.tolist())) > 5
    for chunk in (1, 7, 16):
        np.testing.assert_array_equal(
            sample_ranks(score, evaluated, N_ITEMS, batch_size=8, item_chunk_size=chunk), want
        )


@pytest.mark.parametrize(
    "kw, key",
    [
        (dict(fusion="knn_lm", alpha=0.3, knn_value_window=0), "knn_value_window"),
        (dict(fusion="knn_lm", alpha=0.3, knn_value_decay=0.0), "knn_value_decay"),
        (dict(fusion="knn_lm", alpha=0.3, knn_value_decay=1.5), "knn_value_decay"),
    ],
)
def test_bad_window_settings_rejected_by_config_and_hparams(kw, key):
    with pytest.raises(ConfigError, match=key):
        FTragrecHParams(**kw)
    with pytest.raises(ConfigError, match=key):
        Config(**kw).validate()


def test_window_needs_knn_lm_fusion():
    """Representation fusion mixes vectors, not item distributions: a window there is refused. The check sits
    with the model's settings, which see a saved model's fusion and an evaluation's overrides together (a
    Config of overrides alone does not know the stored fusion)."""
    with pytest.raises(ConfigError, match="knn_value_window.*1 unless fusion is knn_lm"):
        FTragrecHParams(knn_value_window=3)
    Config(knn_value_window=3).validate()


def test_terms_without_values_refuse_a_window():
    """ftragrec_terms alone does not know the queries' users and prefixes, so it cannot build windows itself."""
    from ftragrec_jax.models.ftragrec import ftragrec_terms

    hp, samples, model, kb = _setup()
    batch = batch_of(samples, np.arange(8))
    seq = kb.memory.h[batch["index"]]
    ids = jnp.zeros((8, hp.top_k), jnp.int32)
    args = (model.retriever, seq, ids, kb.memory.h, kb.memory.target, model.encoder.item_table(), batch["target"])
    with pytest.raises(ConfigError, match="knn_value_window"):
        ftragrec_terms(*args, batch["mask"], hp)
