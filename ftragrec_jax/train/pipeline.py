"""What `python -m experiments.train` runs: one training stage, or the two-stage FTragrec pipeline.

model=ftragrec with `pretrained` empty pretrains its own backbone first:
    RUN/duorec/     DuoRec pretraining (pretrain_epochs epochs), a complete run folder
    RUN/ftragrec/   FTragrec fine-tuning on RUN/duorec/best_model, a complete run folder
    RUN/results.json  both test results side by side, with the relative change
Each stage resumes on its own, so re-running the command after a kill continues where it stopped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from ftragrec_jax import parallel
from ftragrec_jax.atomic import write_json_atomic, write_text_atomic
from ftragrec_jax.config import Config
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.errors import ConfigError, FtragrecError
from ftragrec_jax.evaluation import relative_change
from ftragrec_jax.train.duorec_task import DuoRecTask
from ftragrec_jax.train.ftragrec_task import FTragrecTask
from ftragrec_jax.train.loop import Trainer
from ftragrec_jax.train.run_dir import RunDir, close_log
from ftragrec_jax.train.task import Task


def make_task(cfg: Config, dataset) -> Task:
    """The task for cfg.model; every dataset-dependent check runs here, before any training step."""
    dataset.require_samples("train", "valid", "test")  # all three are used; an empty one would fail late
    if cfg.model == "duorec":
        return DuoRecTask(cfg, dataset)
    if cfg.model == "ftragrec":
        return FTragrecTask(cfg, dataset)
    raise ConfigError(f"config key 'model': unknown model {cfg.model!r}")


def train_stage(cfg: Config, dataset=None) -> dict:
    """Train one model into its run folder (resuming if it holds a run of this config); returns results."""
    check_devices(cfg)
    run_dir = RunDir.for_config(cfg)
    resumed = run_dir.check_or_write_config(cfg)  # refuses a conflicting folder before any compute
    log = run_dir.open_log()
    try:
        log.info("%s %s run in %s", "resuming" if resumed else "new", cfg.model, run_dir.path)
        if dataset is None:
            dataset = dataset_from_config(cfg)
        log.info(
            "dataset %s: %d users, %d items (padding included), %d interactions; samples train %d, valid %d, test %d",
            dataset.name,
            dataset.n_users,
            dataset.n_items,
            dataset.n_interactions,
            len(dataset.train),
            len(dataset.valid),
            len(dataset.test),
        )
        task = make_task(cfg, dataset)
        loop_dataset = task.loop_dataset(dataset)
        if loop_dataset is not dataset:
            why = (
                f"pretrain_holdout_last={cfg.pretrain_holdout_last}"
                if cfg.model == "duorec"
                else f"retriever_queries={cfg.retriever_queries}"
            )
            log.info(
                "%s: the loop trains on %d samples, validates on %d, tests on %d (the dataset's %d / %d / %d)",
                why,
                len(loop_dataset.train),
                len(loop_dataset.valid),
                len(loop_dataset.test),
                len(dataset.train),
                len(dataset.valid),
                len(dataset.test),
            )
        return Trainer(cfg, task, loop_dataset, run_dir, log).fit()
    except FtragrecError as e:
        if not getattr(e, "logged", False):
            log.error("error: %s", e)
        raise
    finally:
        close_log(log)


def check_devices(cfg: Config) -> None:
    """`mesh` and the batch size must fit the devices; checked before data is loaded or encoded."""
    mesh = parallel.make_mesh(cfg.mesh)
    parallel.check_batch_divides(cfg.train_batch_size, mesh)
    parallel.check_batch_divides(cfg.eval_batch_size, mesh, "eval_batch_size")  # evaluation is sharded too


def needs_backbone(cfg: Config) -> bool:
    return cfg.model == "ftragrec" and not cfg.pretrained


def train_pipeline(cfg: Config) -> dict:
    """DuoRec pretraining then FTragrec fine-tuning on its best model; returns the combined results."""
    check_devices(cfg)
    root = RunDir.for_config(cfg).path
    dataset = dataset_from_config(cfg)
    backbone_cfg = dataclasses.replace(cfg, model="duorec", epochs=cfg.pretrain_epochs, output_dir=str(root / "duorec"))
    backbone = train_stage(backbone_cfg, dataset)
    ft_cfg = dataclasses.replace(cfg, pretrained=str(root / "duorec" / "best_model"), output_dir=str(root / "ftragrec"))
    tuned = train_stage(ft_cfg, dataset)
    combined = {
        "backbone": {"valid": backbone["valid"], "test": backbone["test"], "run": str(root / "duorec")},
        "ftragrec": {"valid": tuned["valid"], "test": tuned["test"], "run": str(root / "ftragrec")},
        "relative_change_test": relative_change(backbone["test"], tuned["test"]),
        "protocol": tuned["protocol"],
    }
    # written last: each stage folder guards its own config (a conflicting rerun is refused there)
    write_text_atomic(root / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json_atomic(root / "results.json", combined)
    return combined


def run_path(cfg: Config) -> Path:
    return RunDir.for_config(cfg).path
