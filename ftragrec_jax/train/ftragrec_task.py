"""FTragrec fine-tuning as a trainer task: a frozen DuoRec from `pretrained`, a trainable retriever g, and the
knowledge base whose keys are refreshed between epochs (the only host state a resumed run must restore)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from ftragrec_jax import parallel, scoring
from ftragrec_jax.config import Config
from ftragrec_jax.data.batches import last_per_user, valid_query_split
from ftragrec_jax.errors import CheckpointError, ConfigError
from ftragrec_jax.model_dir import BUILTIN, check_vocab_compat, encoder_from_model_dir
from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec, validate_setup
from ftragrec_jax.models.knowledge_base import KnowledgeBase, kb_options
from ftragrec_jax.optim import make_optimizer, trainable_modules
from ftragrec_jax.train.run_dir import LOGGER_NAME
from ftragrec_jax.train.steps import make_ftragrec_step
from ftragrec_jax.train.task import Task
from ftragrec_jax.trees import assign_params


def load_pretrained_encoder(path: str, dataset):
    """The frozen backbone from a model directory, checked against the dataset's item vocabulary."""
    if not path:
        raise ConfigError("config key 'pretrained': expected a DuoRec model directory for model=ftragrec")
    try:
        encoder, meta, vocab = encoder_from_model_dir(path)
    except CheckpointError as e:
        raise ConfigError(f"config key 'pretrained': {e}") from None
    try:
        check_vocab_compat(meta, dataset.n_items, f"pretrained {path}")
    except CheckpointError as e:
        raise ConfigError(f"config key 'pretrained': {e}") from None
    if vocab is not None and vocab.item_tokens != dataset.vocab.item_tokens:
        raise ConfigError(
            f"config key 'pretrained': {path} was trained on a different item vocabulary "
            f"(same count, different items) than the dataset"
        )
    return encoder, meta


def backbone_holdout(cfg: Config, meta: dict) -> int:
    """How many of each user's last training samples the frozen backbone was pretrained without (its
    model.json's source.pretrain_holdout_last; 0 when absent, as in converted or older models). A nonzero
    pretrain_holdout_last in the config must agree with it, and retriever_queries=held_out needs it >= 1."""
    n = (meta.get("source") or {}).get("pretrain_holdout_last", 0)
    where = f"config key 'pretrained': {cfg.pretrained}"
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"{where}: model.json source.pretrain_holdout_last is {n!r}, expected an integer >= 0")
    if cfg.pretrain_holdout_last and cfg.pretrain_holdout_last != n:
        raise ConfigError(
            f"config key 'pretrain_holdout_last': {cfg.pretrain_holdout_last}, but {cfg.pretrained} was pretrained "
            f"with {n} (model.json source.pretrain_holdout_last); leave it 0 with a given backbone"
        )
    if cfg.retriever_queries == "held_out" and n == 0:
        raise ConfigError(
            f"config key 'retriever_queries': held_out needs a backbone pretrained with pretrain_holdout_last >= 1, "
            f"but {cfg.pretrained} was trained on every training sample"
        )
    return n


class FTragrecTask(Task):
    model = "ftragrec"
    batch_fields = ("item_seq", "item_seq_len", "target", "user", "prefix_len", "mask", "index")

    def __init__(self, cfg: Config, dataset):
        self.cfg, self.dataset = cfg, dataset
        self.hp = FTragrecHParams.from_config(cfg)
        self.mesh = parallel.make_mesh(cfg.mesh)
        self._placed = None  # kb.memory once placed on the mesh: placed once per refresh, not per call
        encoder, self.pretrained_meta = load_pretrained_encoder(cfg.pretrained, dataset)
        self.holdout_last = backbone_holdout(cfg, self.pretrained_meta)
        validate_setup(
            self.hp,
            n_base=len(dataset.train),
            hidden_size=cfg.hidden_size,
            encoder_cfg=encoder.config,
            n_items=dataset.n_items,
        )
        self.encoder_cfg = encoder.config
        model = build_ftragrec(encoder, self.hp, seed=cfg.seed)
        self.graphdef, self._init_params, self.rest = nnx.split(model, nnx.Param, ...)
        self.trainable = trainable_modules(freeze_retriever=cfg.freeze_retriever)
        self.tx = make_optimizer(cfg.learning_rate, cfg.weight_decay, self.trainable)
        # cached outputs are the base's own rows: queries from the valid split run the frozen encoder per step
        self.cached = cfg.cache_seq_output and cfg.retriever_queries == "train"
        t0 = time.perf_counter()
        # the cached step also reads the backbone's CE per training sample, a constant of the frozen model
        self.kb = KnowledgeBase.build(
            model.encoder,
            model.retriever,
            dataset.train,
            key_chunk_size=self.hp.retrieval_chunk_size,
            with_rec_ce=self.cached,
            item_chunk_size=cfg.item_chunk_size,
            # the FAISS searcher answers the training pool (scoring keeps top_k of it)
            **kb_options(self.hp, faiss_shards=cfg.faiss_shards, width=self.hp.search_k),
        )
        where = (
            f"faiss on {self.kb.searcher.device}, {cfg.faiss_shards} shard(s)"
            if self.kb.searcher
            else f"exact on {self.mesh.size} device(s)"
        )
        logging.getLogger(LOGGER_NAME).info(
            "knowledge base: %d entries (%s) built in %.1fs", len(self.kb), where, time.perf_counter() - t0
        )
        self._step = make_ftragrec_step(
            self.graphdef,
            self.hp,
            self.tx,
            rest=self.rest,
            searcher=self.kb.searcher,
            cached=self.cached,
            trainable=self.trainable,
            item_chunk_size=cfg.item_chunk_size,
        )
        self._scorer = scoring.ftragrec_scorer(
            self.graphdef, self.hp, rest=self.rest, searcher=self.kb.searcher, mesh=self.mesh
        )

    def merge(self, params):
        return nnx.merge(self.graphdef, params, self.rest)

    def init(self):
        return self._init_params, self.tx.init(self._init_params)

    def _memory_on_mesh(self):
        """The base on the mesh: on several devices the exact backend searches its keys shard by shard.
        The placed copy replaces the base's own, so a device never holds the base twice; a refresh swaps in
        new keys (or rebuilds the base) and the next call places them again."""
        if self.kb.memory is not self._placed:
            self.kb.memory = self._placed = parallel.place_step_data(self.kb.memory, self.mesh)
        return self._placed

    def step_data(self):
        return self._memory_on_mesh()

    def train_step(self, params, opt_state, batch, key, memory=None):
        del key  # no dropout: the encoder is frozen and deterministic, g has none
        return self._step(params, opt_state, batch, memory)

    def score_fn(self, params):
        return scoring.bind(self._scorer, params, self._memory_on_mesh())

    def end_epoch(self, params, epoch: int) -> dict:
        """The scheduled refresh: the keys epoch N searches are those of g after epoch N-1 whenever N is a
        multiple of retriever_update_interval. Done at the end of epoch N-1, so that its validation and its
        checkpoint already have them."""
        if not self._refresh_due(epoch):
            return {}
        seconds = self.kb.refresh_keys(self.merge(params).retriever, chunk_size=self.hp.retrieval_chunk_size)
        return {"index_refresh_time_s": round(seconds, 3)}

    def _refresh_due(self, epoch: int) -> bool:
        """Whether end_epoch(epoch) refreshes; validation after that epoch then already has fresh keys."""
        return (epoch + 1) % self.cfg.retriever_update_interval == 0

    @contextlib.contextmanager
    def validation_scorer(self, params, epoch: int, record: dict):
        """Between scheduled refreshes the index holds keys of an older g, while the query uses the current
        one. A saved model directory always searches keys of its own g (as the final evaluation does), so
        validation does too: it refreshes for itself and hands the training keys back afterwards, which
        leaves training (and a resumed run) exactly as without validation."""
        if self._refresh_due(epoch):
            yield self.score_fn(params)
            return
        kept = self.kb.keys
        seconds = self.kb.refresh_keys(self.merge(params).retriever, chunk_size=self.hp.retrieval_chunk_size)
        record["valid_refresh_time_s"] = round(seconds, 3)
        try:
            yield self.score_fn(params)
        finally:
            self.kb.set_keys(kept)

    def before_final(self, params) -> dict:
        """Keys from the selected model's own g, as a model directory evaluated later would have them."""
        seconds = self.kb.refresh_keys(self.merge(params).retriever, chunk_size=self.hp.retrieval_chunk_size)
        return {"index_refresh_time_s": round(seconds, 3)}

    def before_test(self, params) -> None:
        if self.cfg.extend_memory_with_valid:
            model = self.merge(params)
            self.kb.extend(model.encoder, model.retriever, self.dataset.valid)

    def host_state(self):
        return self.kb.state()

    def restore_host_state(self, state) -> None:
        self.kb.restore_state(jax.device_get(state))

    def knowledge_base_arrays(self) -> dict:
        return self.kb.train_arrays()

    def baseline_score_fn(self):
        """The frozen DuoRec alone (alpha 0): what fine-tuning has to beat."""
        return scoring.encoder_score_fn(self.merge(self._init_params).encoder, mesh=self.mesh)

    def loop_dataset(self, dataset):
        """retriever_queries=valid: g is fitted on queries that are out of sample for the frozen backbone and
        the base (the validation samples of a fixed share of users), validated on the other validation users,
        and tested on every user; the base stays the training split. retriever_queries=held_out: g is fitted on
        the training samples the backbone was pretrained without (each user's last pretrain_holdout_last), out
        of sample for the backbone but in the base (the search never returns a query's own or later samples);
        validation and test are every user. Otherwise the dataset itself."""
        if self.cfg.retriever_queries == "train":
            return dataset
        if self.cfg.retriever_queries == "held_out":
            held = last_per_user(dataset.train.user, dataset.train.prefix_len, self.holdout_last)
            return dataclasses.replace(dataset, train=dataset.train.take(held))
        fit, held = valid_query_split(len(dataset.valid), self.cfg.retriever_valid_holdout)
        if not len(fit) or not len(held):
            raise ConfigError(
                f"config key 'retriever_valid_holdout': {self.cfg.retriever_valid_holdout} leaves "
                f"{len(fit)} validation users to fit g on and {len(held)} to validate on; both must be >= 1"
            )
        return dataclasses.replace(dataset, train=dataset.valid.take(fit), valid=dataset.valid.take(held))

    def warnings(self) -> list[str]:
        hp, out = self.hp, []
        n_base = len(self.dataset.train)
        # a query never sees its own user's samples: the largest user shrinks the base it searches the most
        own = int(np.bincount(np.asarray(self.dataset.train.user)).max()) if n_base else 0
        if n_base - own < hp.top_k:
            out.append(
                f"top_k={hp.top_k} but the knowledge base has {n_base} entries, {own} of them one user's "
                f"that this user's queries may not retrieve: some queries get fewer than top_k neighbours"
            )
        if hp.alpha == 0 and not hp.learnable_alpha:
            out.append("alpha=0: the retrieved knowledge is never mixed in, FTragrec scores equal the backbone's")
        scalars = hp.learnable_alpha or hp.learnable_temperature
        g_fixed = "retriever" not in self.trainable or hp.retriever_layers == 0
        if g_fixed and not scalars and not hp.value_rerank:
            out.append(
                "nothing trains (freeze_retriever or retriever_layers=0, no value_rerank, alpha and temperature "
                "fixed): every epoch "
                "scores the same model, the run evaluates FTragrec at its initialisation"
            )
        return out

    def model_meta(self) -> dict:
        ftr = dataclasses.asdict(self.hp)
        ftr["extend_memory_with_valid"] = self.cfg.extend_memory_with_valid
        ftr["freeze_retriever"] = self.cfg.freeze_retriever  # a record of how g was (not) trained
        # which validation users g saw: a later selection on validation (experiments.tune) must skip them
        ftr["retriever_queries"] = self.cfg.retriever_queries
        ftr["retriever_valid_holdout"] = self.cfg.retriever_valid_holdout
        return {
            "model": "ftragrec",
            "encoder": dataclasses.asdict(self.encoder_cfg),
            "ftragrec": ftr,
            "dataset": self.cfg.dataset_settings(),
            "source": {
                "pretrained": self.cfg.pretrained
                if self.cfg.pretrained.startswith(BUILTIN)
                else str(Path(self.cfg.pretrained).absolute()),
                "pretrain_holdout_last": self.holdout_last,  # the backbone's
            },
        }

    def export_params(self, params) -> dict:
        return nnx.to_pure_dict(jax.device_get(params))

    def import_params(self, pure: dict, like):
        model = self.merge(like)
        assign_params(model, pure)
        return nnx.split(model, nnx.Param, ...)[1]
