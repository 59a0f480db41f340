"""DuoRec us_x objective: JAX vs the PyTorch reference (losses, gradients, one Adam step, padding),
and DuoRec's same-target sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="parity tests compare against the PyTorch reference")

from converters.mapping import encoder_to_torch_state  # noqa: E402
from converters.reference.torch_duorec import info_nce as torch_info_nce  # noqa: E402
from ftragrec_jax.models.duorec import (  # noqa: E402
    SameTargetSampler,
    build_same_target_index,
    duorec_loss,
    make_same_target_sampler,
    sample_same_target,
    sample_same_target_np,
)
from ftragrec_jax.models.encoder import EncoderConfig  # noqa: E402
from tests.parity_helpers import max_abs, random_batch, to_torch, twin_models  # noqa: E402

N_ITEMS, MAX_LEN, B = 50, 8, 10
LMD_SEM, TAU = 0.1, 0.7
CFG = EncoderConfig(
    n_items=N_ITEMS,
    max_seq_length=MAX_LEN,
    hidden_size=16,
    n_layers=2,
    n_heads=2,
    inner_size=32,
    hidden_dropout_prob=0.0,
    attn_dropout_prob=0.0,
)
# A key's bias only shifts every attention score of a query by the same amount, which softmax
# ignores: its true gradient is 0 and both frameworks return float noise (~1e-12) there.
ZERO_GRAD = ".multi_head_attention.key.bias"


def _torch_loss(ref, batch, mask=None):
    t = to_torch(batch)
    return ref.calculate_loss(
        t["item_seq"],
        t["item_seq_len"],
        t["target"],
        t.get("sem_aug"),
        t.get("sem_aug_lengths"),
        None if mask is None else torch.as_tensor(mask),
    )


def _jax_loss_and_grads(enc, batch, **kw):
    graphdef, params = nnx.split(enc, nnx.Param)

    def f(p):
        return duorec_loss(nnx.merge(graphdef, p), batch, None, **kw)

    # jitted, as the trainer runs it (eager dispatch compiled hundreds of one-op programs)
    (loss, aux), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    return loss, aux, grads, graphdef, params


def _grads_as_torch_keys(graphdef, grads):
    return encoder_to_torch_state(nnx.merge(graphdef, grads))


@pytest.fixture(scope="module")
def twins():
    return twin_models(CFG, seed=11, lmd_sem=LMD_SEM, tau=TAU)


@pytest.fixture(scope="module")
def batch():
    return random_batch(np.random.default_rng(5), B, MAX_LEN, N_ITEMS)


def _assert_grads_match(t_grads, j_grads):
    for k, tg in t_grads.items():
        jg = j_grads[k]
        if k.endswith(ZERO_GRAD):
            assert np.abs(tg).max() < 1e-9 and np.abs(jg).max() < 1e-9, k
            continue
        rel = max_abs(jg, tg) / np.abs(tg).max()
        assert rel <= 1e-4, (k, rel)


@pytest.mark.parametrize("fuse", [True, False])
def test_us_x_loss_terms_and_gradients_match(twins, batch, fuse):
    ref, enc = twins
    ref.zero_grad()
    t_loss, t_terms = _torch_loss(ref, batch)
    t_loss.backward()
    t_grads = {k: p.grad.numpy().copy() for k, p in ref.named_parameters()}
    loss, aux, grads, graphdef, _ = _jax_loss_and_grads(enc, batch, lmd_sem=LMD_SEM, tau=TAU, fuse_passes=fuse)
    assert abs(float(loss) - t_loss.item()) <= 1e-5
    assert abs(float(aux["ce"]) - t_terms["ce"].item()) <= 1e-5
    assert abs(float(aux["sem_nce"]) - t_terms["sem_nce"].item()) <= 1e-5
    assert t_terms["sem_nce"].item() > 1.0  # the contrastive term is really there
    j_grads = _grads_as_torch_keys(graphdef, grads)
    assert set(j_grads) == set(t_grads)
    _assert_grads_match(t_grads, j_grads)


def test_length_bucketed_fused_pass_matches_torch_on_a_larger_batch():
    """3B = 192 rows, max length 40: the fused pass goes through models/bucketing.py with short chunks
    (budget 8 or less) and a full one (budget 40), which must still equal DuoRec's full-length passes."""
    from ftragrec_jax.models.bucketing import length_budgets

    max_len = 40
    cfg = EncoderConfig(
        n_items=N_ITEMS,
        max_seq_length=max_len,
        hidden_size=16,
        n_layers=2,
        n_heads=2,
        inner_size=32,
        hidden_dropout_prob=0.0,
        attn_dropout_prob=0.0,
    )
    ref, enc = twin_models(cfg, seed=13, lmd_sem=LMD_SEM, tau=TAU)
    big = random_batch(np.random.default_rng(21), 64, max_len, N_ITEMS)
    big["item_seq_len"][3:50] = np.minimum(big["item_seq_len"][3:50], 5)
    big["sem_aug_lengths"][3:45] = np.minimum(big["sem_aug_lengths"][3:45], 5)
    for k, lk in (("item_seq", "item_seq_len"), ("sem_aug", "sem_aug_lengths")):
        big[k][np.arange(max_len)[None, :] >= big[lk][:, None]] = 0  # keep right padding exact
    all_lens = np.sort(np.concatenate([big["item_seq_len"], big["item_seq_len"], big["sem_aug_lengths"]]))
    assert all_lens[127] <= 8 < all_lens[-1] and 8 in length_budgets(max_len)  # two different budgets
    ref.zero_grad()
    t_loss, t_terms = _torch_loss(ref, big)
    t_loss.backward()
    t_grads = {k: p.grad.numpy().copy() for k, p in ref.named_parameters()}
    graphdef, params = nnx.split(enc, nnx.Param)
    f = jax.jit(
        jax.value_and_grad(
            lambda p: duorec_loss(nnx.merge(graphdef, p), big, None, lmd_sem=LMD_SEM, tau=TAU), has_aux=True
        )
    )
    (loss, aux), grads = f(params)
    assert abs(float(loss) - t_loss.item()) <= 1e-5
    assert abs(float(aux["sem_nce"]) - t_terms["sem_nce"].item()) <= 1e-5
    _assert_grads_match(t_grads, _grads_as_torch_keys(graphdef, grads))


def test_padding_id_lookups_send_no_gradient_to_row_0_as_in_torch(twins, batch):
    """nn.Embedding(padding_idx=0): when an output is read at a padded position (length past the
    items), the lookup of id 0 must not train row 0; only the logits do."""
    ref, enc = twins
    odd = {k: v.copy() for k, v in batch.items()}
    short = odd["item_seq_len"] < MAX_LEN
    odd["item_seq_len"][short] += 1  # now reads one padded position
    assert short.sum() >= 3
    ref.zero_grad()
    _torch_loss(ref, odd)[0].backward()
    t_grads = {k: p.grad.numpy().copy() for k, p in ref.named_parameters()}
    _, _, grads, graphdef, _ = _jax_loss_and_grads(enc, odd, lmd_sem=LMD_SEM, tau=TAU)
    _assert_grads_match(t_grads, _grads_as_torch_keys(graphdef, grads))


def test_lmd_sem_zero_is_plain_sasrec_ce(twins, batch):
    ref, enc = twins
    plain = {k: batch[k] for k in ("item_seq", "item_seq_len", "target")}  # no sem_aug needed
    loss, aux = duorec_loss(enc, plain, None, lmd_sem=0.0)
    with torch.no_grad():
        t = to_torch(plain)
        logits = ref.full_sort_predict(t["item_seq"], t["item_seq_len"])
        ce = torch.nn.functional.cross_entropy(logits, t["target"].long()).item()
    assert abs(float(loss) - ce) <= 1e-5
    assert float(aux["sem_nce"]) == 0.0


def test_one_adam_step_matches_torch_adam(batch):
    ref, enc = twin_models(CFG, seed=12, lmd_sem=LMD_SEM, tau=TAU)
    lr, betas, eps = 1e-3, (0.9, 0.999), 1e-8
    opt = torch.optim.Adam(ref.parameters(), lr=lr, betas=betas, eps=eps)
    opt.zero_grad()
    _torch_loss(ref, batch)[0].backward()
    opt.step()
    t_after = {k: v.detach().numpy() for k, v in ref.state_dict().items()}

    # torch adds eps to sqrt(v_hat), which is optax's `eps` (not `eps_root`)
    tx = optax.adam(lr, b1=betas[0], b2=betas[1], eps=eps)
    _, _, grads, graphdef, params = _jax_loss_and_grads(enc, batch, lmd_sem=LMD_SEM, tau=TAU)
    updates, _ = tx.update(grads, tx.init(params), params)
    j_after = encoder_to_torch_state(nnx.merge(graphdef, optax.apply_updates(params, updates)))
    before = encoder_to_torch_state(enc)
    for k in t_after:
        # the bound. Seen up to 2e-6: Adam's first step is lr * g / (|g| + eps), so for
        # entries with |g| near eps (1e-8) float noise in g moves the step by a visible fraction of lr
        assert max_abs(j_after[k], t_after[k]) <= 1e-5, k
    # the step really moved the weights (by ~lr, Adam's first step)
    assert max_abs(j_after["item_embedding.weight"], before["item_embedding.weight"]) > 0.5 * lr


def _pad(batch, n_pad):
    """Pad like iterate_batches: extra rows copy row 0, mask 0."""
    out = {k: np.concatenate([v, np.repeat(v[:1], n_pad, axis=0)]) for k, v in batch.items()}
    out["mask"] = np.concatenate([np.ones(len(batch["target"])), np.zeros(n_pad)]).astype(np.float32)
    return out


def test_padded_batch_gives_the_smaller_batch_loss_and_gradients(twins, batch):
    ref, enc = twins
    small = {k: v[:7] for k, v in batch.items()}
    padded = _pad(small, B - 7)
    # make the padded rows different from row 0 too, so they would change the loss if they leaked in
    padded["item_seq"][7:] = batch["item_seq"][7:]
    padded["item_seq_len"][7:] = batch["item_seq_len"][7:]
    padded["sem_aug"][7:] = batch["sem_aug"][7:]
    padded["sem_aug_lengths"][7:] = batch["sem_aug_lengths"][7:]
    mask = padded.pop("mask")

    ref.zero_grad()
    t_small, t_small_terms = _torch_loss(ref, small)  # DuoRec's own construction, unpadded
    t_small.backward()
    t_grads = {k: p.grad.numpy().copy() for k, p in ref.named_parameters()}
    with torch.no_grad():
        t_padded, t_padded_terms = _torch_loss(ref, padded, mask)
        t_unmasked = _torch_loss(ref, padded)[0]
    assert abs(t_padded.item() - t_small.item()) <= 1e-5
    assert abs(t_padded_terms["sem_nce"].item() - t_small_terms["sem_nce"].item()) <= 1e-5
    assert abs(t_unmasked.item() - t_small.item()) > 1e-3  # padding does matter without the mask

    loss, aux, grads, graphdef, _ = _jax_loss_and_grads(enc, {**padded, "mask": mask}, lmd_sem=LMD_SEM, tau=TAU)
    assert abs(float(loss) - t_small.item()) <= 1e-5
    assert abs(float(aux["ce"]) - t_small_terms["ce"].item()) <= 1e-5
    assert abs(float(aux["sem_nce"]) - t_small_terms["sem_nce"].item()) <= 1e-5
    _assert_grads_match(t_grads, _grads_as_torch_keys(graphdef, grads))


def test_torch_masked_info_nce_equals_duorecs_construction():
    g = torch.Generator().manual_seed(0)
    z_i, z_j = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    exact = torch_info_nce(z_i, z_j, 0.5)
    masked = torch_info_nce(z_i, z_j, 0.5, torch.ones(6))
    assert abs(exact.item() - masked.item()) <= 1e-6


# ---- same-target sampling -------------------------------------------------------------------

TARGETS = np.array([3, 5, 3, 7, 3, 5, 9, 3, 1, 5], np.int32)  # 7, 9 and 1 occur once


def test_same_target_index_groups_samples_by_target():
    idx = build_same_target_index(TARGETS, 12)
    assert idx.count[3] == 4 and idx.count[5] == 3 and idx.count[0] == 0
    group3 = idx.order[idx.start[3] : idx.start[3] + idx.count[3]]
    assert list(group3) == [0, 2, 4, 7]
    assert np.array_equal(idx.order[idx.rank], np.arange(len(TARGETS)))


@pytest.mark.parametrize("draw", ["jax", "numpy"])
def test_same_target_draws_are_uniform_over_the_others_and_self_when_alone(draw):
    idx = build_same_target_index(TARGETS, 12)
    ids = np.repeat(np.arange(len(TARGETS)), 3000)
    if draw == "jax":
        jidx = type(idx)(*(jnp.asarray(a) for a in idx))
        picked = np.asarray(jax.jit(sample_same_target)(jidx, ids, jax.random.key(0, impl="unsafe_rbg")))
    else:
        picked = sample_same_target_np(idx, ids, np.random.default_rng(0))
    assert np.array_equal(TARGETS[picked], TARGETS[ids])
    alone = np.isin(TARGETS[ids], [1, 7, 9])
    assert np.array_equal(picked[alone], ids[alone])  # DuoRec falls back to the sample itself
    assert not np.any(picked[~alone] == ids[~alone])  # otherwise never itself
    for s in (0, 4, 1):  # group of 4 -> 3 others at 1/3 each; group of 3 -> 2 others at 1/2 each
        others = [o for o in np.flatnonzero(TARGETS == TARGETS[s]) if o != s]
        freq = np.array([(picked[ids == s] == o).mean() for o in others])
        assert np.all(np.abs(freq - 1 / len(others)) < 0.04), (s, freq)


def test_jax_draws_are_deterministic_given_the_key():
    idx = build_same_target_index(TARGETS, 12)
    ids = np.arange(len(TARGETS))
    a = sample_same_target(idx, ids, jax.random.key(3))
    b = sample_same_target(idx, ids, jax.random.key(3))
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_loss_with_in_step_sampling_uses_same_target_sequences(twins):
    """Groups of exactly two make the draw deterministic (the other one), so the in-step sampled
    loss must equal the loss with those sequences given explicitly; a singleton uses itself."""
    _, enc = twins
    rng = np.random.default_rng(9)
    targets = np.array([4, 8, 4, 8, 12, 6, 6], np.int32)
    partner = np.array([2, 3, 0, 1, 4, 6, 5])

    class Train:
        item_seq, item_seq_len = random_batch(rng, len(targets), MAX_LEN, N_ITEMS)["item_seq"], None
        target = targets

    Train.item_seq_len = np.maximum((Train.item_seq > 0).sum(1), 1).astype(np.int32)
    sampler = make_same_target_sampler(Train, N_ITEMS)
    assert isinstance(sampler, SameTargetSampler)
    rows = np.array([0, 1, 2, 3, 4, 5, 6])
    base = {
        "item_seq": Train.item_seq[rows],
        "item_seq_len": Train.item_seq_len[rows],
        "target": targets[rows],
        "index": rows.astype(np.int32),
    }
    key = jax.random.key(1, impl="unsafe_rbg")  # dropout probs are 0 in CFG: the key only drives sampling
    sampled, _ = jax.jit(lambda b, k: duorec_loss(enc, b, k, lmd_sem=LMD_SEM, tau=TAU, same_target=sampler))(base, key)
    explicit = {**base, "sem_aug": Train.item_seq[partner], "sem_aug_lengths": Train.item_seq_len[partner]}
    given = jax.jit(lambda b: duorec_loss(enc, b, None, lmd_sem=LMD_SEM, tau=TAU)[0])
    expected = given(explicit)
    assert abs(float(sampled) - float(expected)) <= 1e-6
    wrong = {**explicit, "sem_aug": Train.item_seq[rows], "sem_aug_lengths": Train.item_seq_len[rows]}
    assert abs(float(given(wrong)) - float(expected)) > 1e-4


def test_dropout_passes_differ_and_are_reproducible():
    _, enc = twin_models(
        EncoderConfig(
            n_items=N_ITEMS,
            max_seq_length=MAX_LEN,
            hidden_size=16,
            n_layers=2,
            inner_size=32,
            hidden_dropout_prob=0.3,
            attn_dropout_prob=0.3,
        ),
        seed=2,
    )
    b = random_batch(np.random.default_rng(1), B, MAX_LEN, N_ITEMS)
    k = jax.random.key(4, impl="unsafe_rbg")
    l1, aux1 = duorec_loss(enc, b, k, lmd_sem=LMD_SEM, tau=TAU)
    l2, _ = duorec_loss(enc, b, k, lmd_sem=LMD_SEM, tau=TAU)
    l3, _ = duorec_loss(enc, b, jax.random.key(5, impl="unsafe_rbg"), lmd_sem=LMD_SEM, tau=TAU)
    l0, _ = duorec_loss(enc, b, None, lmd_sem=LMD_SEM, tau=TAU)
    assert float(l1) == float(l2)
    assert float(l1) != float(l3) and float(l1) != float(l0)
    assert np.isfinite(float(aux1["sem_nce"]))
