"""Shared builders for the PyTorch-vs-JAX parity tests: a twin model pair and ragged batches."""

from __future__ import annotations

import numpy as np


def ragged_sequences(rng: np.random.Generator, batch: int, max_len: int, n_items: int):
    """Right-padded [B, L] int32 sequences keeping the last max_len items of random prefixes.

    Prefix lengths cover 1, exactly max_len, and longer than max_len (truncated), plus random ones.
    """
    prefix_lens = rng.integers(1, max_len + 6, size=batch)
    prefix_lens[:3] = [1, max_len, max_len + 5]
    seqs = np.zeros((batch, max_len), np.int32)
    lens = np.minimum(prefix_lens, max_len).astype(np.int32)
    for i, p in enumerate(prefix_lens):
        history = rng.integers(1, n_items, size=p)
        kept = history[-max_len:]
        seqs[i, : len(kept)] = kept
    return seqs, lens


def random_batch(rng, batch: int, max_len: int, n_items: int) -> dict[str, np.ndarray]:
    seq, seq_len = ragged_sequences(rng, batch, max_len, n_items)
    sem, sem_len = ragged_sequences(rng, batch, max_len, n_items)
    order = rng.permutation(batch)  # so the same-target rows' lengths don't line up with item_seq's
    return {
        "item_seq": seq,
        "item_seq_len": seq_len,
        "target": rng.integers(1, n_items, size=batch).astype(np.int32),
        "sem_aug": sem[order],
        "sem_aug_lengths": sem_len[order],
    }


def twin_models(cfg, seed: int, **loss_kwargs):
    """A TorchDuoRec with RecBole's init and a Flax encoder holding the same weights."""
    import torch

    from converters.mapping import load_torch_state_into_encoder
    from converters.reference.torch_duorec import TorchDuoRec
    from ftragrec_jax.models.encoder import build_encoder

    torch.manual_seed(seed)
    ref = TorchDuoRec.from_encoder_config(cfg, **loss_kwargs)
    ref.eval()  # dropout off: RNG streams differ between frameworks
    enc = build_encoder(cfg, seed + 1)
    ignored = load_torch_state_into_encoder({k: v.numpy() for k, v in ref.state_dict().items()}, enc)
    assert ignored == []
    return ref, enc


def to_torch(batch):
    import torch

    return {k: torch.as_tensor(np.asarray(v)) for k, v in batch.items()}


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
