"""FTragrec model: knowledge base, loss terms, cached vs uncached, fallback, masking, scoring, validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ftragrec_jax.errors import ConfigError
from ftragrec_jax.models.ftragrec import (
    FTragrecHParams,
    build_ftragrec,
    ftragrec_loss,
    ftragrec_scores,
    ftragrec_terms,
    validate_setup,
)
from ftragrec_jax.models.knowledge_base import KnowledgeBase, compute_keys, encode_samples
from ftragrec_jax.models.retriever import embed
from ftragrec_jax.scoring import bind, ftragrec_scorer
from tests.ftragrec_helpers import batch_of, make_samples, small_encoder

N_ITEMS, MAX_LEN = 60, 8


@pytest.fixture(scope="module")
def setup():
    samples = make_samples(0, 40, N_ITEMS, MAX_LEN)
    hp = FTragrecHParams(retrieval_backend="exact", quality_threshold=0.0, top_k=4)
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=1)
    kb = KnowledgeBase.build(
        model.encoder,
        model.retriever,
        samples,
        backend="exact",
        top_k=hp.top_k,
        encode_chunk_size=64,
        key_chunk_size=100,
    )
    return samples, hp, model, kb


def test_knowledge_base_matches_direct_encoding(setup):
    samples, _, model, kb = setup
    direct = np.asarray(model.encoder(jnp.asarray(samples["item_seq"]), jnp.asarray(samples["item_seq_len"])))
    np.testing.assert_allclose(kb.h, direct, rtol=1e-5, atol=1e-5)
    keys = np.asarray(embed(model.retriever, jnp.asarray(kb.h)))
    np.testing.assert_allclose(kb.keys, keys, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(kb.keys, axis=1), 1.0, rtol=1e-5)
    for name in ("target", "user", "prefix_len"):
        np.testing.assert_array_equal(getattr(kb, name), samples[name])
        np.testing.assert_array_equal(np.asarray(getattr(kb.memory, name)), samples[name])


def test_cpu_base_is_held_once(setup):
    """On a CPU backend the host arrays of the base are views of its device buffers (one copy, not two), also
    after a key refresh; they are read-only, so nothing can change the base behind the device's back."""
    samples, hp, model, kb = setup
    if jax.default_backend() != "cpu":
        pytest.skip("host and device memory are separate on an accelerator")
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.top_k)
    for name in ("h", "keys", "target", "user", "prefix_len"):
        host, device = getattr(kb, name), getattr(kb.memory, name)
        assert host.ctypes.data == device.unsafe_buffer_pointer(), name
        assert not host.flags.writeable, name
    kb.refresh_keys(model.retriever)
    assert kb.keys.ctypes.data == kb.memory.keys.unsafe_buffer_pointer()


def test_set_keys_hands_back_the_keys_of_before_a_refresh(setup):
    """Validation refreshes for itself, then restores the training keys: index and device copy included."""
    samples, hp, model, _ = setup
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=1)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="faiss", top_k=3)
    users, lens = samples["user"][:5] * 0, samples["prefix_len"][:5]
    kept = kb.keys
    before = kb.searcher.search_host(kept[:5][::-1], users, lens)
    kernel = model.retriever.layers[0].dense_2.kernel
    kernel[...] = jax.random.normal(jax.random.key(0), kernel.shape)
    kb.refresh_keys(model.retriever)
    assert not np.allclose(kb.keys, kept, atol=1e-3)
    kb.set_keys(kept)
    np.testing.assert_array_equal(kb.keys, kept)
    np.testing.assert_array_equal(np.asarray(kb.memory.keys), kept)
    np.testing.assert_array_equal(kb.searcher.search_host(kept[:5][::-1], users, lens), before)
    with pytest.raises(ConfigError, match=r"keys of shape \(3, 64\)"):
        kb.set_keys(np.zeros((3, 64), np.float32))


def test_refresh_recomputes_keys_and_rebuilds_index(setup):
    samples, hp, model, _ = setup
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=1)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="faiss", top_k=3)
    q = kb.keys[:5]
    before_ids = kb.searcher.search_host(q, samples["user"][:5] * 0, samples["prefix_len"][:5])
    kernel = model.retriever.layers[0].dense_2.kernel
    kernel[...] = jax.random.normal(jax.random.key(0), kernel.shape)
    seconds = kb.refresh_keys(model.retriever)
    assert seconds > 0
    np.testing.assert_allclose(kb.keys, compute_keys(model.retriever, kb.h), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(kb.memory.keys), kb.keys)
    assert not np.allclose(kb.keys[:5], q, atol=1e-3)
    after_ids = kb.searcher.search_host(kb.keys[:5], samples["user"][:5] * 0, samples["prefix_len"][:5])
    assert (after_ids[:, 0] == np.arange(5)).all() and (before_ids[:, 0] == np.arange(5)).all()
    # extend with "validation" samples: appended entries searchable, keys from the current g
    extra = {k: v[:7] for k, v in samples.items()}
    n = len(kb)
    kb.extend(model.encoder, model.retriever, extra)
    assert len(kb) == n + 7 and kb.searcher.ntotal == n + 7
    np.testing.assert_allclose(kb.keys[n:], kb.keys[:7], rtol=1e-5, atol=1e-6)


def test_cached_and_uncached_give_same_loss(setup):
    samples, hp, model, kb = setup
    batch = batch_of(samples, np.arange(10, 42), 40)
    loss_u, aux_u = jax.jit(lambda b: ftragrec_loss(model, b, kb.memory, hp=hp))(batch)
    loss_c, aux_c = jax.jit(lambda b: ftragrec_loss(model, b, kb.memory, hp=hp, seq_output=kb.memory.h[b["index"]]))(
        batch
    )
    for k in aux_u:
        np.testing.assert_allclose(float(aux_c[k]), float(aux_u[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    assert float(aux_c["neighbours"]) > 0


def test_padded_rows_do_not_count(setup):
    samples, hp, model, kb = setup
    small = batch_of(samples, np.arange(5, 25))
    padded = batch_of(samples, np.arange(5, 25), 32)
    f = jax.jit(lambda b: ftragrec_loss(model, b, kb.memory, hp=hp, seq_output=kb.memory.h[b["index"]])[1])
    a, b = f(small), f(padded)
    for k in a:
        np.testing.assert_allclose(float(b[k]), float(a[k]), rtol=1e-5, atol=1e-6, err_msg=k)


def test_loss_terms_against_numpy(setup):
    """Every term recomputed in float64 numpy from the same ids."""
    samples, hp, model, kb = setup
    hp = dataclasses.replace(hp, quality_threshold=0.3)
    rng = np.random.default_rng(5)
    b, k = 12, hp.top_k
    ids = rng.integers(-1, len(kb), (b, k)).astype(np.int32)
    ids[0] = -1  # a row with no neighbour at all
    seq = kb.h[rng.integers(0, len(kb), b)]
    target = rng.integers(0, N_ITEMS, b).astype(np.int32)
    mask = np.ones(b, np.float32)
    mask[-2:] = 0
    table = np.asarray(model.encoder.item_table(), np.float64)
    _, aux = ftragrec_terms(
        model.retriever, seq, ids, kb.memory.h, kb.memory.target, table.astype(np.float32), target, mask, hp
    )

    def g(x):  # W2 = 0 at init: g(x) = LN(x) with scale 1, bias 0
        x = np.asarray(x, np.float64)
        c = x - x.mean(-1, keepdims=True)
        y = c / np.sqrt((c * c).mean(-1, keepdims=True) + 1e-12)
        return y / np.linalg.norm(y, axis=-1, keepdims=True)

    def ce(logits):
        m = logits.max(1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
        return lse - logits[np.arange(b), target]

    def msoft(x, v):
        e = np.where(v, np.exp(np.where(v, x, 0) - np.where(v, x, -np.inf).max(-1, keepdims=True)), 0)
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(e / e.sum(-1, keepdims=True))

    safe = np.maximum(ids, 0)
    cos = np.einsum("bh,bkh->bk", g(seq), g(kb.h[safe]))
    valid = (ids >= 0) & (cos >= hp.quality_threshold)
    has = valid.any(1)
    p_ret = msoft(cos / hp.retriever_temperature, valid)
    temb = table[kb.target[safe]]
    a = np.where(has, hp.alpha, 0.0)[:, None]
    enh = (1 - a) * seq + a * np.einsum("bk,bkh->bh", p_ret, temb)
    rec_l = (ce(seq @ table.T) * mask).sum() / mask.sum()
    enh_l = (ce(enh @ table.T) * mask).sum() / mask.sum()
    p_rec = msoft(np.einsum("bh,bkh->bk", seq, temb), valid)
    kl_rows = np.where(valid, p_ret * (np.log(p_ret + 1e-8) - np.log(p_rec + 1e-8)), 0).sum(1)
    w = mask * has
    kl = (kl_rows * w).sum() / w.sum()
    assert 0 < has.sum() < b  # both regimes present
    np.testing.assert_allclose(float(aux["rec_loss"]), rec_l, rtol=1e-5)
    np.testing.assert_allclose(float(aux["enhanced_rec_loss"]), enh_l, rtol=1e-5)
    np.testing.assert_allclose(float(aux["kl_loss"]), kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(aux["loss"]), rec_l + 0.5 * enh_l + 0.03 * kl, rtol=1e-5)
    np.testing.assert_allclose(float(aux["fallback_fraction"]), 1 - w.sum() / mask.sum(), rtol=1e-6)


def test_kl_is_a_mean_over_rows_with_neighbours(setup):
    """The rule docs/model.md states, checked as a rule rather than as a formula: the batch KL is the mean of
    the one-row KLs of the rows that kept a neighbour, and rows without a neighbour (all ids -1) or padding
    rows change nothing, while they do dilute the CE means."""
    samples, hp, model, kb = setup
    rng = np.random.default_rng(9)
    b, k = 10, hp.top_k
    ids = rng.integers(0, len(kb), (b, k)).astype(np.int32)
    seq = kb.h[rng.integers(0, len(kb), b)]
    target = rng.integers(0, N_ITEMS, b).astype(np.int32)
    table = model.encoder.item_table()
    terms = jax.jit(
        lambda s, i, t, m: ftragrec_terms(model.retriever, s, i, kb.memory.h, kb.memory.target, table, t, m, hp)[1]
    )

    def kl(rows, extra_empty=0, extra_padded=0):
        s, i, t = seq[rows], ids[rows], target[rows]
        m = np.ones(len(rows), np.float32)
        if extra_empty or extra_padded:
            n = extra_empty + extra_padded
            s = np.concatenate([s, seq[:n]])
            i = np.concatenate([i, np.where(np.arange(n)[:, None] < extra_empty, -1, ids[:n])]).astype(np.int32)
            t = np.concatenate([t, target[:n]])
            m = np.concatenate([m, (np.arange(n) < extra_empty).astype(np.float32)])
        return terms(s, i, t, m)

    whole = kl(np.arange(b))
    assert float(whole["fallback_fraction"]) == 0.0 and float(whole["kl_loss"]) > 0
    one_row = [float(kl(np.array([r]))["kl_loss"]) for r in range(b)]
    np.testing.assert_allclose(float(whole["kl_loss"]), np.mean(one_row), rtol=1e-5)
    diluted = kl(np.arange(b), extra_empty=4, extra_padded=3)
    np.testing.assert_allclose(float(diluted["fallback_fraction"]), 4 / 14, rtol=1e-6)
    np.testing.assert_allclose(float(diluted["kl_loss"]), float(whole["kl_loss"]), rtol=1e-6)
    assert float(diluted["enhanced_rec_loss"]) != pytest.approx(float(whole["enhanced_rec_loss"]))


def test_threshold_one_falls_back_to_backbone(setup):
    samples, hp, model, kb = setup
    hp1 = dataclasses.replace(hp, quality_threshold=1.0)
    # rows whose sequence has no exact duplicate in the base (a duplicate has cosine 1 and passes any threshold)
    batch = batch_of(samples, np.flatnonzero(samples["item_seq_len"] >= 4)[:16])
    _, aux = jax.jit(lambda b: ftragrec_loss(model, b, kb.memory, hp=hp1, seq_output=kb.memory.h[b["index"]]))(batch)
    assert float(aux["fallback_fraction"]) == 1.0 and float(aux["kl_loss"]) == 0.0
    np.testing.assert_allclose(float(aux["enhanced_rec_loss"]), float(aux["rec_loss"]), rtol=1e-6)
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    scorer = ftragrec_scorer(gd, hp1, rest=rest)
    scores = bind(scorer, params, kb.memory)(batch["item_seq"], batch["item_seq_len"], batch)
    plain = model.encoder.scores(model.encoder(jnp.asarray(batch["item_seq"]), jnp.asarray(batch["item_seq_len"])))
    np.testing.assert_allclose(np.asarray(scores), np.asarray(plain), rtol=1e-5, atol=1e-5)


def test_gradients_reach_retriever_from_both_losses(setup):
    samples, hp, model, kb = setup
    batch = batch_of(samples, np.arange(30))
    gd, params, rest = nnx.split(model, nnx.Param, ...)

    def terms(p):
        m = nnx.merge(gd, p, rest)
        aux = ftragrec_loss(m, batch, kb.memory, hp=hp, seq_output=kb.memory.h[batch["index"]])[1]
        return jnp.stack([aux["enhanced_rec_loss"], aux["kl_loss"]])

    jac = jax.jit(jax.jacrev(terms))(params)  # one row of gradients per term
    w2 = jac["retriever"]["layers"][0]["dense_2"]["kernel"][...]
    assert (jnp.abs(w2).reshape(2, -1).sum(axis=1) > 0).all(), "both terms must reach g"
    enc = jax.tree_util.tree_leaves(jac["encoder"])
    assert all(float(jnp.abs(x).sum()) == 0 for x in enc), "frozen encoder must get no gradient"


def test_eval_scores_shape_and_faiss_equals_exact(setup):
    samples, hp, model, _ = setup
    # duplicate sequences are exact ties that the two backends may break differently: keep one of each
    _, first = np.unique(np.c_[samples["item_seq"], samples["item_seq_len"]], axis=0, return_index=True)
    samples = {k: v[np.sort(first)] for k, v in samples.items()}
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.top_k)
    batch = batch_of(samples, np.arange(50, 70))
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    exact = bind(ftragrec_scorer(gd, hp, rest=rest), params, kb.memory)(batch["item_seq"], batch["item_seq_len"], batch)
    assert exact.shape == (20, N_ITEMS)
    hpf = dataclasses.replace(hp, retrieval_backend="faiss")
    kbf = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="faiss", top_k=hp.top_k)
    faiss_scores = bind(ftragrec_scorer(gd, hpf, rest=rest, searcher=kbf.searcher), params, kbf.memory)(
        batch["item_seq"], batch["item_seq_len"], batch
    )
    np.testing.assert_allclose(np.asarray(faiss_scores), np.asarray(exact), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="prefix_len"):
        bind(ftragrec_scorer(gd, hp, rest=rest), params, kb.memory)(batch["item_seq"], batch["item_seq_len"], {})


@pytest.mark.parametrize(
    "field,value",
    [
        ("top_k", 0),
        ("retriever_temperature", 0.0),
        ("alpha", 1.5),
        ("alpha", -0.1),
        ("retrieval_backend", "annoy"),
        ("top_k", 2.5),
    ],
)
def test_bad_hparams_rejected(field, value):
    with pytest.raises(ConfigError, match=field):
        FTragrecHParams(**{field: value})


def test_setup_validation():
    enc_cfg = small_encoder().config
    with pytest.raises(ConfigError, match="top_k"):
        validate_setup(FTragrecHParams(top_k=11), n_base=10, hidden_size=16)
    with pytest.raises(ConfigError, match="faiss_index"):
        validate_setup(FTragrecHParams(faiss_index="IVF,,Bogus"), n_base=100, hidden_size=16)
    with pytest.raises(ConfigError, match="item rows"):
        validate_setup(FTragrecHParams(), n_base=100, hidden_size=16, encoder_cfg=enc_cfg, n_items=61)
    with pytest.raises(ConfigError, match="hidden_size"):
        validate_setup(FTragrecHParams(), n_base=100, hidden_size=32, encoder_cfg=enc_cfg, n_items=60)
    validate_setup(
        FTragrecHParams(faiss_index="IVF8,Flat"), n_base=100, hidden_size=16, encoder_cfg=enc_cfg, n_items=60
    )


def test_hparams_from_config():
    from ftragrec_jax.config import Config

    cfg = Config(top_k=7, alpha=0.3, retrieval_backend="exact")
    hp = FTragrecHParams.from_config(cfg)
    assert (hp.top_k, hp.alpha, hp.retrieval_backend, hp.quality_threshold) == (7, 0.3, "exact", 0.6)
    assert FTragrecHParams.from_config(Config()) == FTragrecHParams()


def test_encode_samples_pads_last_chunk():
    enc = small_encoder()
    s = make_samples(3, 5, N_ITEMS, MAX_LEN)
    a = encode_samples(enc, s["item_seq"], s["item_seq_len"], chunk_size=7)
    b = encode_samples(enc, s["item_seq"], s["item_seq_len"], chunk_size=10000)
    assert a.shape == (len(s["target"]), 16)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", ["representation", "knn_lm"])
def test_cached_backbone_ce_gives_the_same_step(setup, fusion):
    """The cached step reads the backbone CE per sample from the base (Memory.rec_ce) instead of scoring every
    item again: same loss terms and the same updated retriever as computing it in the step."""
    from ftragrec_jax.models.knowledge_base import backbone_ce
    from ftragrec_jax.optim import make_optimizer
    from ftragrec_jax.train.steps import make_ftragrec_step

    samples, hp, _, _ = setup
    hp = dataclasses.replace(hp, fusion=fusion, alpha=0.3)
    model = build_ftragrec(small_encoder(N_ITEMS, MAX_LEN), hp, seed=1)
    plain = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.top_k)
    with_ce = KnowledgeBase.build(
        model.encoder, model.retriever, samples, backend="exact", top_k=hp.top_k, with_rec_ce=True
    )
    assert plain.memory.rec_ce is None
    logits = np.asarray(with_ce.h, np.float64) @ np.asarray(model.encoder.item_table(), np.float64).T
    logits -= logits.max(1, keepdims=True)
    naive = np.log(np.exp(logits).sum(1)) - logits[np.arange(len(logits)), with_ce.target]
    np.testing.assert_allclose(with_ce.rec_ce, naive, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        backbone_ce(model.encoder, with_ce.h, with_ce.target, chunk_size=7), with_ce.rec_ce, rtol=1e-6, atol=1e-6
    )

    gd, params, rest = nnx.split(model, nnx.Param, ...)
    opt = make_optimizer(1e-2)
    step = make_ftragrec_step(gd, hp, opt, rest=rest, cached=True)
    batch = batch_of(samples, np.arange(3, 35), 40)
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731  (the step donates its inputs)
    p1, _, a1 = step(copy(params), opt.init(params), batch, plain.memory)
    p2, _, a2 = step(copy(params), opt.init(params), batch, with_ce.memory)
    for k in ("loss", "rec_loss", "enhanced_rec_loss", "kl_loss", "grad_norm"):
        np.testing.assert_allclose(float(a2[k]), float(a1[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
    assert float(a1["grad_norm"]) > 0
    # extending the base (valid samples before testing) extends the cached CE with it
    n = len(with_ce)
    with_ce.extend(model.encoder, model.retriever, batch_of(samples, np.arange(5), 5))
    assert with_ce.memory.rec_ce.shape == (n + 5,)
    np.testing.assert_allclose(with_ce.rec_ce[n:], with_ce.rec_ce[:5], rtol=1e-6, atol=1e-6)


def test_float16_knowledge_base_halves_h_and_stays_close(setup):
    """knowledge_base_dtype float16: h is stored (host and device) in half the bytes, rounded; keys, losses and
    scores are computed in float32 from it and stay within float16 rounding of the float32 base's."""
    from ftragrec_jax.models.knowledge_base import kb_options
    from ftragrec_jax.optim import make_optimizer
    from ftragrec_jax.train.steps import make_ftragrec_step

    samples, hp, model, kb = setup
    hp16 = dataclasses.replace(hp, knowledge_base_dtype="float16")
    kb16 = KnowledgeBase.build(model.encoder, model.retriever, samples, encode_chunk_size=64, **kb_options(hp16))
    assert kb16.h.dtype == np.float16 and kb16.memory.h.dtype == jnp.float16 and kb16.keys.dtype == np.float32
    assert 2 * kb16.h.nbytes == kb.h.nbytes
    np.testing.assert_array_equal(kb16.h, kb.h.astype(np.float16))  # the same vectors, rounded once
    np.testing.assert_allclose(kb16.keys, kb.keys, atol=5e-3)
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    opt = make_optimizer(1e-2)
    batch = batch_of(samples, np.arange(3, 35), 40)
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731  (the step donates its inputs)
    _, _, a32 = make_ftragrec_step(gd, hp, opt, rest=rest)(copy(params), opt.init(params), batch, kb.memory)
    _, _, a16 = make_ftragrec_step(gd, hp16, opt, rest=rest)(copy(params), opt.init(params), batch, kb16.memory)
    for k in ("loss", "rec_loss", "enhanced_rec_loss", "kl_loss"):
        np.testing.assert_allclose(float(a16[k]), float(a32[k]), rtol=2e-2, atol=2e-3, err_msg=k)
    s32 = jax.jit(lambda b: ftragrec_scores(model, b, kb.memory, hp=hp))(batch)
    s16 = jax.jit(lambda b: ftragrec_scores(model, b, kb16.memory, hp=hp16))(batch)
    np.testing.assert_allclose(np.asarray(s16), np.asarray(s32), rtol=2e-2, atol=2e-2)
    kb16.extend(model.encoder, model.retriever, {k: v[:5] for k, v in samples.items()})
    assert kb16.h.dtype == np.float16 and len(kb16) == len(kb) + 5
    with pytest.raises(ConfigError, match="knowledge_base_dtype"):
        FTragrecHParams(knowledge_base_dtype="bfloat16")
