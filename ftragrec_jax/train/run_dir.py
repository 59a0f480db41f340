"""The run folder: everything one training run writes, and the rules for resuming into it.

RUN/config.yaml      resolved config (all keys), written before any compute
RUN/train.log        the console log
RUN/metrics.jsonl    one JSON object per epoch: loss terms, valid metrics, times
RUN/checkpoints/N/   Orbax training state after N completed epochs (see state.py)
RUN/best_model/      model directory of the best valid epoch (checkpoint.save_model format)
RUN/latest_model/    model directory of the last completed epoch
RUN/results.json     valid and test metrics of the best model, with the protocol
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import yaml

from ftragrec_jax.atomic import write_json_atomic, write_text_atomic
from ftragrec_jax.config import Config
from ftragrec_jax.errors import ConfigError

# Keys a resumed run may change: they extend or display the run without changing what was computed so far.
RESUMABLE_CHANGES = (
    "epochs",
    "stopping_step",
    "show_progress",
    "eval_batch_size",
    "output_dir",
    "mesh",
    "faiss_shards",
)  # placement only: IndexShards return the unsharded index's ids

# Keys that cannot change what a DuoRec run computes; a rerun may differ in them (a key not listed here counts).
FTRAGREC_ONLY = (
    "pretrained",
    "pretrain_epochs",
    "retrieval_backend",
    "faiss_index",
    "nprobe",
    "faiss_overfetch",
    "faiss_rerank",
    "knowledge_base_dtype",
    "top_k",
    "retriever_layers",
    "retriever_inner_size",
    "freeze_retriever",
    "retriever_temperature",
    "quality_threshold",
    "alpha",
    "enhanced_rec_weight",
    "kl_small_weight",
    "retriever_objective",
    "retriever_pool",
    "retriever_loss_weight",
    "usefulness_temperature",
    "value_rerank",
    "retriever_update_interval",
    "extend_memory_with_valid",
    "cache_seq_output",
    "retrieval_chunk_size",
)

LOGGER_NAME = "ftragrec_jax.train"


def default_run_name(cfg: Config) -> str:
    data = Path(cfg.data).name if cfg.data else "Beauty"
    for ext in (".gz", ".txt", ".inter"):
        data = data[: -len(ext)] if data.endswith(ext) else data
    return f"{cfg.model}-{data}-seed{cfg.seed}"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_yaml = self.path / "config.yaml"
        self.metrics_jsonl = self.path / "metrics.jsonl"
        self.results_json = self.path / "results.json"
        self.log_file = self.path / "train.log"
        self.checkpoints = self.path / "checkpoints"
        self.best_model = self.path / "best_model"
        self.latest_model = self.path / "latest_model"

    @classmethod
    def for_config(cls, cfg: Config) -> "RunDir":
        return cls(cfg.output_dir or Path("runs") / default_run_name(cfg))

    # --- config -----------------------------------------------------------------------------
    def check_or_write_config(self, cfg: Config) -> bool:
        """Write config.yaml for a new run; for an existing one, refuse a config that would change its results.

        Returns True when the folder already holds computed epochs of this config (a resume).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        current = cfg.to_dict()
        if self.config_yaml.exists():
            try:
                stored = yaml.safe_load(self.config_yaml.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{self.config_yaml}: unreadable ({str(e).splitlines()[0]})") from None
            ignored = RESUMABLE_CHANGES + (FTRAGREC_ONLY if cfg.model == "duorec" else ())
            # a key added to Config after the run started reads as its default (older config.yaml lacks it)
            stored = {**Config().to_dict(), **stored}
            changed = sorted(k for k in current if k not in ignored and _norm(stored.get(k)) != _norm(current[k]))
            if changed and not self.has_checkpoint():
                changed = []  # nothing was computed under the old config (it failed its checks): start afresh
                self.rewrite_metrics([])
            if changed:
                detail = ", ".join(f"{k}: {stored.get(k)!r} -> {current[k]!r}" for k in changed[:5])
                raise ConfigError(
                    f"{self.config_yaml}: this folder holds a run with a different config ({detail}); "
                    f"choose another output_dir, or delete the folder to start over"
                )
        write_text_atomic(self.config_yaml, yaml.safe_dump(current, sort_keys=False))
        return self.has_checkpoint()

    def has_checkpoint(self) -> bool:
        """True once a complete training-state checkpoint exists (Orbax names complete steps by number)."""
        return self.checkpoints.is_dir() and any(p.name.isdigit() for p in self.checkpoints.iterdir())

    # --- metrics ----------------------------------------------------------------------------
    def rewrite_metrics(self, history: list[dict]) -> None:
        """After a restart: exactly the epochs of the restored checkpoint, nothing a killed run added later."""
        write_text_atomic(self.metrics_jsonl, "".join(json.dumps(h) + "\n" for h in history))

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_results(self, results: dict) -> None:
        write_json_atomic(self.results_json, results)
        os.chmod(self.results_json, 0o644)

    # --- log --------------------------------------------------------------------------------
    def open_log(self, console: bool = True) -> logging.Logger:
        """The run's logger: RUN/train.log (appended across restarts) and, optionally, stdout."""
        logger = logging.getLogger(LOGGER_NAME)
        close_log(logger)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        self.path.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(self.log_file, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(fh)
        if console:
            sh = logging.StreamHandler(sys.stdout)
            sh.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(sh)
        return logger


def close_log(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


def _norm(value):
    """Compare YAML-loaded and in-memory values alike (tuples vs lists, 1 vs 1.0)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
