import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ftragrec_jax.models.bucketing import encode_bucketed, length_budgets
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder


def _batch(n, max_len, n_items, seed):
    rng = np.random.default_rng(seed)
    # Amazon-like: mostly short rows, a few at the cap
    lens = np.minimum(rng.geometric(0.25, size=n), max_len).astype(np.int32)
    lens[:3] = [1, max_len, max_len - 1]
    seq = rng.integers(1, n_items, size=(n, max_len)).astype(np.int32) * (np.arange(max_len)[None] < lens[:, None])
    return jnp.asarray(seq), jnp.asarray(lens), jnp.asarray(rng.integers(1, n_items, size=n).astype(np.int32))


def test_budgets():
    assert length_budgets(50) == (2, 4, 8, 16, 32, 50)
    assert length_budgets(10) == (2, 4, 8, 10)
    assert length_budgets(8) == (2, 4, 8)
    assert length_budgets(50, buckets=(8, 16, 32)) == (8, 16, 32, 50)


@pytest.mark.parametrize("n,chunk", [(300, 64), (70, 32)])
def test_bucketed_equals_plain_outputs_and_gradients(n, chunk):
    enc = build_encoder(
        EncoderConfig(
            n_items=60, max_seq_length=40, hidden_size=16, inner_size=32, hidden_dropout_prob=0.0, attn_dropout_prob=0.0
        ),
        seed=3,
    )
    graphdef, params = nnx.split(enc, nnx.Param)
    seq, lens, tgt = _batch(n, 40, 60, seed=n)

    def loss(p, bucketed):
        m = nnx.merge(graphdef, p)
        out = encode_bucketed(m, seq, lens, chunk=chunk) if bucketed else m(seq, lens)
        return optax.softmax_cross_entropy_with_integer_labels(m.scores(out), tgt).mean(), out

    (l0, o0), g0 = jax.jit(jax.value_and_grad(lambda p: loss(p, False), has_aux=True))(params)
    (l1, o1), g1 = jax.jit(jax.value_and_grad(lambda p: loss(p, True), has_aux=True))(params)
    np.testing.assert_allclose(np.asarray(o1), np.asarray(o0), atol=1e-6)
    assert abs(float(l1) - float(l0)) < 1e-6
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-4)


def test_bucketed_with_dropout_runs_and_differs_per_key():
    enc = build_encoder(EncoderConfig(n_items=60, max_seq_length=20, hidden_size=16, inner_size=32), seed=0)
    seq, lens, _ = _batch(200, 20, 60, seed=1)
    k = jax.random.key(0, impl="unsafe_rbg")
    a = encode_bucketed(enc, seq, lens, k, chunk=64)
    b = encode_bucketed(enc, seq, lens, jax.random.fold_in(k, 1), chunk=64)
    assert a.shape == (200, 16) and bool(jnp.all(jnp.isfinite(a))) and not np.allclose(a, b)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_last_row_shortcut_equals_gather_of_all_states(n_layers):
    """`encoder(seq, len)` runs its last block on one query row; it must equal reading row len-1 of the full
    states, in value and gradient, including a length pointing past the items (row of padding)."""
    enc = build_encoder(
        EncoderConfig(
            n_items=60,
            max_seq_length=12,
            hidden_size=16,
            inner_size=32,
            n_layers=n_layers,
            hidden_dropout_prob=0.0,
            attn_dropout_prob=0.0,
        ),
        seed=5,
    )
    graphdef, params = nnx.split(enc, nnx.Param)
    seq, lens, tgt = _batch(40, 12, 60, seed=1)
    lens = lens.at[5].set(12)  # reads padded positions: must still agree

    def loss(p, shortcut):
        m = nnx.merge(graphdef, p)
        if shortcut:
            out = m(seq, lens)
        else:
            out = m.encode_all(seq)[jnp.arange(seq.shape[0]), jnp.clip(lens - 1, 0, 11)]
        return optax.softmax_cross_entropy_with_integer_labels(m.scores(out), tgt).mean(), out

    (l0, o0), g0 = jax.jit(jax.value_and_grad(lambda p: loss(p, False), has_aux=True))(params)
    (l1, o1), g1 = jax.jit(jax.value_and_grad(lambda p: loss(p, True), has_aux=True))(params)
    np.testing.assert_allclose(np.asarray(o1), np.asarray(o0), atol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-4)


def _grad_temporaries(n_items: int) -> int:
    """XLA's temporary bytes of the bucketed encoder's gradient (no CE: the table is read by the gather alone)."""
    enc = build_encoder(
        EncoderConfig(n_items=n_items, max_seq_length=20, hidden_size=32, inner_size=32, n_layers=1), seed=0
    )
    graphdef, params = nnx.split(enc, nnx.Param)
    seq, lens, _ = _batch(256, 20, n_items, seed=1)

    def loss(p):
        return jnp.sum(encode_bucketed(nnx.merge(graphdef, p), seq, lens) ** 2)

    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes


def test_bucketed_gradient_holds_the_item_table_about_once():
    """The table's gradient is one scatter-add of the rows gathered before the bucketed scan. Read inside the
    scan's switch branches, every branch and the scan's carry held a table-sized cotangent of its own (about 7
    tables per encoder pass, 4 GB of DuoRec's step at 10^6 items). Measured as the growth of XLA's temporaries
    between two catalogue sizes, in tables."""
    small, big = 1_000, 100_000
    table_growth = (big - small) * 32 * 4
    growth = _grad_temporaries(big) - _grad_temporaries(small)
    assert growth <= 1.5 * table_growth, growth / table_growth
