"""The vector-form full-softmax CE against the naive reference: log_softmax of the logits matrix, column t."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftragrec_jax.models.softmax_ce import cross_entropy_rows, masked_cross_entropy


def _naive(x, table, target):
    logits = x @ table.T
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), target[:, None], axis=1)[:, 0]


@pytest.mark.parametrize("scale", [0.1, 5.0])  # 5.0: logits in the hundreds, where a naive exp would overflow
def test_rows_and_gradients_match_the_logits_form(scale):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((37, 16)) * scale, jnp.float32)
    table = jnp.asarray(rng.standard_normal((101, 16)) * scale, jnp.float32)
    target = jnp.asarray(rng.integers(0, 101, 37), jnp.int32).at[0].set(0)  # row 0 is a real item here
    np.testing.assert_allclose(cross_entropy_rows(x, table, target), _naive(x, table, target), rtol=1e-5, atol=1e-4)
    w = jnp.asarray(rng.integers(0, 2, 37), jnp.float32).at[1].set(1.0)
    f = lambda fn: jax.grad(lambda a, b: jnp.sum(fn(a, b, target) * w), argnums=(0, 1))(x, table)  # noqa: E731
    for got, want in zip(f(cross_entropy_rows), f(_naive)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


def test_masked_mean_ignores_zero_weight_rows():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((6, 8)), jnp.float32)
    table = jnp.asarray(rng.standard_normal((20, 8)), jnp.float32)
    target = jnp.asarray([3, 4, 5, 6, 7, 8], jnp.int32)
    w = jnp.asarray([1, 1, 1, 0, 0, 0], jnp.float32)
    want = float(jnp.mean(_naive(x[:3], table, target[:3])))
    assert float(masked_cross_entropy(x, table, target, w)) == pytest.approx(want, rel=1e-6)
    moved = x.at[3:].set(1e3)  # padded rows may hold anything
    assert float(masked_cross_entropy(moved, table, target, w)) == pytest.approx(want, rel=1e-6)
