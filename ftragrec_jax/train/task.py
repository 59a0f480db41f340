"""What the trainer needs from a model: the contract shared by DuoRec pretraining and FTragrec fine-tuning.

The trainer owns the loop (data order, dropout keys, evaluation, early stopping, checkpoints); a task owns
the model: its parameters and optimizer, one pure train step, how to score items for evaluation, and any
host-side state that must survive a restart (FTragrec's knowledge-base keys).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ftragrec_jax.scoring import ScoreFn


class Task:
    """Base class; subclasses fill in every method that raises here."""

    #: "duorec" or "ftragrec": written to model.json and the run's logs
    model: str = ""
    #: batch fields the train step reads; only these are copied to the device each step
    batch_fields: tuple[str, ...] = ("item_seq", "item_seq_len", "target", "mask")

    def init(self) -> tuple[Any, Any]:
        """(params, opt_state) as pytrees of device arrays, deterministic given the config seed."""
        raise NotImplementedError

    def step_data(self) -> Any:
        """Device arrays the step reads but never changes (DuoRec: the training sequences for same-target
        sampling; FTragrec: the knowledge base). Passed to every step as an argument, not closed over, so
        they are not baked into the compiled program as constants."""
        return None

    def train_step(self, params, opt_state, batch: dict, key, data=None) -> tuple[Any, Any, dict]:
        """Pure: (params, opt_state, batch, dropout key, step_data()) -> (params, opt_state, scalar metrics).

        The trainer jits it once with params and opt_state donated. Metrics must include "loss"; every other
        entry (loss terms, gradient norm) is averaged per epoch and checked for NaN/Inf.
        """
        raise NotImplementedError

    def score_fn(self, params) -> ScoreFn:
        """Full-sort scoring with these parameters, dropout off."""
        raise NotImplementedError

    def model_meta(self) -> dict:
        """model.json content except "format": at least "model", "encoder" and "dataset"."""
        raise NotImplementedError

    def export_params(self, params) -> dict:
        """The pure-dict parameter tree saved in a model directory."""
        raise NotImplementedError

    def import_params(self, pure: dict, like):
        """Inverse of export_params, shaped like `like` (used to reload the best model after training)."""
        raise NotImplementedError

    # --- optional hooks ----------------------------------------------------------------------
    def end_epoch(self, params, epoch: int) -> dict:
        """Called after every epoch's steps, before its validation and checkpoint, outside jit (FTragrec: the
        scheduled index refresh, so that the checkpoint holds the keys the next epoch searches). Returns values
        to log."""
        return {}

    @contextlib.contextmanager
    def validation_scorer(self, params, epoch: int, record: dict) -> Iterator[ScoreFn]:
        """The score function for the validation after `epoch`, as a context: on exit the task is back in the
        state training continues from (FTragrec: keys from the current g for validation only, so the epoch is
        judged as its saved model directory would score, then the training keys back). May add values to log
        to `record`."""
        yield self.score_fn(params)

    def before_final(self, params) -> dict:
        """Called once with the selected (best) parameters before the final valid/test evaluation
        (FTragrec: keys from that model's own g). Returns values to log."""
        return {}

    def before_test(self, params) -> None:
        """Called once before the test split is evaluated (FTragrec: extend the memory with valid)."""

    def host_state(self) -> dict | None:
        """Arrays that must be checkpointed beside params so a resumed run is identical (or None)."""
        return None

    def restore_host_state(self, state: dict) -> None:
        """Inverse of host_state, called when resuming."""

    def knowledge_base_arrays(self) -> dict | None:
        """Arrays saved with every model directory as knowledge_base.npz (FTragrec: its base, so the saved
        model recommends without the training data), or None."""
        return None

    def baseline_score_fn(self) -> ScoreFn | None:
        """A reference model to score on valid before the first epoch (FTragrec: its frozen backbone), or None."""
        return None

    def warnings(self) -> list[str]:
        """Suspicious-but-legal settings to log once at start."""
        return []

    def loop_dataset(self, dataset):
        """The dataset the loop trains, validates and tests on: `dataset` (the task's), unless the task is
        fitted on other queries (FTragrec with retriever_queries=valid)."""
        return dataset
