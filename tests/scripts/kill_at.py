"""Fault injector: run `python -m experiments.train ARGS`, but SIGKILL this process at one exact point.

    python tests/scripts/kill_at.py POINT -- ARGS...

POINT (epochs count from 0, checkpoints by completed epochs, as in RUN/checkpoints/N):
  step:E:B            epoch E, once batches 0..B have been dispatched to the device (mid-epoch)
  ckpt_partial:N      checkpoint N half written: Orbax's temporary folder exists, the loop record is not
                      written yet (arrays possibly in flight)
  ckpt_commit:N       checkpoint N fully written into its temporary folder, just before the commit rename
  refresh:E           FTragrec's scheduled index refresh for epoch E, done at the end of epoch E-1 (before
                      its validation and checkpoint E): keys recomputed, FAISS index being rebuilt
  model_save:E        RUN/latest_model of epoch E half written (parameters in its temporary sibling, no
                      model.json yet), after checkpoint E+1 was committed

The kill is a real SIGKILL of the process (no Python cleanup, no atexit, no flush), sent by the process
itself so that the point is deterministic. Only the hooks differ from the plain command; nothing in the
project knows about them. Exits with 3 if the run finished without reaching the point.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def die(where: str) -> None:
    sys.stderr.write(f"kill_at: SIGKILL at {where}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def hook_step(epoch: int, batch: int) -> None:
    import ftragrec_jax.data.batches as batches

    real = batches.iterate_batches

    def wrapped(samples, batch_size, *args, **kw):
        it = real(samples, batch_size, *args, **kw)
        if kw.get("seed") is None or kw.get("epoch") != epoch:  # evaluation batches and other epochs
            return it
        return _kill_after(it, batch)

    def _kill_after(it, b):
        for i, x in enumerate(it):
            if i == b + 1:
                die(f"epoch {epoch}, batch {b} dispatched")
            yield x
        die(f"epoch {epoch}, after its last batch")

    batches.iterate_batches = wrapped


def _is_step(path, n: int) -> bool:
    path = Path(str(path))
    return path.parent.name == "checkpoints" and path.name.split(".", 1)[0] == str(n)


def hook_ckpt_partial(n: int) -> None:
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch

    real = jch.JsonCheckpointHandler.async_save

    async def async_save(self, directory, *args, **kw):
        if _is_step(Path(str(directory)).parent, n):  # directory = <tmp step dir>/loop
            die(f"checkpoint {n} half written ({Path(str(directory)).parent.name})")
        return await real(self, directory, *args, **kw)

    jch.JsonCheckpointHandler.async_save = async_save


def hook_ckpt_commit(n: int) -> None:
    from orbax.checkpoint._src.path import atomicity

    real = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kw):
        if _is_step(self._final_path, n):
            tmp = Path(str(self.get()))
            assert tmp.is_dir() and any(tmp.iterdir()), tmp
            die(f"checkpoint {n} written to {tmp.name}, not committed")
        return await real(self, *args, **kw)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def hook_refresh(epoch: int) -> None:
    from ftragrec_jax.models.search import FaissSearcher
    from ftragrec_jax.train.ftragrec_task import FTragrecTask

    state = {"epoch": None}
    real_end, real_build = FTragrecTask.end_epoch, FaissSearcher.build

    def end_epoch(self, params, e):
        state["epoch"] = e + 1  # the epoch whose keys these are
        try:
            return real_end(self, params, e)
        finally:
            state["epoch"] = None

    def build(self, keys, user, prefix_len):
        if state["epoch"] == epoch:
            die(f"index rebuild of epoch {epoch} ({len(keys)} fresh keys)")
        return real_build(self, keys, user, prefix_len)

    FTragrecTask.end_epoch, FaissSearcher.build = end_epoch, build


def hook_model_save(epoch: int) -> None:
    import ftragrec_jax.model_dir as model_dir

    state = {"armed": False}
    real_save, real_params = model_dir.save_model, model_dir._save_params

    def save_model(path, params, meta, *args, **kw):
        state["armed"] = Path(path).name == "latest_model" and (meta.get("source") or {}).get("epoch") == epoch
        return real_save(path, params, meta, *args, **kw)

    def _save_params(path, tree):
        real_params(path, tree)
        if state["armed"]:
            die(f"latest_model of epoch {epoch} half written ({Path(path).parent.name})")

    model_dir.save_model, model_dir._save_params = save_model, _save_params


HOOKS = {
    "step": hook_step,
    "ckpt_partial": hook_ckpt_partial,
    "ckpt_commit": hook_ckpt_commit,
    "refresh": hook_refresh,
    "model_save": hook_model_save,
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "--":
        sys.stderr.write(__doc__)
        return 2
    kind, *nums = argv[0].split(":")
    HOOKS[kind](*map(int, nums))
    from experiments.train import main as train_main

    train_main(argv[2:])
    sys.stderr.write(f"kill_at: the run finished without reaching {argv[0]}\n")
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
