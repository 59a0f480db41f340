"""Top-k next items for a sequence given in the dataset's own item tokens, from a saved model directory.

Uses only what the model directory holds: parameters, vocab.json and, for FTragrec, knowledge_base.npz (the
frozen encodings of the training samples; keys are recomputed with the saved retriever g). A directory that
lacks the vocabulary or the base (a checkpoint converted from PyTorch, an FTragrec dir saved before bases
were stored) can borrow them from the dataset file it was trained on (`data=`).

A query is a new sequence, not a training sample: its user matches no entry, so the same-user exclusion rule
never removes a neighbour. Items already in the sequence stay rankable (RecBole's protocol) unless
`exclude_seen`; padding id 0 is never recommended; equal scores rank the lower item id first, as the evaluator.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ftragrec_jax import scoring
from ftragrec_jax.config import DATASET_KEYS, load_config
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.errors import CheckpointError, ConfigError, DataError
from ftragrec_jax.model_dir import load_knowledge_base, load_model, resolve
from ftragrec_jax.models.softmax_ce import item_chunks, linear_chunk_scores

NEW_USER = -1  # no knowledge-base entry has this user id (remapped ids are >= 1)


@dataclasses.dataclass(frozen=True)
class Recommendation:
    items: list[str]  # top-k item tokens, best first
    scores: list[float]  # their scores (dot products with the item embeddings)
    unknown: list[str]  # input tokens not in the model's vocabulary (not used)
    used: int  # input items the model saw (after dropping unknown ones and keeping the last max length)

    def to_dict(self) -> dict:
        return {
            "items": [{"item": t, "score": s} for t, s in zip(self.items, self.scores)],
            "unknown": self.unknown,
            "used": self.used,
        }


class Recommender:
    """A loaded model: `recommend(tokens, k=10, exclude_seen=False)` for one sequence, `recommend_many` for many."""

    def __init__(self, path, meta: dict, vocab, scores_fn, max_len: int):
        self.path, self.meta, self.vocab = Path(path), meta, vocab
        # a scoring.ChunkedScoreFn over (item_seq, item_seq_len, prefix_len): bulk top-k may run over item chunks
        self._scores, self.max_len = scores_fn, max_len

    @property
    def model(self) -> str:
        return self.meta["model"]

    def recommend(self, tokens, k: int = 10, *, exclude_seen: bool = False) -> Recommendation:
        """`tokens`: a space-separated string or a sequence of item tokens, oldest first."""
        if isinstance(tokens, str):
            tokens = tokens.split()
        tokens = [str(t) for t in tokens]
        if not tokens:
            raise DataError("recommend: the item sequence is empty")
        ids, unknown = self.vocab.item_ids(tokens)
        if not ids:
            raise DataError(
                f"recommend: none of the {len(tokens)} items is in the model's vocabulary "
                f"({self.path / 'vocab.json'}): {' '.join(unknown[:10])}"
            )
        candidates = self.vocab.n_items - 1 - (len(set(ids)) if exclude_seen else 0)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= candidates:
            raise ConfigError(f"recommend: k must be an integer in [1, {candidates}] (rankable items), got {k!r}")
        kept = ids[-self.max_len :]
        item_seq = np.zeros((1, self.max_len), np.int32)
        item_seq[0, : len(kept)] = kept
        scores = np.asarray(
            self._scores(item_seq, np.array([len(kept)], np.int32), np.array([len(ids)], np.int32))[0], np.float64
        )
        scores[0] = -np.inf
        if exclude_seen:
            scores[np.asarray(ids)] = -np.inf
        order = np.argsort(-scores, kind="stable")[: int(k)]
        return Recommendation(
            items=[self.vocab.item_tokens[i] for i in order],
            scores=[float(scores[i]) for i in order],
            unknown=unknown,
            used=len(kept),
        )

    def recommend_many(
        self,
        sequences: Iterable,
        k: int = 10,
        *,
        exclude_seen: bool = False,
        batch_size: int = 256,
        progress: bool = False,
        total: int | None = None,
        item_chunk_size: int = 0,
    ) -> Iterator[Recommendation]:
        """One Recommendation per input sequence (a space-separated string or a list of tokens), in input order:
        the items and order `recommend` gives, scored in jitted batches of `batch_size` rows (the last one
        padded) with the top-k taken on the device, so only [batch, k] comes back to the host. A sequence with no
        known item yields a Recommendation with no items and its tokens in `unknown` (a bulk run goes on);
        with `exclude_seen`, a row with fewer than k unseen items gets all of them. item_chunk_size > 0 (a
        catalogue larger than it): the top-k is merged over item chunks, never [batch, n_items] scores."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.vocab.n_items - 1:
            raise ConfigError(f"recommend: k must be an integer in [1, {self.vocab.n_items - 1}], got {k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"recommend: batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(item_chunk_size, bool) or not isinstance(item_chunk_size, int) or item_chunk_size < 0:
            raise ConfigError(f"recommend: item_chunk_size must be an integer >= 0, got {item_chunk_size!r}")
        chunk = item_chunk_size if 0 < item_chunk_size < self.vocab.n_items else 0
        bar = tqdm(total=total, desc="Recommend", unit="seq", disable=not progress)
        rows = []
        for tokens in sequences:
            tokens = tokens.split() if isinstance(tokens, str) else [str(t) for t in tokens]
            ids, unknown = self.vocab.item_ids(tokens)
            rows.append((ids, unknown))
            if len(rows) == batch_size:
                yield from self._batch(rows, int(k), exclude_seen, batch_size, chunk)
                bar.update(len(rows))
                rows = []
        if rows:
            yield from self._batch(rows, int(k), exclude_seen, batch_size, chunk)
            bar.update(len(rows))
        bar.close()

    def _batch(self, rows, k: int, exclude_seen: bool, batch_size: int, chunk: int) -> Iterator[Recommendation]:
        known = [i for i, (ids, _) in enumerate(rows) if ids]
        top_ids = top_scores = None
        if known:
            item_seq = np.zeros((batch_size, self.max_len), np.int32)
            seq_len = np.ones(batch_size, np.int32)  # padding rows: one padding item, scored and dropped
            prefix = np.ones(batch_size, np.int32)
            # the seen matrix has a power-of-two width, so a bulk run compiles for a few widths only
            longest = max(len(rows[i][0]) for i in known) if exclude_seen else 1
            seen = np.zeros((batch_size, 1 << (longest - 1).bit_length()), np.int32)
            for row, i in enumerate(known):
                ids = rows[i][0]
                kept = ids[-self.max_len :]
                item_seq[row, : len(kept)] = kept
                seq_len[row], prefix[row] = len(kept), len(ids)
                if exclude_seen:
                    seen[row, : len(ids)] = ids
            if chunk:
                fn = self._scores
                state = fn.prepare(item_seq, seq_len, prefix, chunk)
                top = _chunked_masked_top_k(state, fn.item_table, seen, k, chunk, fn.chunk_scores)
            else:
                top = _masked_top_k(self._scores(item_seq, seq_len, prefix), seen, k)
            top_scores, top_ids = (np.asarray(a) for a in top)
        slot = {i: row for row, i in enumerate(known)}
        for i, (ids, unknown) in enumerate(rows):
            if i not in slot:
                yield Recommendation(items=[], scores=[], unknown=unknown, used=0)
                continue
            ok = np.isfinite(top_scores[slot[i]])  # masked items (padding, seen) come last as -inf
            yield Recommendation(
                items=[self.vocab.item_tokens[j] for j in top_ids[slot[i]][ok]],
                scores=[float(v) for v in top_scores[slot[i]][ok]],
                unknown=unknown,
                used=min(len(ids), self.max_len),
            )


@functools.partial(jax.jit, static_argnames=("k",))
def _masked_top_k(scores, seen, k: int):
    """(scores, ids) [B, k] of each row's best items, padding and `seen` ids (0 = none) masked to -inf; lax.top_k
    returns equal scores lower index first, the evaluator's tie rule."""
    scores = jnp.asarray(scores, jnp.float32).at[:, 0].set(-jnp.inf)
    scores = scores.at[jnp.arange(scores.shape[0])[:, None], seen].set(-jnp.inf)
    return jax.lax.top_k(scores, k)


@functools.partial(jax.jit, static_argnames=("k", "chunk", "chunk_scores"))
def _chunked_masked_top_k(state, table, seen, k: int, chunk: int, chunk_scores=linear_chunk_scores):
    """_masked_top_k of the scores chunk_scores(state, part, start) gives item chunk by item chunk
    (scoring.ChunkedScoreFn; default state @ table.T), merged: each chunk's best k join the running best k
    (running first, so equal scores keep the lower id, which came in an earlier chunk)."""
    parts, real = item_chunks(table, chunk)
    starts = jnp.arange(parts.shape[0], dtype=jnp.int32) * chunk
    b = seen.shape[0]
    rows = jnp.arange(b)[:, None]

    def merge(best, xs):
        start, t, ok = xs
        ids = start + jnp.arange(chunk, dtype=jnp.int32)
        scores = jnp.where(ok[None, :] & (ids != 0)[None, :], chunk_scores(state, t, start), -jnp.inf)
        col = seen - start
        inside = (seen > 0) & (col >= 0) & (col < chunk)
        scores = scores.at[rows, jnp.where(inside, col, chunk)].set(-jnp.inf, mode="drop")
        vals, idx = jax.lax.top_k(scores, min(k, chunk))
        both_vals = jnp.concatenate([best[0], vals], axis=1)
        both_ids = jnp.concatenate([best[1], start + idx.astype(jnp.int32)], axis=1)
        keep_vals, keep = jax.lax.top_k(both_vals, k)
        return (keep_vals, jnp.take_along_axis(both_ids, keep, axis=1)), None

    init = (jnp.full((b, k), -jnp.inf, jnp.float32), jnp.zeros((b, k), jnp.int32))
    best, _ = jax.lax.scan(merge, init, (starts, parts, real))
    return best


def load(path, *, data: str | None = None) -> Recommender:
    """A Recommender from a model directory (DuoRec or FTragrec, JAX-trained or converted, or builtin:NAME).

    `data`: the dataset file the model was trained on, read only when the directory lacks vocab.json or (for
    FTragrec) knowledge_base.npz.
    """
    path = resolve(path)
    meta, params, vocab = load_model(path)
    kb = load_knowledge_base(path) if meta["model"] == "ftragrec" else None
    dataset = None
    if vocab is None or (meta["model"] == "ftragrec" and kb is None):
        missing = "vocab.json" if vocab is None else "knowledge_base.npz"
        if data is None:
            raise CheckpointError(
                f"{path}: has no {missing} (a converted or older model directory); "
                f"pass the dataset file it was trained on (--data FILE)"
            )
        dataset = dataset_of(meta, data)
        if vocab is None:
            vocab = dataset.vocab
    n_rows = (meta.get("encoder") or {}).get("n_items")
    if vocab.n_items != n_rows:
        raise CheckpointError(
            f"{path}: the vocabulary has {vocab.n_items} items (padding included) but the model has {n_rows} item rows"
        )
    scorer = scoring.from_params(
        meta, params, source=str(path), dataset=dataset, knowledge_base=kb, purpose="recommend"
    )

    def batch(item_seq, prefix_len):
        # a new sequence: no knowledge-base entry is its own, so the exclusion rule removes nothing
        return {"user": np.full(len(item_seq), NEW_USER, np.int32), "prefix_len": prefix_len}

    def scores(item_seq, item_seq_len, prefix_len):
        return scorer(item_seq, item_seq_len, batch(item_seq, prefix_len))

    fn = scorer.score
    chunked = scoring.ChunkedScoreFn(
        scores,
        lambda item_seq, item_seq_len, prefix_len, chunk: fn.prepare(
            item_seq, item_seq_len, batch(item_seq, prefix_len), chunk
        ),
        fn.chunk_scores,
        fn.item_table,
    )
    return Recommender(path, meta, vocab, chunked, meta["encoder"]["max_seq_length"])


def dataset_of(meta: dict, data: str | None = None):
    """The dataset a model was trained on: its model.json's data settings, with `data` replacing the file."""
    stored = {k: v for k, v in (meta.get("dataset") or {}).items() if k in DATASET_KEYS}
    return dataset_from_config(load_config(None, [f"data={data}"] if data is not None else [], base=stored))
