"""Samples are windows on the users' histories (data/samples.py), not an [N, max_len] copy: every batch, every
knowledge-base encoding and every DuoRec positive must hold exactly the items the materialised matrix held.
The reference below is that matrix, built the way the dataset built it before windows: one vectorised gather
of the last max_len items before each target, over interactions sorted by (user, time)."""

import numpy as np
import pytest
from flax import nnx

from ftragrec_jax.data.batches import iterate_batches
from ftragrec_jax.data.dataset import default_dataset_path, load_dataset
from ftragrec_jax.data.samples import SequenceSamples, gather_windows
from ftragrec_jax.errors import DataError
from ftragrec_jax.models.duorec import make_same_target_sampler
from ftragrec_jax.models.knowledge_base import KnowledgeBase, encode_samples
from ftragrec_jax.models.retriever import Retriever
from tests.ftragrec_helpers import small_encoder


def materialised(history, samples) -> np.ndarray:
    """The [N, max_len] item matrix of `samples` from the user histories alone: row i holds the last
    min(prefix_len, max_len) items of user[i]'s history before position prefix_len[i], right-padded with 0."""
    start_of_user = history.indptr[samples.user].astype(np.int64)
    tgt = start_of_user + samples.prefix_len
    start = np.maximum(start_of_user, tgt - samples.max_len)
    cols = np.arange(samples.max_len)
    gather = np.minimum(start[:, None] + cols[None, :], len(history.items) - 1)
    out = history.items[gather].astype(np.int32)
    out[cols[None, :] >= (tgt - start)[:, None]] = 0
    return out


@pytest.fixture(scope="module")
def beauty():
    return load_dataset(default_dataset_path())


def test_windows_hold_the_materialised_rows_on_beauty(beauty):
    for split in ("train", "valid", "test"):
        s = getattr(beauty, split)
        want = materialised(beauty.history, s)
        assert np.array_equal(s.item_seq, want), split
        assert np.array_equal(s.item_seq_len, np.minimum(s.prefix_len, s.max_len)), split
        # the target is the history item right after the prefix
        assert np.array_equal(s.target, beauty.history.items[beauty.history.indptr[s.user] + s.prefix_len]), split
        # 20 bytes per sample: the windows share the history's items, nothing is [N, max_len]
        assert s.items is beauty.history.items and s.end.dtype == np.int32
        assert s.nbytes() == 20 * len(s)
        assert all(np.ndim(v) <= 1 for v in vars(s).values() if isinstance(v, np.ndarray))


def test_training_batches_are_the_materialised_rows(beauty):
    train = beauty.train
    want = materialised(beauty.history, train)
    n = 0
    for batch in iterate_batches(train, 1000, seed=7, epoch=3):
        idx = batch["index"]
        assert batch["item_seq"].dtype == np.int32 and batch["item_seq"].shape == (1000, train.max_len)
        assert np.array_equal(batch["item_seq"], want[idx])
        for f in ("item_seq_len", "target", "user", "prefix_len"):
            assert np.array_equal(batch[f], getattr(train, f)[idx]), f
        n += int(batch["mask"].sum())
    assert n == len(train)


def test_duorec_positives_are_the_materialised_rows(beauty):
    train = beauty.train
    want = materialised(beauty.history, train)
    sampler = make_same_target_sampler(train, beauty.n_items)
    ids = np.random.default_rng(0).integers(0, len(train), 5000).astype(np.int32)
    seq, length = sampler.sequences(ids)
    assert np.array_equal(np.asarray(seq), want[ids]) and np.array_equal(np.asarray(length), train.item_seq_len[ids])
    # 4 bytes per interaction and 8 per sample on the device, not 4 * max_len per sample
    assert sampler.items.shape == (beauty.n_interactions,) and sampler.start.shape == (len(train),)


def test_knowledge_base_encodes_the_materialised_rows(beauty):
    """Encoded chunk by chunk from the windows (a chunk size that does not divide N): the same h, bit for bit,
    as the matrix encoded whole."""
    part = beauty.valid.take(np.arange(3001))
    enc = small_encoder(n_items=beauty.n_items, max_len=part.max_len, hidden=16)
    want = encode_samples(enc, materialised(beauty.history, part), part.item_seq_len, chunk_size=700)
    got = encode_samples(enc, part, None, chunk_size=700)
    assert np.array_equal(got, want)
    kb = KnowledgeBase.build(enc, Retriever(16, 32, 1, rngs=nnx.Rngs(params=0)), part, encode_chunk_size=700)
    assert np.array_equal(kb.h, want) and np.array_equal(kb.target, part.target)


def test_from_matrix_round_trips_and_take_keeps_windows():
    rng = np.random.default_rng(3)
    length = rng.integers(0, 6, 40).astype(np.int32)
    mat = np.where(np.arange(5)[None, :] < length[:, None], rng.integers(1, 99, (40, 5)), 0).astype(np.int32)
    s = SequenceSamples.from_matrix(mat, length, rng.integers(1, 99, 40), np.arange(40), length)
    assert np.array_equal(s.item_seq, mat) and s.max_len == 5 and len(s.items) == length.sum()
    sub = s.take(np.array([39, 0, 7, 7]))
    assert np.array_equal(sub.item_seq, mat[[39, 0, 7, 7]]) and sub.items is s.items
    assert np.array_equal(s.rows(slice(10, 20))["item_seq"], mat[10:20])
    assert np.array_equal(
        gather_windows(np.arange(1, 11, dtype=np.int32), np.array([3, 10]), np.array([2, 4]), 5),
        [[2, 3, 0, 0, 0], [7, 8, 9, 10, 0]],
    )


def test_windows_are_checked():
    items = np.arange(1, 11, dtype=np.int32)
    one = np.ones(1, np.int32)
    with pytest.raises(DataError, match="longer than max_len=3"):
        SequenceSamples(items, np.array([8]), np.array([4], np.int32), one, one, one, max_len=3)
    with pytest.raises(DataError, match="starts before 0"):
        SequenceSamples(items, np.array([2]), np.array([3], np.int32), one, one, one, max_len=3)
    with pytest.raises(DataError, match="ends at 11 > 10 items"):
        SequenceSamples(items, np.array([11]), np.array([3], np.int32), one, one, one, max_len=3)
    with pytest.raises(DataError, match="1-d of one length"):
        SequenceSamples(items, np.array([5, 6]), np.array([3], np.int32), one, one, one, max_len=3)
    with pytest.raises(DataError, match=r"expected \[N, L\]"):
        SequenceSamples.from_matrix(np.ones(4, np.int32), one, one, one, one)
