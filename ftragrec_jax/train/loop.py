"""The one training loop, shared by DuoRec pretraining and FTragrec fine-tuning.

Per step the host only slices the next batch and copies it to the device; the jitted step is dispatched
asynchronously, so that copy overlaps the previous step. Step metrics stay on the device and are fetched
once per epoch, where NaN/Inf is checked. Everything random is a pure function of the seed: the epoch's data
order of (seed, epoch), dropout and sampling keys of (seed, global step). So a run resumed from the
checkpoint of epoch N computes exactly what the uninterrupted run computed.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ftragrec_jax import parallel, plots
from ftragrec_jax.config import Config
from ftragrec_jax.data.batches import iterate_batches, num_batches
from ftragrec_jax.errors import CheckpointError, FtragrecError
from ftragrec_jax.evaluation import evaluate_split, format_metrics, protocol_info, relative_change
from ftragrec_jax.model_dir import load_model, read_meta, save_model
from ftragrec_jax.train import epoch_log
from ftragrec_jax.train.checkpoints import TrainCheckpoints, arrays_like
from ftragrec_jax.train.run_dir import RunDir
from ftragrec_jax.train.task import Task

# Steps allowed in flight before the host waits: keeps the progress bar honest and memory bounded,
# while the device always has the next step queued.
MAX_IN_FLIGHT = 2


class NonFiniteError(FtragrecError):
    """A loss term or the gradient norm became NaN/Inf; training stopped before saving anything from it."""


def _progress(total: int, desc: str, enabled: bool):

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr)


class Trainer:
    def __init__(self, cfg: Config, task: Task, dataset, run: RunDir, logger):
        self.cfg, self.task, self.dataset, self.run, self.log = cfg, task, dataset, run, logger
        self.mesh = parallel.make_mesh(cfg.mesh)
        parallel.check_batch_divides(cfg.train_batch_size, self.mesh)
        parallel.check_batch_divides(cfg.eval_batch_size, self.mesh, "eval_batch_size")  # evaluation is sharded too
        self.base_key = jax.random.key(cfg.seed, impl="unsafe_rbg")
        self._step = jax.jit(self._keyed_step, donate_argnums=(0, 1))
        self._compiled = None
        self.main = parallel.is_main_process()
        self._fallback_warned = False

    def _keyed_step(self, params, opt_state, batch, step, base_key, data):
        return self.task.train_step(params, opt_state, batch, jax.random.fold_in(base_key, step), data)

    # --- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, run, log = self.cfg, self.run, self.log
        params, opt_state = self.task.init()
        params, opt_state = parallel.replicate((params, opt_state), self.mesh)
        ckpts = TrainCheckpoints(run.checkpoints)
        try:
            params, opt_state, loop = self._restore(ckpts, params, opt_state)
            for warning in epoch_log.setting_warnings(cfg) + self.task.warnings():
                log.warning("warning: %s", warning)
            start = loop["epochs_done"]
            if loop["stopped"]:
                log.info("run already finished (%s); evaluating the best model", loop["stopped"])
            elif start == 0 and cfg.epochs > 0:
                self._log_baseline()
            for epoch in range(start, cfg.epochs):
                if loop["stopped"]:
                    break
                params, opt_state = self._epoch(epoch, params, opt_state, loop, ckpts)
            if not loop["stopped"] and loop["epochs_done"] >= cfg.epochs:
                loop["stopped"] = f"reached epochs={cfg.epochs}"
        finally:
            ckpts.close()
        return self._final(params, loop)

    def _log_baseline(self) -> None:
        """FTragrec: the frozen backbone's valid score, so the epochs below can be read against it."""
        score_fn = self.task.baseline_score_fn()
        if score_fn is None:
            return
        t0 = time.perf_counter()
        valid = evaluate_split(score_fn, self.dataset, "valid", self.cfg, mesh=self.mesh)
        self.log.info(epoch_log.baseline_line(valid, self.cfg.valid_metric, time.perf_counter() - t0))

    def _backbone_results(self, test: dict) -> dict:
        """FTragrec: the frozen backbone on the same valid and test users, and the relative change on test, so
        results.json (and the table `experiments.train` prints) says what fine-tuning added. Scored after the
        model's own test (its extended base, if any, changes nothing for the backbone alone)."""
        score_fn = self.task.baseline_score_fn()
        if score_fn is None:
            return {}
        backbone = {
            split: evaluate_split(score_fn, self.dataset, split, self.cfg, mesh=self.mesh)
            for split in ("valid", "test")
        }
        return {"backbone": backbone, "relative_change_test": relative_change(backbone["test"], test)}

    def _restore(self, ckpts: TrainCheckpoints, params, opt_state):
        loop = {
            "epochs_done": 0,
            "step": 0,
            "best_score": None,
            "best_epoch": None,
            "patience": 0,
            "history": [],
            "stopped": None,
            "train_time_s": 0.0,
        }
        latest = ckpts.latest()
        if latest is None:
            if self.main and self.run.metrics_jsonl.exists():  # a run killed before its first checkpoint
                self.run.rewrite_metrics([])
            return params, opt_state, loop
        like = arrays_like(params, opt_state, self.task.host_state())
        arrays, stored = ckpts.restore(latest, like)
        loop.update(stored)
        # a longer `epochs` on a run that stopped by reaching the old limit continues it
        if loop["stopped"] and loop["stopped"].startswith("reached epochs") and self.cfg.epochs > latest:
            loop["stopped"] = None
        if "host" in arrays:
            self.task.restore_host_state(arrays["host"])
        if self.main:
            self.run.rewrite_metrics(loop["history"])
        self._ensure_latest_model(arrays["params"], latest - 1, loop)
        self.log.info(
            "resuming from %s: %d epochs done, global step %d, best %s=%s (epoch %s)",
            ckpts.directory / str(latest),
            latest,
            loop["step"],
            self.cfg.valid_metric,
            loop["best_score"],
            loop["best_epoch"],
        )
        return arrays["params"], arrays["opt_state"], loop

    def _ensure_latest_model(self, params, epoch: int, loop: dict) -> None:
        """A kill between the checkpoint and the latest_model write leaves latest_model one epoch behind."""

        try:
            current = (read_meta(self.run.latest_model).get("source") or {}).get("epoch") == epoch
        except CheckpointError:
            current = False
        if not current:
            valid = loop["history"][-1].get("valid") if loop["history"] else None
            self._save_model(self.run.latest_model, params, epoch, valid)

    def _epoch(self, epoch: int, params, opt_state, loop: dict, ckpts: TrainCheckpoints):
        cfg, log, task = self.cfg, self.log, self.task

        train = self.dataset.train
        n_batches = num_batches(len(train), cfg.train_batch_size, False)
        step0 = loop["step"]
        local = parallel.process_slice(cfg.train_batch_size) if jax.process_count() > 1 else slice(None)
        t0 = time.perf_counter()
        step_metrics, in_flight, compile_time = [], deque(), 0.0
        data = task.step_data()
        data = parallel.place_step_data(data, self.mesh)  # FTragrec's base: keys sharded on >1 device
        with _progress(n_batches, f"Train {epoch:>3}", cfg.show_progress) as bar:
            for i, batch in enumerate(iterate_batches(train, cfg.train_batch_size, seed=cfg.seed, epoch=epoch)):
                fed = parallel.put_batch(
                    {k: parallel.int32_host(batch[k][local]) for k in task.batch_fields}, self.mesh
                )
                args = (params, opt_state, fed, np.uint32(step0 + i), self.base_key, data)
                if self._compiled is None:  # compile once, ahead of time, so epoch times exclude it
                    tc = time.perf_counter()
                    self._compiled = self._step.lower(*args).compile()
                    compile_time = time.perf_counter() - tc
                    log.info("compiled the train step in %.1fs", compile_time)
                params, opt_state, metrics = self._compiled(*args)
                step_metrics.append(metrics)
                in_flight.append(metrics["loss"])
                if len(in_flight) > MAX_IN_FLIGHT:
                    in_flight.popleft().block_until_ready()
                bar.update(1)
        fetched = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *step_metrics)) if step_metrics else {}
        train_time = time.perf_counter() - t0 - compile_time
        self._check_finite(fetched, epoch, step0, loop)
        loop["step"] = step0 + len(step_metrics)
        record: dict[str, Any] = {"epoch": epoch, "step": loop["step"], "train_time_s": round(train_time, 3)}
        if compile_time:
            record["compile_time_s"] = round(compile_time, 3)
        names = sorted(fetched, key=lambda k: (k != "loss", k == "grad_norm", k))  # loss first, grad_norm last
        record.update({k: float(np.mean(fetched[k])) for k in names})
        record.update(task.end_epoch(params, epoch) or {})
        if (epoch + 1) % cfg.eval_step == 0:
            self._validate(epoch, params, loop, record)
        log.info(
            epoch_log.epoch_line(
                record,
                epochs=cfg.epochs,
                valid_metric=cfg.valid_metric,
                patience=loop["patience"],
                stopping_step=cfg.stopping_step,
            )
        )
        warning = epoch_log.fallback_warning(record, cfg.quality_threshold)
        if warning and not self._fallback_warned:  # once per run, at the first epoch it happens
            self._fallback_warned = True
            log.warning("warning: %s", warning)
        loop["epochs_done"] = epoch + 1
        loop["train_time_s"] = loop.get("train_time_s", 0.0) + train_time
        loop["history"].append(record)
        ckpts.save(epoch + 1, arrays_like(params, opt_state, task.host_state()), loop)
        self._save_model(self.run.latest_model, params, epoch, record.get("valid"))
        if self.main:
            self.run.append_metrics(record)
        if loop["stopped"]:
            log.info("stopped (%s); best %s in epoch %s", loop["stopped"], cfg.valid_metric, loop["best_epoch"])
        return params, opt_state

    def _validate(self, epoch: int, params, loop: dict, record: dict) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        with self.task.validation_scorer(params, epoch, record) as score_fn:
            valid = evaluate_split(score_fn, self.dataset, "valid", cfg, mesh=self.mesh)
        eval_time = time.perf_counter() - t0
        score = valid[cfg.valid_metric]
        record["valid"] = valid
        record["valid_time_s"] = round(eval_time, 3)
        # RecBole's early_stopping: strictly better resets patience; stop after stopping_step+1 misses
        if loop["best_score"] is None or score > loop["best_score"]:
            loop.update(best_score=score, best_epoch=epoch, patience=0)
            record["best"] = True
            self._save_model(self.run.best_model, params, epoch, valid)
        else:
            loop["patience"] += 1
            if loop["patience"] > cfg.stopping_step:
                loop["stopped"] = f"early stopping: no better {cfg.valid_metric} for {loop['patience']} evaluations"

    def _check_finite(self, fetched: dict, epoch: int, step0: int, loop: dict) -> None:
        first = None
        for name, values in fetched.items():
            bad = np.flatnonzero(~np.isfinite(np.asarray(values)))
            if bad.size and (first is None or bad[0] < first[1]):
                first = (name, int(bad[0]), float(np.asarray(values)[bad[0]]))
        if first is None:
            return
        name, i, value = first
        what = "the gradient norm" if name == "grad_norm" else f"loss term {name!r}"
        done = loop["epochs_done"]
        kept = (
            f"the last good checkpoint ({self.run.checkpoints / str(done)}, after epoch {done - 1}) is intact"
            if done
            else "no checkpoint was written (it failed in the first epoch)"
        )
        msg = (
            f"non-finite training value: {what} is {value} at epoch {epoch}, step {step0 + i} "
            f"(batch {i} of the epoch); training stopped and {kept}; lower learning_rate or check the data"
        )
        self.log.error("error: %s", msg)
        err = NonFiniteError(msg)
        err.logged = True
        raise err

    def _save_model(self, path, params, epoch: int, valid: dict | None) -> None:

        if not self.main:  # multi-host: one writer; Orbax training state is saved by every process together
            return
        meta = self.task.model_meta()
        source = dict(meta.get("source") or {})
        source.update(
            {
                "trainer": "ftragrec-jax",
                "run": str(self.run.path),
                "epoch": epoch,
                "seed": self.cfg.seed,
                "valid": valid,
            }
        )
        meta["source"] = source
        save_model(
            path,
            self.task.export_params(params),
            meta,
            vocab=self.dataset.vocab,
            knowledge_base=self.task.knowledge_base_arrays(),
        )

    # --- the end ------------------------------------------------------------------------------
    def _final(self, params, loop: dict) -> dict:

        cfg, log = self.cfg, self.log
        if self.run.best_model.exists():
            _, pure, _ = load_model(self.run.best_model)
            params = parallel.replicate(self.task.import_params(pure, params), self.mesh)  # evaluated sharded
            which = f"best valid epoch {loop['best_epoch']}"
        else:
            which = "last epoch (validation never ran: eval_step > epochs)"
        t0 = time.perf_counter()
        for key, value in (self.task.before_final(params) or {}).items():
            if key == "index_refresh_time_s":
                log.info("index refreshed with the selected model's retriever in %.1fs", value)
            else:
                log.info("before the final evaluation: %s = %s", key, value)
        valid = evaluate_split(self.task.score_fn(params), self.dataset, "valid", cfg, mesh=self.mesh)
        self.task.before_test(params)
        test = evaluate_split(self.task.score_fn(params), self.dataset, "test", cfg, mesh=self.mesh)
        results = {
            "valid": valid,
            "test": test,
            **self._backbone_results(test),
            "model": self.task.model,
            "checkpoint": str(self.run.best_model),
            "selected": which,
            "best_epoch": loop["best_epoch"],
            "epochs_run": loop["epochs_done"],
            "steps": loop["step"],
            "stopped": loop["stopped"],
            "train_time_s": round(loop["train_time_s"], 2),
            "eval_time_s": round(time.perf_counter() - t0, 2),
            "seed": cfg.seed,
            "protocol": protocol_info(self.dataset, cfg),
        }
        if self.main:
            self.run.write_results(results)
            plots.write_run_plots(self.run.path, log)
        # the headline numbers; every metric at every K is in the results file
        log.info("valid (%s): %s", which, format_metrics(epoch_log.headline(valid, cfg.valid_metric)))
        log.info("test: %s", format_metrics(epoch_log.headline(test, cfg.valid_metric)))
        log.info("results: %s", self.run.results_json)
        return results
