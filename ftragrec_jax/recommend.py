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
from pathlib import Path

import numpy as np

from ftragrec_jax.errors import CheckpointError, ConfigError, DataError
from ftragrec_jax.model_dir import ENCODER_MODELS

NEW_USER = -1  # no knowledge-base entry has this user id (remapped ids are >= 1)


@dataclasses.dataclass(frozen=True)
class Recommendation:
    items: list[str]  # top-k item tokens, best first
    scores: list[float]  # their scores (dot products with the item embeddings)
    unknown: list[str]  # input tokens not in the model's vocabulary (not used)
    used: int  # input items the model saw (after dropping unknown ones and keeping the last max length)

    def to_dict(self) -> dict:
        return {"items": [{"item": t, "score": s} for t, s in zip(self.items, self.scores)],
                "unknown": self.unknown, "used": self.used}


class Recommender:
    """A loaded model: `recommend(tokens, k=10, exclude_seen=False)`."""

    def __init__(self, path, meta: dict, vocab, scores_fn, max_len: int):
        self.path, self.meta, self.vocab = Path(path), meta, vocab
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
            raise DataError(f"recommend: none of the {len(tokens)} items is in the model's vocabulary "
                            f"({self.path / 'vocab.json'}): {' '.join(unknown[:10])}")
        candidates = self.vocab.n_items - 1 - (len(set(ids)) if exclude_seen else 0)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= candidates:
            raise ConfigError(f"recommend: k must be an integer in [1, {candidates}] (rankable items), got {k!r}")
        kept = ids[-self.max_len:]
        item_seq = np.zeros((1, self.max_len), np.int32)
        item_seq[0, :len(kept)] = kept
        scores = np.asarray(self._scores(item_seq, np.array([len(kept)], np.int32),
                                         np.array([len(ids)], np.int32))[0], np.float64)
        scores[0] = -np.inf
        if exclude_seen:
            scores[np.asarray(ids)] = -np.inf
        order = np.argsort(-scores, kind="stable")[:int(k)]
        return Recommendation(items=[self.vocab.item_tokens[i] for i in order],
                              scores=[float(scores[i]) for i in order], unknown=unknown, used=len(kept))


def load(path, *, data: str | None = None) -> Recommender:
    """A Recommender from a model directory (DuoRec or FTragrec, JAX-trained or converted).

    `data`: the dataset file the model was trained on, read only when the directory lacks vocab.json or (for
    FTragrec) knowledge_base.npz.
    """
    from ftragrec_jax.model_dir import load_knowledge_base, load_model
    from ftragrec_jax.models.encoder import EncoderConfig
    from ftragrec_jax.train.tasks import finite_params

    path = Path(path)
    meta, params, vocab = load_model(path)
    bad = finite_params(params)
    if bad:
        raise CheckpointError(f"{path}: parameters hold NaN/Inf in {', '.join(bad[:5])}; refusing to recommend")
    try:
        enc_cfg = EncoderConfig(**meta["encoder"])
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}/model.json: bad 'encoder' settings ({e})") from None
    kb = load_knowledge_base(path) if meta["model"] == "ftragrec" else None
    dataset = None
    if vocab is None or (meta["model"] == "ftragrec" and kb is None):
        missing = "vocab.json" if vocab is None else "knowledge_base.npz"
        if data is None:
            raise CheckpointError(f"{path}: has no {missing} (a converted or older model directory); "
                                  f"pass the dataset file it was trained on (--data FILE)")
        dataset = _dataset(meta, data)
        if vocab is None:
            vocab = dataset.vocab
    if vocab.n_items != enc_cfg.n_items:
        raise CheckpointError(f"{path}: the vocabulary has {vocab.n_items} items (padding included) but the model "
                              f"has {enc_cfg.n_items} item rows")
    if meta["model"] in ENCODER_MODELS:
        scores_fn = _duorec_scores(path, enc_cfg, params)
    else:
        scores_fn = _ftragrec_scores(path, meta, enc_cfg, params, kb, dataset)
    return Recommender(path, meta, vocab, scores_fn, enc_cfg.max_seq_length)


def _dataset(meta: dict, data: str):
    from ftragrec_jax.config import DATASET_KEYS, load_config
    from ftragrec_jax.train.tasks import dataset_from_config

    stored = {k: v for k, v in (meta.get("dataset") or {}).items() if k in DATASET_KEYS}
    return dataset_from_config(load_config(None, [f"data={data}"], base=stored))


def _duorec_scores(path, enc_cfg, params):
    from ftragrec_jax.train.tasks import encoder_scorer

    score = encoder_scorer(enc_cfg, params, f"{path}/params")
    return lambda item_seq, item_seq_len, prefix_len: score(item_seq, item_seq_len)


def _ftragrec_scores(path, meta, enc_cfg, params, kb, dataset):
    from flax import nnx

    from ftragrec_jax.model_dir import assign_params
    from ftragrec_jax.models.encoder import build_encoder
    from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec, make_scorer, score_fn
    from ftragrec_jax.models.knowledge_base import KnowledgeBase, compute_keys

    ftr = meta.get("ftragrec")
    if not isinstance(ftr, dict):
        raise CheckpointError(f"{path}/model.json: an FTragrec model needs its 'ftragrec' settings")
    names = {f.name for f in dataclasses.fields(FTragrecHParams)}
    try:
        hp = FTragrecHParams(**{k: v for k, v in ftr.items() if k in names})
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}/model.json: bad 'ftragrec' settings ({e})") from None
    model = build_ftragrec(build_encoder(enc_cfg, seed=0), hp, seed=0)
    assign_params(model, params, f"{path}/params")
    options = dict(backend=hp.retrieval_backend, faiss_index=hp.faiss_index, nprobe=hp.nprobe, top_k=hp.top_k,
                   faiss_overfetch=hp.faiss_overfetch)
    if kb is not None:
        if kb["h"].shape[1] != enc_cfg.hidden_size:
            raise CheckpointError(f"{path}/knowledge_base.npz: h has width {kb['h'].shape[1]}, the model "
                                  f"{enc_cfg.hidden_size}")
        keys = compute_keys(model.retriever, kb["h"], chunk_size=hp.retrieval_chunk_size)
        base = KnowledgeBase(kb["h"], kb["target"], kb["user"], kb["prefix_len"], keys, **options)
    else:
        base = KnowledgeBase.build(model.encoder, model.retriever, dataset.train,
                                   key_chunk_size=hp.retrieval_chunk_size, **options)
    if hp.top_k > len(base):
        raise CheckpointError(f"{path}: top_k={hp.top_k} exceeds the knowledge base ({len(base)} entries)")
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    fn = score_fn(make_scorer(graphdef, hp, rest=rest, searcher=base.searcher), state, base.memory)

    def scores(item_seq, item_seq_len, prefix_len):
        return fn(item_seq, item_seq_len, {"user": np.full(len(item_seq), NEW_USER, np.int32),
                                           "prefix_len": prefix_len})

    scores.knowledge_base = base
    return scores
