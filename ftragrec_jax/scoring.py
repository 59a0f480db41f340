"""The one inference path: a model's parameters (or its model directory) in, a jitted full-sort scorer out.

Every consumer scores through here: validation during training (both tasks), the frozen backbone's baseline,
`experiments.evaluate`, `compare`, `ablate` and `ship_pretrained` (through `load_model_dir`), and
`recommend`. A scorer is a `ScoreFn`:

    score(item_seq [B, L], item_seq_len [B], batch) -> scores [B, n_items]

Column 0 is the padding item. `batch` carries each row's `user` and `prefix_len`, which FTragrec's exclusion
rule needs (an encoder model ignores it). Every model's ScoreFn is also a `ChunkedScoreFn`, which scores the
catalogue chunk by chunk (config key item_chunk_size), so the evaluator and the recommender never need
[B, n_items]. Parameters are replicated over `mesh` when one is given, for batches
sharded along its data axis; with `mesh=None` everything runs on the default device.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from ftragrec_jax import parallel
from ftragrec_jax.config import DATASET_KEYS, Config, load_config, parse_override
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.errors import CheckpointError, ConfigError
from ftragrec_jax.model_dir import ENCODER_MODELS, check_vocab_compat, load_model, read_meta
from ftragrec_jax.models.bucketing import encode_bucketed
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder
from ftragrec_jax.models.ftragrec import (
    FTragrecHParams,
    build_ftragrec,
    chunk_scores,
    ftragrec_chunk_state,
    ftragrec_scores,
)
from ftragrec_jax.models.knowledge_base import KnowledgeBase, compute_keys, kb_options
from ftragrec_jax.models.search import FaissSearcher, Memory
from ftragrec_jax.models.softmax_ce import linear_chunk_scores
from ftragrec_jax.trees import assign_params, dotted, key_names

# (item_seq [B, L], item_seq_len [B], batch dict) -> scores [B, n_items]: what the evaluator calls
ScoreFn = Callable[[Any, Any, dict], Any]

# settings that change how a trained model retrieves and mixes, not its parameters: an evaluation may override
# them (experiments.evaluate --set alpha=0.3) to study a trained retriever without retraining it
INFERENCE_KEYS = (
    "retrieval_backend",
    "faiss_index",
    "nprobe",
    "faiss_overfetch",
    "faiss_rerank",
    "knowledge_base_dtype",
    "retrieval_chunk_size",
    "top_k",
    "retriever_temperature",
    "quality_threshold",
    "alpha",
    "fusion",
    "knn_value_window",
    "knn_value_decay",
    "exclude_same_user",
    "extend_memory_with_valid",
    "retriever_pool",  # with value_rerank: the cosine pool the reranker orders (no effect without it)
)
# shape or meaning of parameters
TRAINED_KEYS = ("retriever_layers", "retriever_inner_size", "learnable_alpha", "learnable_temperature", "value_rerank")
# inference keys that a model trained with the learnable flag holds as a parameter instead
LEARNED_BY = {"alpha": "learnable_alpha", "retriever_temperature": "learnable_temperature"}


# --- jitted scorers of a model's parts ---------------------------------------------------------------------
def encoder_scores(graphdef, *, rest=None, mesh=None):
    """jitted `(params, item_seq, item_seq_len) -> scores` of an encoder split as (graphdef, params[, rest])."""

    @jax.jit
    def scores(params, item_seq, item_seq_len):
        encoder = nnx.merge(graphdef, params) if rest is None else nnx.merge(graphdef, params, rest)
        # length-bucketed: the same outputs; eval prefixes are short, so ~5x less encoder work on Beauty.
        # Each device buckets its own rows.
        return encoder.scores(encode_bucketed(encoder, item_seq, item_seq_len, mesh=mesh))

    return scores


def encoder_represent(graphdef, *, rest=None, mesh=None):
    """jitted `(params, item_seq, item_seq_len) -> seq_output [B, H]`: the vector `encoder_scores` multiplies
    with the item table."""

    @jax.jit
    def represent(params, item_seq, item_seq_len):
        encoder = nnx.merge(graphdef, params) if rest is None else nnx.merge(graphdef, params, rest)
        return encode_bucketed(encoder, item_seq, item_seq_len, mesh=mesh)

    return represent


class ChunkedScoreFn:
    """A ScoreFn that can also score the catalogue one item chunk at a time (evaluation.sample_ranks and
    recommend take it when config key item_chunk_size is below n_items):

        prepare(item_seq, item_seq_len, batch, item_chunk_size) -> state, a pytree of [B, ...] arrays
        chunk_scores(state, part [C, H], start) -> [B, C], the scores of items start..start+C-1

    `chunk_scores` is a pure module-level function (static under jit); `item_chunk_size` lets `prepare` run
    its own whole-catalogue reductions in chunks too (FTragrec kNN-LM's logsumexp). Over all chunks the scores
    are those __call__ returns, up to float32 rounding."""

    def __init__(self, scores, prepare, chunk_scores, item_table):
        self._scores, self.prepare, self.chunk_scores, self.item_table = scores, prepare, chunk_scores, item_table

    def __call__(self, item_seq, item_seq_len, batch=None):
        return self._scores(item_seq, item_seq_len, batch)


class LinearScoreFn(ChunkedScoreFn):
    """A ChunkedScoreFn whose scores are `represent(item_seq, item_seq_len) @ item_table.T` (encoder models)."""

    def __init__(self, scores, represent, item_table):
        super().__init__(
            lambda item_seq, item_seq_len, batch=None: scores(item_seq, item_seq_len),
            lambda item_seq, item_seq_len, batch=None, item_chunk_size=0: represent(item_seq, item_seq_len),
            linear_chunk_scores,
            item_table,
        )
        self.represent = represent


def encoder_score_fn(encoder, *, mesh=None) -> LinearScoreFn:
    """The ScoreFn of a filled encoder module (a DuoRec/SASRec model, or FTragrec's frozen backbone)."""
    graphdef, state = nnx.split(encoder)
    if mesh is not None:
        state = parallel.replicate(state, mesh)
    scores, represent = encoder_scores(graphdef, mesh=mesh), encoder_represent(graphdef, mesh=mesh)
    table = nnx.merge(graphdef, state).item_table()
    return LinearScoreFn(
        lambda item_seq, item_seq_len: scores(state, item_seq, item_seq_len),
        lambda item_seq, item_seq_len: represent(state, item_seq, item_seq_len),
        table,
    )


class FTragrecScorer:
    """The jitted scorers of an FTragrec model split as (graphdef, params[, rest]): `(params, memory, batch) ->
    scores` when called, `chunk_state(params, memory, batch, item_chunk_size)` for scoring by item chunks
    (models/ftragrec.ftragrec_chunk_state). `bind` turns it into a ScoreFn for fixed params and base."""

    def __init__(self, graphdef, hp: FTragrecHParams, *, rest=None, searcher=None, mesh=None):
        def merge(params):
            return nnx.merge(graphdef, params) if rest is None else nnx.merge(graphdef, params, rest)

        def scores(params, memory, batch):
            return ftragrec_scores(merge(params), batch, memory, hp=hp, searcher=searcher, mesh=mesh)

        def state(params, memory, batch, item_chunk_size):
            model = merge(params)
            return ftragrec_chunk_state(
                model, batch, memory, hp=hp, searcher=searcher, mesh=mesh, item_chunk_size=item_chunk_size
            )

        self._merge = merge
        self.scores = jax.jit(scores)
        self.chunk_state = jax.jit(state, static_argnames=("item_chunk_size",))
        self.chunk_scores = chunk_scores(hp)

    def __call__(self, params, memory, batch):
        return self.scores(params, memory, batch)

    def item_table(self, params):
        """The frozen item table [n_items, H], placed as params are."""
        return self._merge(params).encoder.item_table()


def ftragrec_scorer(
    graphdef, hp: FTragrecHParams, *, rest=None, searcher: FaissSearcher | None = None, mesh=None
) -> FTragrecScorer:
    return FTragrecScorer(graphdef, hp, rest=rest, searcher=searcher, mesh=mesh)


def bind(scorer: FTragrecScorer, params, memory: Memory | Callable[[], Memory]) -> ChunkedScoreFn:
    """The ScoreFn of an `ftragrec_scorer` with these params. `memory`: the knowledge base's device arrays, or
    a function returning them at each call (a base that is refreshed or extended between calls)."""
    current = memory if callable(memory) else (lambda: memory)

    def fields(item_seq, item_seq_len, batch):
        missing = [k for k in ("user", "prefix_len") if k not in (batch or {})]
        if missing:
            raise ConfigError(f"FTragrec evaluation: batch lacks {missing} (needed by the exclusion rule)")
        return {
            "item_seq": item_seq,
            "item_seq_len": item_seq_len,
            "user": batch["user"],
            "prefix_len": batch["prefix_len"],
        }

    def fn(item_seq, item_seq_len, batch):
        return scorer(params, current(), fields(item_seq, item_seq_len, batch))

    def prepare(item_seq, item_seq_len, batch, item_chunk_size=0):
        b = fields(item_seq, item_seq_len, batch)
        return scorer.chunk_state(params, current(), b, item_chunk_size=int(item_chunk_size))

    return ChunkedScoreFn(fn, prepare, scorer.chunk_scores, scorer.item_table(params))


# --- a saved model ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Scorer:
    """A saved model ready to score: `score` (a ScoreFn) and what it was built from."""

    score: ScoreFn
    meta: dict  # the model directory's model.json
    knowledge_base: KnowledgeBase | None = None  # FTragrec: the base it searches
    before_test: Callable[[], None] = lambda: None  # run once between valid and test (extend_memory_with_valid)

    def __call__(self, item_seq, item_seq_len, batch):
        return self.score(item_seq, item_seq_len, batch)


def nonfinite_params(tree) -> list[str]:
    """Dotted paths of parameter leaves holding NaN or Inf (empty when all are finite)."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            bad.append(dotted(key_names(path)))
    return bad


def check_inference_overrides(inference: dict, meta: dict, path: str) -> None:
    """Refuse evaluation-time settings that a model directory cannot take (keys named in the message)."""
    if not inference:
        return
    if meta.get("model") != "ftragrec":
        raise ConfigError(
            f"config keys {sorted(inference)} apply to FTragrec checkpoints only; {path} is {meta.get('model')!r}"
        )
    unknown = sorted(set(inference) - set(INFERENCE_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: config keys {unknown} are fixed by the trained model; an evaluation may change "
            f"only {list(INFERENCE_KEYS)}"
        )
    for key, flag in LEARNED_BY.items():
        if key in inference and (meta.get("ftragrec") or {}).get(flag):
            raise ConfigError(
                f"{path}: config key {key!r} is a trained parameter of this model ({flag}); it cannot be overridden"
            )


def from_params(
    meta: dict,
    params: dict,
    *,
    source: str,
    dataset=None,
    knowledge_base: dict | None = None,
    mesh=None,
    inference: dict | None = None,
    faiss_shards: int = 1,
    purpose: str = "evaluate",
) -> Scorer:
    """The Scorer of a saved model's meta (model.json) and parameters (JAX-trained or converted).

    FTragrec needs its knowledge base: `knowledge_base` (the arrays of knowledge_base.npz; keys are recomputed
    with the saved g) or, when None, one rebuilt from `dataset`'s training split, as during training after a
    refresh. `inference`: settings over INFERENCE_KEYS replacing the stored ones (another alpha or top_k for
    the same trained g). `source` names the directory in error messages, `purpose` what was refused."""
    check_inference_overrides(inference or {}, meta, source)
    bad = nonfinite_params(params)
    if bad:
        raise CheckpointError(f"{source}: parameters hold NaN/Inf in {', '.join(bad[:5])}; refusing to {purpose}")
    try:
        enc_cfg = EncoderConfig(**meta["encoder"])
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{source}/model.json: bad 'encoder' settings ({e})") from None
    if meta["model"] in ENCODER_MODELS:
        encoder = build_encoder(enc_cfg, seed=0)
        assign_params(encoder, params, f"{source}/params")
        return Scorer(encoder_score_fn(encoder, mesh=mesh), meta)
    ftr = meta.get("ftragrec")
    if not isinstance(ftr, dict):
        raise CheckpointError(f"{source}/model.json: an FTragrec model needs its 'ftragrec' settings")
    ftr = {**ftr, **(inference or {})}
    try:
        hp = FTragrecHParams.from_config(ftr)
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{source}/model.json: bad 'ftragrec' settings ({e})") from None
    model = build_ftragrec(build_encoder(enc_cfg, seed=0), hp, seed=0)
    assign_params(model, params, f"{source}/params")
    kb = _knowledge_base(model, hp, source, dataset, knowledge_base, faiss_shards)
    if hp.top_k > len(kb):
        raise CheckpointError(f"{source}: top_k={hp.top_k} exceeds the knowledge base ({len(kb)} entries)")
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    scorer = ftragrec_scorer(graphdef, hp, rest=rest, searcher=kb.searcher, mesh=mesh)
    if mesh is not None:
        state = parallel.replicate(state, mesh)
    placed = {"memory": None}

    def memory():
        """Placed on the mesh once, and again after before_test() extends the base (the placed copy replaces
        the base's own, so a device never holds it twice)."""
        if mesh is None:
            return kb.memory
        if kb.memory is not placed["memory"]:
            kb.memory = placed["memory"] = parallel.place_step_data(kb.memory, mesh)
        return placed["memory"]

    def before_test():
        if ftr.get("extend_memory_with_valid"):
            if dataset is None:
                raise ConfigError(f"{source}: extend_memory_with_valid needs the dataset's valid split")
            kb.extend(model.encoder, model.retriever, dataset.valid)

    return Scorer(bind(scorer, state, memory), meta, kb, before_test)


def _knowledge_base(
    model, hp: FTragrecHParams, source: str, dataset, arrays: dict | None, faiss_shards: int
) -> KnowledgeBase:
    options = kb_options(hp, faiss_shards=faiss_shards)
    if arrays is not None:
        width = model.encoder.config.hidden_size
        if arrays["h"].shape[1] != width:
            raise CheckpointError(f"{source}/knowledge_base.npz: h has width {arrays['h'].shape[1]}, the model {width}")
        keys = compute_keys(model.retriever, arrays["h"], chunk_size=hp.retrieval_chunk_size)
        return KnowledgeBase(arrays["h"], arrays["target"], arrays["user"], arrays["prefix_len"], keys, **options)
    if dataset is None:
        raise CheckpointError(f"{source}: an FTragrec model needs its knowledge base or the dataset it was trained on")
    return KnowledgeBase.build(
        model.encoder, model.retriever, dataset.train, key_chunk_size=hp.retrieval_chunk_size, **options
    )


@dataclasses.dataclass
class LoadedModel:
    """A model directory with the dataset and settings it is evaluated on."""

    cfg: Config  # the stored dataset settings, with the caller's overrides
    dataset: Any
    mesh: Any  # evaluation batches are sharded along its data axis
    scorer: Scorer


def load_model_dir(
    checkpoint, data=None, overrides=(), show_progress=True, shared=None, knowledge_base=None
) -> LoadedModel:
    """A model directory (or builtin:NAME) with its dataset, every check done before the weights load.

    Dataset settings come from the directory's model.json; `overrides` ("key=value") may change them and,
    for FTragrec, the INFERENCE_KEYS. shared: (cfg, dataset) of an earlier call whose dataset to reuse; its
    dataset settings (file, format, k-core, length) must be those this checkpoint resolves to.
    knowledge_base: FTragrec, the KB_FIELDS arrays of a base built earlier from this dataset's training split
    (keys are recomputed with this model's g), so that several settings of one model encode the split once."""
    meta = read_meta(checkpoint)
    stored = {k: v for k, v in (meta.get("dataset") or {}).items() if k in DATASET_KEYS}
    extra = [f"data={data}"] if data is not None else []
    cfg = load_config(None, list(overrides) + extra, base=stored)
    cfg.show_progress = show_progress
    given = {parse_override(o)[0] for o in overrides}
    inference = {k: getattr(cfg, k) for k in sorted(given & set(INFERENCE_KEYS + TRAINED_KEYS))}
    check_inference_overrides(inference, meta, str(checkpoint))  # before the dataset and weights are loaded
    mesh = parallel.make_mesh(cfg.mesh)  # batches sharded over it, as in training
    parallel.check_batch_divides(cfg.eval_batch_size, mesh, "eval_batch_size")  # before loading anything
    if shared is None:
        dataset = dataset_from_config(cfg)
    else:
        first, dataset = shared
        differ = [k for k in DATASET_KEYS if getattr(first, k) != getattr(cfg, k)]
        if differ:
            raise ConfigError(
                f"{checkpoint}: dataset settings differ from the first model's in "
                + ", ".join(f"{k} ({getattr(cfg, k)!r} vs {getattr(first, k)!r})" for k in differ)
                + "; pass --data and --set to make them agree"
            )
    check_vocab_compat(meta, dataset.n_items, str(checkpoint))
    meta, params, vocab = load_model(checkpoint)
    if vocab is not None and vocab.item_tokens != dataset.vocab.item_tokens:
        diff = next(i for i, (a, b) in enumerate(zip(vocab.item_tokens, dataset.vocab.item_tokens)) if a != b)
        raise CheckpointError(
            f"{checkpoint}: the stored item vocabulary differs from the dataset's at id {diff} "
            f"({vocab.item_tokens[diff]!r} vs {dataset.vocab.item_tokens[diff]!r}); same item count, different items"
        )
    scorer = from_params(
        meta,
        params,
        source=str(Path(str(checkpoint))),
        dataset=dataset,
        mesh=mesh,
        knowledge_base=knowledge_base,
        inference=inference,
        faiss_shards=cfg.faiss_shards,
    )
    return LoadedModel(cfg, dataset, mesh, scorer)
