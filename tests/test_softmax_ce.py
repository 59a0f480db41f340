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


@pytest.mark.parametrize("chunk", [1, 7, 32, 100])  # 101 items: chunks that do and do not divide the catalogue
@pytest.mark.parametrize("scale", [0.1, 5.0])
def test_item_chunked_ce_and_gradients_match_the_logits_form(chunk, scale):
    """item_chunk_size: the running logsumexp over item chunks and its chunk-by-chunk backward give the naive
    CE and its gradients (x and the table) to float32 rounding, padded last chunk included."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((19, 16)) * scale, jnp.float32)
    table = jnp.asarray(rng.standard_normal((101, 16)) * scale, jnp.float32)
    target = jnp.asarray(rng.integers(0, 101, 19), jnp.int32)
    got = cross_entropy_rows(x, table, target, item_chunk_size=chunk)
    np.testing.assert_allclose(got, _naive(x, table, target), rtol=1e-5, atol=1e-4)
    w = jnp.asarray(rng.random(19), jnp.float32)
    grads = [
        jax.grad(lambda a, b: jnp.sum(fn(a, b) * w), argnums=(0, 1))(x, table)
        for fn in (
            lambda a, b: cross_entropy_rows(a, b, target, item_chunk_size=chunk),
            lambda a, b: _naive(a, b, target),
        )
    ]
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


def test_item_chunking_is_off_unless_the_catalogue_is_larger():
    """0 (the default) or a chunk >= n_items runs the whole-catalogue expression itself: identical bits."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)
    table = jnp.asarray(rng.standard_normal((30, 8)), jnp.float32)
    target = jnp.asarray([1, 2, 3, 4, 5], jnp.int32)
    base = np.asarray(cross_entropy_rows(x, table, target))
    for chunk in (0, 30, 64):
        assert np.asarray(cross_entropy_rows(x, table, target, item_chunk_size=chunk)).tobytes() == base.tobytes()


def test_item_chunked_ce_holds_no_batch_by_catalogue_array():
    """Neither pass materialises [B, n_items]: the largest intermediate of value_and_grad is [B, chunk] (or the
    table's own gradient), read from the compiled program's jaxpr."""
    from ftragrec_jax.models.softmax_ce import chunked_logsumexp

    b, n, h, chunk = 8, 1000, 4, 50
    x = jnp.ones((b, h), jnp.float32)
    table = jnp.ones((n, h), jnp.float32)
    jaxpr = jax.make_jaxpr(jax.value_and_grad(lambda a, t: jnp.sum(chunked_logsumexp(a, t, chunk)), argnums=(0, 1)))(
        x, table
    )

    def shapes(jx):
        for eqn in jx.eqns:
            for v in eqn.outvars:
                yield tuple(getattr(v.aval, "shape", ()))
            for value in eqn.params.values():  # scan bodies, the custom_vjp's forward, ...
                for sub in value if isinstance(value, (list, tuple)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        yield from shapes(inner)

    found = list(shapes(jaxpr.jaxpr))
    assert (b, chunk) in found  # the walk reaches the scan bodies
    assert (b, n) not in found and max(int(np.prod(s)) for s in found) <= n * h
    plain = jax.make_jaxpr(jax.value_and_grad(lambda a, t: jnp.sum(jax.nn.logsumexp(a @ t.T, axis=-1))))(x, table)
    assert (b, n) in list(shapes(plain.jaxpr))  # and would see the whole-catalogue array


def test_duorec_training_step_with_item_chunks_matches_the_whole_catalogue(tmp_path):
    """The config key item_chunk_size reaches DuoRec's training CE: one step from the same state and batch gives
    the same loss terms and parameters as the whole-catalogue step, to float32 rounding."""
    from ftragrec_jax.config import load_config
    from ftragrec_jax.data.batches import iterate_batches
    from ftragrec_jax.data.dataset import dataset_from_config
    from ftragrec_jax.train.duorec_task import DuoRecTask
    from tests.test_train import TINY, write_lines_dataset

    data = write_lines_dataset(tmp_path / "tiny.txt")
    out = {}
    for chunk in (0, 7):
        cfg = load_config(None, [f"data={data}", *TINY, f"item_chunk_size={chunk}"])
        task = DuoRecTask(cfg, dataset_from_config(cfg))
        assert task.dataset_settings  # the same data for both
        params, opt_state = task.init()
        batch = next(iter(iterate_batches(dataset_from_config(cfg).train, cfg.train_batch_size, seed=0)))
        batch = {k: np.asarray(batch[k]) for k in task.batch_fields}
        params, _, metrics = task.train_step(params, opt_state, batch, jax.random.key(0), task.step_data())
        out[chunk] = (jax.tree.leaves(params), {k: float(v) for k, v in metrics.items()})
        n_items = task.encoder_cfg.n_items
    assert n_items > 7  # the chunked path ran
    for key in ("loss", "ce", "sem_nce"):
        assert out[7][1][key] == pytest.approx(out[0][1][key], rel=1e-5), key
    for a, b in zip(out[0][0], out[7][0]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
