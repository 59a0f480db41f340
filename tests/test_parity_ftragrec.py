"""JAX FTragrec vs the PyTorch reference (converters/reference/torch_ftragrec.py) from the same weights and the same
ids."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from converters.mapping import (  # noqa: E402
    RETRIEVER_TABLE,
    encoder_to_torch_state,
    expand,
    load_torch_state_into_retriever,
    retriever_to_torch_state,
)
from converters.reference.torch_ftragrec import TorchFTragrec  # noqa: E402
from converters.reference.torch_ftragrec import ftragrec_terms as torch_terms  # noqa: E402
from ftragrec_jax.errors import CheckpointError  # noqa: E402
from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec, ftragrec_loss, ftragrec_terms  # noqa: E402
from ftragrec_jax.models.knowledge_base import KnowledgeBase  # noqa: E402
from ftragrec_jax.models.retriever import Retriever  # noqa: E402
from tests.ftragrec_helpers import batch_of, make_samples, small_encoder  # noqa: E402

N_ITEMS, MAX_LEN = 60, 8
TERMS = ("loss", "rec_loss", "enhanced_rec_loss", "kl_loss", "fallback_fraction")


def _perturb_retriever(model, seed):
    """Random W2 and LayerNorm so the test covers a trained-looking g, not just LN(x)."""
    state = nnx.state(model.retriever, nnx.Param)
    leaves, tree = jax.tree_util.tree_flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    nnx.update(model.retriever, jax.tree_util.tree_unflatten(tree, leaves))


def _pair(hp, n_layers=2, seed=0):
    hp = dataclasses.replace(hp, retriever_layers=n_layers)
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=seed)
    _perturb_retriever(model, seed + 10)
    cfg = model.encoder.config
    tm = TorchFTragrec.from_encoder_config(
        cfg,
        top_k=hp.top_k,
        retriever_layers=n_layers,
        retriever_inner_size=hp.retriever_inner_size,
        retriever_temperature=hp.retriever_temperature,
        quality_threshold=hp.quality_threshold,
        alpha=hp.alpha,
        enhanced_rec_weight=hp.enhanced_rec_weight,
        kl_small_weight=hp.kl_small_weight,
    )
    sd = {**encoder_to_torch_state(model.encoder), **retriever_to_torch_state(model.retriever)}
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    return hp, model, tm


def assert_retriever_grads_match(grads, tm, n_layers: int, rtol: float = 1e-4) -> float:
    """Every retriever leaf's JAX gradient (nnx.Param state `grads`) against the PyTorch reference's .grad of the
    same tensor (RETRIEVER_TABLE), relative to the leaf's max |grad|, which must be non-zero; returns the worst."""
    tgrads = {f"retriever_encoder.{n}": p.grad.numpy() for n, p in tm.retriever_encoder.named_parameters()}
    jgrads = nnx.to_pure_dict(grads)
    worst = 0.0
    for tk, path, tr in expand(RETRIEVER_TABLE, n_layers):
        g = jgrads
        for p in path:
            g = g[p]
        g = tr.to_torch(np.asarray(g))
        t = tgrads[tk]
        assert np.abs(t).max() > 0, tk
        rel = np.abs(g - t).max() / np.abs(t).max()
        worst = max(worst, rel)
        assert rel <= rtol, (tk, rel)
    return worst


def test_terms_and_retriever_gradients_match_torch():
    hp = FTragrecHParams(top_k=6, quality_threshold=0.2, retrieval_backend="exact")
    hp, model, tm = _pair(hp)
    samples = make_samples(0, 40, N_ITEMS, MAX_LEN)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.top_k)
    rng = np.random.default_rng(1)
    b = 48
    ids = rng.integers(-1, len(kb), (b, hp.top_k)).astype(np.int32)
    ids[:3] = -1
    rows = rng.integers(0, len(kb), b)
    seq, target = kb.h[rows], samples["target"][rows]
    mask = (np.arange(b) < b - 5).astype(np.float32)
    table = np.asarray(model.encoder.item_table())

    gd, rparams = nnx.split(model.retriever, nnx.Param)

    def jax_loss(p):
        return ftragrec_terms(nnx.merge(gd, p), seq, ids, kb.memory.h, kb.memory.target, table, target, mask, hp)

    (_, aux), grads = jax.jit(jax.value_and_grad(jax_loss, has_aux=True))(rparams)
    t_total, t_terms, _ = torch_terms(
        tm.retriever_encoder,
        torch.from_numpy(seq),
        torch.from_numpy(ids).long(),
        torch.from_numpy(np.array(kb.h)),
        torch.from_numpy(kb.target.copy()).long(),
        torch.from_numpy(table.copy()),
        torch.from_numpy(target).long(),
        torch.from_numpy(mask),
        **tm.hp,
    )
    t_total.backward()
    assert 0 < float(aux["fallback_fraction"]) < 1
    errs = {k: abs(float(aux[k]) - float(t_terms[k].detach())) for k in TERMS}
    print("FTragrec parity terms:", {k: round(float(aux[k]), 6) for k in TERMS})
    print("FTragrec parity |jax - torch| per term:", {k: f"{v:.2e}" for k, v in errs.items()})
    for k, e in errs.items():
        assert e <= 1e-5, (k, float(aux[k]), float(t_terms[k]))

    worst = assert_retriever_grads_match(grads, tm, 2)
    print(f"FTragrec parity: worst retriever gradient error relative to the leaf's max |grad|: {worst:.2e}")


def test_end_to_end_with_each_side_searching():
    """JAX faiss-backend loss (encoder run in-graph) vs TorchFTragrec.calculate_loss with its own host search."""
    hp = FTragrecHParams(top_k=4, quality_threshold=0.0, retrieval_backend="faiss")
    hp, model, tm = _pair(hp, n_layers=1, seed=2)
    samples = make_samples(4, 40, N_ITEMS, MAX_LEN, min_hist=6)
    # duplicate sequences are exact ties the two searches may break differently
    _, first = np.unique(np.c_[samples["item_seq"], samples["item_seq_len"]], axis=0, return_index=True)
    samples = {k: v[np.sort(first)] for k, v in samples.items()}
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="faiss", top_k=hp.top_k)
    tm.build_knowledge(
        *(torch.from_numpy(samples[k]) for k in ("item_seq", "item_seq_len", "target", "user", "prefix_len"))
    )
    np.testing.assert_allclose(tm.kb_h.numpy(), kb.h, rtol=1e-5, atol=1e-5)
    batch = batch_of(samples, np.arange(0, len(samples["target"]), 3)[:64])
    _, aux = jax.jit(lambda b: ftragrec_loss(model, b, kb.memory, hp=hp, searcher=kb.searcher))(batch)
    tb = {k: torch.from_numpy(batch[k]) for k in ("item_seq", "item_seq_len", "target", "user", "prefix_len")}
    _, terms = tm.calculate_loss(**tb, mask=torch.from_numpy(batch["mask"]))
    for k in TERMS:
        t = float(terms[k].detach())
        assert abs(float(aux[k]) - t) <= 1e-5, (k, float(aux[k]), t)
    scores = tm.full_sort_predict(tb["item_seq"], tb["item_seq_len"], tb["user"], tb["prefix_len"])
    from ftragrec_jax.scoring import bind, ftragrec_scorer

    gd, params, rest = nnx.split(model, nnx.Param, ...)
    jscores = bind(ftragrec_scorer(gd, hp, rest=rest, searcher=kb.searcher), params, kb.memory)(
        batch["item_seq"], batch["item_seq_len"], batch
    )
    np.testing.assert_allclose(np.asarray(jscores), scores.numpy(), rtol=1e-4, atol=1e-5)


def test_retriever_mapping_round_trip_and_errors():
    src = Retriever(16, 32, 2, rngs=nnx.Rngs(params=0))
    _perturb_retriever(type("M", (), {"retriever": src})(), 1)
    sd = retriever_to_torch_state(src)
    assert sorted(sd) == sorted(k for k, _, _ in expand(RETRIEVER_TABLE, 2))
    assert sd["retriever_encoder.layer.0.dense_1.weight"].shape == (32, 16)
    dst = Retriever(16, 32, 2, rngs=nnx.Rngs(params=5))
    ignored = load_torch_state_into_retriever({**sd, "item_embedding.weight": np.zeros((3, 16))}, dst)
    assert ignored == ["item_embedding.weight"]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(dst(x)), np.asarray(src(x)))
    with pytest.raises(CheckpointError, match="retriever_layers"):
        load_torch_state_into_retriever(sd, Retriever(16, 32, 1, rngs=nnx.Rngs(params=0)))
    bad = dict(sd)
    bad["retriever_encoder.layer.1.dense_2.weight"] = np.zeros((16, 31), np.float32)
    with pytest.raises(CheckpointError, match="shape"):
        load_torch_state_into_retriever(bad, dst)
