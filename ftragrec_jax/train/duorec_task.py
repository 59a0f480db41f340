"""DuoRec pretraining (and SASRec with lmd_sem = 0) as a trainer task."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from ftragrec_jax import parallel, scoring
from ftragrec_jax.config import Config
from ftragrec_jax.data.batches import last_per_user
from ftragrec_jax.errors import ConfigError
from ftragrec_jax.models.duorec import make_same_target_sampler
from ftragrec_jax.models.encoder import build_encoder
from ftragrec_jax.optim import adam
from ftragrec_jax.train.steps import make_duorec_step
from ftragrec_jax.train.task import Task
from ftragrec_jax.trees import assign_params


def pretraining_samples(train, holdout_last: int):
    """`train` without each user's last `holdout_last` samples (all of it for 0): the samples the backbone
    never sees as targets stay out of sample for it, so a retriever can be fitted on them."""
    if not holdout_last:
        return train
    held = last_per_user(train.user, train.prefix_len, holdout_last)
    if held.all():
        raise ConfigError(
            f"config key 'pretrain_holdout_last': {holdout_last} holds out all {len(train)} training samples "
            f"(every user has at most {holdout_last}); nothing is left to pretrain on"
        )
    return train.take(~held)


class DuoRecTask(Task):
    model = "duorec"
    batch_fields = ("item_seq", "item_seq_len", "target", "mask", "index")

    def __init__(self, cfg: Config, dataset):
        self.cfg = cfg
        self.dataset_settings = cfg.dataset_settings()
        self.encoder_cfg = cfg.encoder_config(dataset.n_items)
        self.tx = adam(cfg.learning_rate, cfg.weight_decay)
        encoder = build_encoder(self.encoder_cfg, seed=cfg.seed)
        self.graphdef, self._init_params, self.rest = nnx.split(encoder, nnx.Param, ...)
        self.train = pretraining_samples(dataset.train, cfg.pretrain_holdout_last)
        # the training sequences live on the device once; the step gathers same-target positives from them
        self._sampler = make_same_target_sampler(self.train, dataset.n_items) if cfg.lmd_sem > 0 else None
        self.mesh = parallel.make_mesh(cfg.mesh)  # the trainer's mesh: train and eval batches are sharded on it
        self._step = make_duorec_step(
            self.merge, self.tx, lmd_sem=cfg.lmd_sem, tau=cfg.tau, mesh=self.mesh, item_chunk_size=cfg.item_chunk_size
        )
        self._score = scoring.encoder_scores(self.graphdef, rest=self.rest, mesh=self.mesh)
        self._represent = scoring.encoder_represent(self.graphdef, rest=self.rest, mesh=self.mesh)

    def merge(self, params):
        return nnx.merge(self.graphdef, params, self.rest)

    def init(self):
        params = self._init_params
        return params, self.tx.init(params)

    def step_data(self):
        return self._sampler

    def train_step(self, params, opt_state, batch, key, sampler=None):
        return self._step(params, opt_state, batch, key, sampler)

    def score_fn(self, params):
        return scoring.LinearScoreFn(
            lambda item_seq, item_seq_len: self._score(params, item_seq, item_seq_len),
            lambda item_seq, item_seq_len: self._represent(params, item_seq, item_seq_len),
            self.merge(params).item_table(),
        )

    def loop_dataset(self, dataset):
        """pretrain_holdout_last=N: the training split without each user's last N samples (neither targets nor
        same-target positives); validation and test unchanged."""
        if self.train is dataset.train:
            return dataset
        return dataclasses.replace(dataset, train=self.train)

    def model_meta(self) -> dict:
        return {
            "model": "duorec",
            "encoder": dataclasses.asdict(self.encoder_cfg),
            "dataset": self.dataset_settings,
            "ftragrec": None,
            "source": {
                "objective": {"lmd_sem": self.cfg.lmd_sem, "tau": self.cfg.tau},
                # FTragrec with retriever_queries=held_out fits g on exactly these samples
                "pretrain_holdout_last": self.cfg.pretrain_holdout_last,
            },
        }

    def export_params(self, params) -> dict:
        return nnx.to_pure_dict(jax.device_get(params))

    def import_params(self, pure: dict, like):
        encoder = self.merge(like)
        assign_params(encoder, pure)
        _, params, _ = nnx.split(encoder, nnx.Param, ...)
        return params
