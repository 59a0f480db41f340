"""Small random FTragrec fixtures: users with random histories cut into (prefix -> next item) samples."""

from __future__ import annotations

import numpy as np

from ftragrec_jax.models.encoder import EncoderConfig, build_encoder

FIELDS = ("item_seq", "item_seq_len", "target", "user", "prefix_len")


def make_samples(seed: int, n_users: int, n_items: int, max_len: int, min_hist: int = 4, max_hist: int = 16):
    """Every prefix of every user's random history, RecBole-style: last max_len items, right-padded."""
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in FIELDS}
    for u in range(1, n_users + 1):
        hist = rng.integers(1, n_items, int(rng.integers(min_hist, max_hist + 1)))
        for length in range(1, len(hist)):
            prefix = hist[:length][-max_len:]
            seq = np.zeros(max_len, np.int32)
            seq[: len(prefix)] = prefix
            for k, v in zip(FIELDS, (seq, len(prefix), hist[length], u, length)):
                rows[k].append(v)
    return {k: np.asarray(v, np.int32) for k, v in rows.items()}


def batch_of(samples: dict, idx, batch_size: int | None = None) -> dict:
    """Rows idx as a batch; padded to batch_size with copies of the first row and mask 0 (like iterate_batches)."""
    idx = np.asarray(idx, np.int32)
    n = len(idx)
    b = batch_size or n
    full = np.concatenate([idx, np.repeat(idx[:1], b - n)])
    out = {k: v[full] for k, v in samples.items()}
    out["index"] = full
    out["mask"] = (np.arange(b) < n).astype(np.float32)
    return out


def small_encoder(n_items: int = 60, max_len: int = 8, hidden: int = 16, seed: int = 0):
    cfg = EncoderConfig(
        n_items=n_items,
        max_seq_length=max_len,
        hidden_size=hidden,
        n_layers=1,
        n_heads=2,
        inner_size=32,
        hidden_dropout_prob=0.2,
        attn_dropout_prob=0.2,
        initializer_range=0.5,
    )
    return build_encoder(cfg, seed)
