"""DuoRec's `us_x` training objective and its same-target positive sampling, in JAX.

loss = CE(full-sort logits of pass 1, target)
     + lmd_sem * InfoNCE(pass 2: the same sequences with fresh dropout,
                         pass 3: for each row, a training sequence with the same target item)
InfoNCE uses dot similarity over the 2B rows [pass 2; pass 3] divided by tau; row a's positive is
its partner (a +/- B), its negatives are all other rows but itself and its partner (DuoRec's
mask_correlated_samples), mean over rows. `lmd_sem == 0` is plain SASRec CE with a single pass.

`batch["mask"]` (1 real row, 0 padding; absent = all real) makes a padded last batch give the loss
of the unpadded smaller batch: padded rows are left out of CE, and out of InfoNCE as anchors,
positives and negatives.

Same-target sampling (DuoRec's dataloader): sample s with target t gets another training sample
with target t, uniformly, never itself. When s is the only training sample with target t, DuoRec
falls back to s's own sequence (its positive is then the same sequence under two dropout masks);
we do the same. Sampling is a gather on precomputed arrays, cheap inside the jitted step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ftragrec_jax.data.samples import SequenceSamples
from ftragrec_jax.errors import ConfigError
from ftragrec_jax.models.bucketing import encode_bucketed, encode_passes
from ftragrec_jax.models.softmax_ce import masked_cross_entropy


class SameTargetIndex(NamedTuple):
    """Training samples grouped by target item; a pytree, so it can be passed into jit."""

    order: jax.Array  # int32[N]: sample ids sorted by target (stable, so ties keep sample order)
    rank: jax.Array  # int32[N]: position of each sample id in `order`
    target: jax.Array  # int32[N]: target item of each sample
    start: jax.Array  # int32[n_items]: first position in `order` of each target item
    count: jax.Array  # int32[n_items]: number of training samples per target item


class SameTargetSampler(NamedTuple):
    """What the train step needs to draw DuoRec positives: the index plus the training sequences, as windows on
    the flat histories (device memory: 4 bytes per interaction + 8 per sample, not 4 * max_len per sample)."""

    index: SameTargetIndex
    items: jax.Array  # int32[M]: the histories the training windows read
    start: jax.Array  # int32[N]: where each training sample's window starts in `items`
    item_seq_len: jax.Array  # int32[N]
    cols: jax.Array  # int32[max_len]: 0..max_len-1 (its shape carries max_len into the jitted step)

    def sequences(self, ids):
        """int32 [len(ids), max_len]: the windows of training samples `ids`, right-padded with 0 (jittable)."""
        length = self.item_seq_len[ids]
        pos = jnp.clip(self.start[ids][:, None] + self.cols[None, :], 0, self.items.shape[0] - 1)
        return jnp.where(self.cols[None, :] < length[:, None], self.items[pos], 0), length


def build_same_target_index(target, n_items: int) -> SameTargetIndex:
    """numpy arrays grouping training samples by target; `target` is int[N] with values < n_items."""
    target = np.asarray(target)
    if target.ndim != 1 or (target.size and (target.min() < 0 or target.max() >= n_items)):
        raise ConfigError(f"same-target index: targets must be a 1-d array of ids in [0, {n_items})")
    target = target.astype(np.int32)
    order = np.argsort(target, kind="stable").astype(np.int32)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size, dtype=np.int32)
    count = np.bincount(target, minlength=n_items).astype(np.int32)
    start = (np.cumsum(count) - count).astype(np.int32)
    return SameTargetIndex(order, rank, target, start, count)


def make_same_target_sampler(train, n_items: int) -> SameTargetSampler:
    """From the training SequenceSamples (or an object with item_seq [N, L], item_seq_len and target), as
    device arrays."""
    if not isinstance(train, SequenceSamples):
        zeros = np.zeros(len(train.target), np.int32)
        train = SequenceSamples.from_matrix(train.item_seq, train.item_seq_len, train.target, zeros, zeros)
    if len(train.items) >= 2**31:
        raise ConfigError(
            f"same-target sampling: {len(train.items)} interactions; window positions are int32 on the device "
            "(at most 2**31 - 1)"
        )
    index = build_same_target_index(train.target, n_items)
    return SameTargetSampler(
        SameTargetIndex(*(jnp.asarray(a) for a in index)),
        jnp.asarray(train.items, dtype=jnp.int32),
        jnp.asarray(train.end - train.item_seq_len, dtype=jnp.int32),
        jnp.asarray(train.item_seq_len, dtype=jnp.int32),
        jnp.arange(train.max_len, dtype=jnp.int32),
    )


def _draw_position(xp, index, sample_ids, r_of):
    """Position in `order` of a uniform other same-target sample (the sample's own when alone)."""
    t = index.target[sample_ids]
    first, n_same = index.start[t], index.count[t]
    own = index.rank[sample_ids]
    r = r_of(xp.maximum(n_same - 1, 1))  # uniform in [0, n_same - 2]
    r = r + (r >= own - first)  # step over the sample itself
    return xp.where(n_same > 1, first + r, own)


def sample_same_target(index: SameTargetIndex, sample_ids, key):
    """Jittable: for each training sample id, another id with the same target (itself if none)."""
    sample_ids = jnp.asarray(sample_ids, jnp.int32)
    pos = _draw_position(jnp, index, sample_ids, lambda hi: jax.random.randint(key, sample_ids.shape, 0, hi, jnp.int32))
    return index.order[pos]


def sample_same_target_np(index: SameTargetIndex, sample_ids, rng: np.random.Generator):
    """numpy twin of `sample_same_target` for host-side use and tests."""
    sample_ids = np.asarray(sample_ids)
    pos = _draw_position(np, index, sample_ids, lambda hi: rng.integers(0, hi))
    return np.asarray(index.order)[pos]


def info_nce(z_i, z_j, tau: float, weights):
    """DuoRec InfoNCE (dot similarity) restricted to rows with weight 1.

    Equal to DuoRec's [positive, negatives] CE with label 0: logsumexp over every allowed column
    (partner included) minus the partner's similarity. Every row keeps its partner allowed so padded
    rows stay finite; their weight 0 then removes them.
    """
    b = z_i.shape[0]
    n = 2 * b
    z = jnp.concatenate([z_i, z_j], axis=0)
    sim = (z @ z.T) / tau
    idx = jnp.arange(n)
    partner = (idx + b) % n
    valid = jnp.concatenate([weights, weights]) > 0
    allowed = (valid[None, :] | (idx[None, :] == partner[:, None])) & (idx[None, :] != idx[:, None])
    lse = jax.nn.logsumexp(jnp.where(allowed, sim, -jnp.inf), axis=-1)
    per_row = lse - sim[idx, partner]
    w = jnp.concatenate([weights, weights])
    return jnp.sum(per_row * w) / jnp.sum(w)


def duorec_loss(
    encoder,
    batch,
    key,
    *,
    lmd_sem: float = 0.1,
    tau: float = 1.0,
    same_target: SameTargetSampler | None = None,
    fuse_passes: bool = True,
    mesh=None,
    item_chunk_size: int = 0,
):
    """DuoRec us_x loss. Returns (loss, {"loss", "ce", "sem_nce"}).

    batch: item_seq int32[B, L], item_seq_len int32[B], target int32[B], optional mask float32[B],
    and either sem_aug / sem_aug_lengths (the same-target sequences, as DuoRec's dataloader gives) or
    index int32[B] (training-sample ids) with `same_target` to draw them here.
    key: dropout/sampling key, None = deterministic (no dropout; needs sem_aug in the batch).
    fuse_passes: run the three encoder passes as one batch of 3B rows, length-bucketed
    (models/bucketing.py: exact, and ~3x fewer tokens on Amazon-like length distributions); dropout
    masks are drawn per element, so rows are as independent as in three separate passes.
    mesh: with more than one device (batch sharded along its data axis) each device fuses and buckets
    its own rows of the three passes; the [B, H] outputs stay sharded and CE / InfoNCE see all rows.
    Dropout masks then depend on the device count (the key is folded with the device index), as in
    PyTorch DDP; without dropout the result is the 1-device one up to float32 rounding.
    item_chunk_size: the softmax CE over item chunks when the catalogue is larger (models/softmax_ce.py).
    """
    item_seq, item_seq_len = batch["item_seq"], batch["item_seq_len"]
    target = batch["target"].astype(jnp.int32)
    weights = batch.get("mask")
    weights = jnp.ones(item_seq.shape[0], jnp.float32) if weights is None else weights.astype(jnp.float32)
    k_pass, k_aug, k_sem, k_sample = [None] * 4 if key is None else jax.random.split(key, 4)
    table = encoder.item_table()

    if lmd_sem == 0:
        out = (
            encode_bucketed(encoder, item_seq, item_seq_len, k_pass, mesh=mesh)
            if fuse_passes
            else encoder(item_seq, item_seq_len, k_pass)
        )
        ce = masked_cross_entropy(out, table, target, weights, item_chunk_size)
        return ce, {"loss": ce, "ce": ce, "sem_nce": jnp.zeros_like(ce)}

    if "sem_aug" in batch:
        sem_seq, sem_len = batch["sem_aug"], batch["sem_aug_lengths"]
    elif same_target is not None and key is not None:
        ids = sample_same_target(same_target.index, batch["index"], k_sample)
        sem_seq, sem_len = same_target.sequences(ids)
    else:
        raise ConfigError("duorec_loss: lmd_sem > 0 needs batch['sem_aug'] or same_target= with a key")

    if fuse_passes:
        out, aug_out, sem_out = encode_passes(
            encoder, (item_seq, item_seq, sem_seq), (item_seq_len, item_seq_len, sem_len), k_pass, mesh=mesh
        )
    else:
        out = encoder(item_seq, item_seq_len, k_pass)
        aug_out = encoder(item_seq, item_seq_len, k_aug)
        sem_out = encoder(sem_seq, sem_len, k_sem)
    ce = masked_cross_entropy(out, table, target, weights, item_chunk_size)
    nce = info_nce(aug_out, sem_out, tau, weights)
    loss = ce + lmd_sem * nce
    return loss, {"loss": loss, "ce": ce, "sem_nce": nce}
