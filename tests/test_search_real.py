"""Retrieval on the real Amazon Beauty splits: the exclusion rule for the valid and test queries of a loaded
dataset (with and without the validation samples in the base), and `exact` = FAISS `Flat` id for id, ties
included. Beauty has many duplicate prefixes (one-item prefixes shared by many users), so many keys are
identical and many scores tie exactly; a random-init DuoRec encoder and the initial g (LN) give such keys as
well as a trained one would, and keep the test independent of any checkpoint.

CI queries every QUERY_STRIDE-th user's samples against the full base; `experiments/results/` holds the run
over every user (QUERY_STRIDE=1 in the environment).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftragrec_jax.data.dataset import default_dataset_path, load_dataset
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder
from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec
from ftragrec_jax.models.knowledge_base import KnowledgeBase, compute_keys, encode_samples
from ftragrec_jax.models.search import FaissSearcher, Memory, exact_search, excluded, retrieve

TOP_K = 20
QUERY_STRIDE = int(os.environ.get("QUERY_STRIDE", "6"))


@pytest.fixture(scope="module")
def beauty():
    dataset = load_dataset(default_dataset_path())
    encoder = build_encoder(EncoderConfig(n_items=dataset.n_items), seed=0)
    model = build_ftragrec(encoder, FTragrecHParams(retrieval_backend="exact"), seed=0)
    kb = KnowledgeBase.build(model.encoder, model.retriever, dataset.train, backend="exact", top_k=TOP_K)

    def queries(split):
        keep = np.asarray(split.user) % QUERY_STRIDE == 0
        h = encode_samples(model.encoder, np.asarray(split.item_seq)[keep], np.asarray(split.item_seq_len)[keep])
        q = np.asarray(compute_keys(model.retriever, h))
        return q, np.asarray(split.user, np.int32)[keep], np.asarray(split.prefix_len, np.int32)[keep]

    return {
        "dataset": dataset,
        "model": model,
        "kb": kb,
        "valid": queries(dataset.valid),
        "test": queries(dataset.test),
    }


def _both(keys, user, prefix, q, qu, qp, k=TOP_K):
    """(exact ids, exact scores, FAISS Flat ids) through `retrieve`, in batches as an evaluation sends them."""
    memory = Memory(
        h=jnp.asarray(keys),
        keys=jnp.asarray(keys),
        target=jnp.zeros(len(keys), jnp.int32),
        user=jnp.asarray(user),
        prefix_len=jnp.asarray(prefix),
    )
    searcher = FaissSearcher("Flat", keys.shape[1], top_k=k)
    searcher.build(keys, user, prefix)
    exact = jax.jit(lambda *a: exact_search(*a, memory.keys, memory.user, memory.prefix_len, top_k=k))
    faiss = jax.jit(lambda *a: retrieve(*a, memory, backend="faiss", top_k=k, searcher=searcher))
    ex, sc, fl = [], [], []
    for s in range(0, len(q), 1024):
        part = (q[s : s + 1024], qu[s : s + 1024], qp[s : s + 1024])
        ids, scores = exact(*part)
        ex.append(np.asarray(ids))
        sc.append(np.asarray(scores))
        fl.append(np.asarray(faiss(*part)))
    return np.concatenate(ex), np.concatenate(sc), np.concatenate(fl), searcher


@pytest.mark.parametrize("split", ["valid", "test"])
def test_exact_equals_faiss_flat_on_real_queries_ties_included(beauty, split):
    kb = beauty["kb"]
    q, qu, qp = beauty[split]
    ex, scores, flat, searcher = _both(kb.keys, kb.user, kb.prefix_len, q, qu, qp)
    assert len(q) > 3000
    # exact ties inside the returned lists (duplicate prefixes): the rule that orders them is exercised
    assert (scores[:, 1:] == scores[:, :-1]).any(axis=1).mean() > 0.02
    np.testing.assert_array_equal(flat, ex)
    assert (ex >= 0).all() and searcher.take_counts()["capped"] == 0
    assert not excluded(qu, qp, kb.user, kb.prefix_len)[np.arange(len(q))[:, None], ex].any()


def test_exclusion_rule_on_real_queries_with_validation_in_the_base(beauty):
    """extend_memory_with_valid: the base gains every validation sample before testing. A validation query must
    still never get its own sample, nor any test query a same-user entry of a prefix not shorter than its own;
    a same-user entry of a shorter prefix is allowed and does come back on real data."""
    kb, model, dataset = beauty["kb"], beauty["model"], beauty["dataset"]
    ext = KnowledgeBase(kb.h, kb.target, kb.user, kb.prefix_len, kb.keys, backend="exact", top_k=TOP_K)
    ext.extend(model.encoder, model.retriever, dataset.valid)
    n_train = len(kb.h)
    assert len(ext.h) == n_train + len(dataset.valid.target)
    same_user_allowed = 0
    for split in ("valid", "test"):
        q, qu, qp = beauty[split]
        ex, _, flat, _ = _both(ext.keys, ext.user, ext.prefix_len, q, qu, qp)
        np.testing.assert_array_equal(flat, ex)
        rows = np.arange(len(q))[:, None]
        assert not excluded(qu, qp, ext.user, ext.prefix_len)[rows, ex].any()
        own = (ex >= n_train) & (ext.user[ex] == qu[:, None])
        if split == "valid":
            assert not own.any()  # its own validation sample is in the base, and never retrieved
        same = (ext.user[ex] == qu[:, None]) & (ex >= 0)
        assert (ext.prefix_len[ex][same] < np.broadcast_to(qp[:, None], ex.shape)[same]).all()
        same_user_allowed += int(same.any(axis=1).sum())
    assert same_user_allowed > 0  # the allowed case happens on real data, so the rule is not vacuously true
