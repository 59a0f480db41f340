"""SIGKILL at exact points of a run (tests/scripts/kill_at.py), restart with the same command, and compare with
an uninterrupted run: final parameters, metrics.jsonl and results.json must be identical.

Each test chains several kills on one run folder, each at a different point, the way a flaky machine would:
mid-epoch, a checkpoint half written, a checkpoint written but not committed, latest_model half written, an
index rebuild, a kill before the first checkpoint. After every kill the folder holds only complete checkpoints
(the half-written one is a temporary folder that the next start ignores and removes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_train import FT, assert_same_run, cli_args, metrics_lines, train, write_lines_dataset

KILL_AT = ROOT / "tests" / "scripts" / "kill_at.py"


def orbax_hooks_available() -> bool:
    try:
        from orbax.checkpoint._src.handlers.json_checkpoint_handler import JsonCheckpointHandler
        from orbax.checkpoint._src.path.atomicity import AtomicRenameTemporaryPath
    except ImportError:
        return False
    return hasattr(JsonCheckpointHandler, "async_save") and hasattr(AtomicRenameTemporaryPath, "finalize")


needs_orbax_hooks = pytest.mark.skipif(
    not orbax_hooks_available(), reason="this Orbax version moved the internals kill_at.py hooks into"
)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_lines_dataset(tmp_path_factory.mktemp("data") / "tiny.txt")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    # every process of a module shares one compilation cache: restarts skip most of the compile
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


@pytest.fixture(scope="module")
def duorec_ref(data_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("duorec_ref") / "run"
    assert train(data_file, out, "--epochs=3") == 0
    return out


@pytest.fixture(scope="module")
def ftragrec_ref(duorec_ref, data_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft_ref") / "run"
    assert train(data_file, out, "--epochs=3", *FT, f"--pretrained={duorec_ref / 'best_model'}") == 0
    return out


def killed(point: str, args: list[str], env: dict) -> str:
    """Run the training command under kill_at.py; it must die by SIGKILL at `point`. Returns its stderr."""
    done = subprocess.run(
        [sys.executable, str(KILL_AT), point, "--", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, f"{point}: exit {done.returncode}\n{done.stderr[-3000:]}"
    assert "kill_at: SIGKILL at" in done.stderr
    return done.stderr


def checkpoints(run: Path) -> tuple[list[str], list[str]]:
    """(committed checkpoint names, Orbax temporary folders) under RUN/checkpoints."""
    names = sorted(p.name for p in (run / "checkpoints").iterdir()) if (run / "checkpoints").exists() else []
    return [n for n in names if n.isdigit()], [n for n in names if "tmp" in n]


def rerun(args: list[str], env: dict) -> str:
    """The plain command, as a user would re-run it."""
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@needs_orbax_hooks
def test_duorec_killed_mid_model_save_mid_epoch_mid_write_and_before_commit(duorec_ref, data_file, env, tmp_path):
    out = tmp_path / "run"
    args = [*cli_args(data_file, out), "--epochs=3"]

    killed("model_save:0", args, env)  # checkpoint 1 committed, latest_model of epoch 0 half written
    assert checkpoints(out) == (["1"], [])
    assert not (out / "latest_model").exists() and list(out.glob(".latest_model.tmp-*"))

    killed("step:1:1", args, env)  # epoch 1, two batches dispatched
    assert checkpoints(out) == (["1"], [])
    assert len(metrics_lines(out)) == 1
    # the restart first rewrote the latest_model that the previous kill left unwritten
    assert json.loads((out / "latest_model" / "model.json").read_text())["source"]["epoch"] == 0
    assert not list(out.glob(".latest_model.tmp-*"))

    killed("ckpt_partial:2", args, env)  # resumes from 1, dies while writing checkpoint 2
    committed, temporary = checkpoints(out)
    assert committed == ["1"] and len(temporary) == 1 and temporary[0].startswith("2.")
    assert len(metrics_lines(out)) == 1  # the epoch of the unfinished checkpoint is not recorded

    killed("ckpt_commit:3", args, env)  # ignores and removes the half checkpoint, redoes epoch 1, dies at 3
    committed, temporary = checkpoints(out)
    assert committed == ["1", "2"] and len(temporary) == 1 and temporary[0].startswith("3.")
    assert not (out / "results.json").exists()

    rerun(args, env)
    assert checkpoints(out)[1] == []
    assert_same_run(duorec_ref, out)
    assert (out / "train.log").read_text().count("resuming from") == 4


@needs_orbax_hooks
def test_ftragrec_killed_before_first_checkpoint_mid_rebuild_and_mid_write(
    ftragrec_ref, duorec_ref, data_file, env, tmp_path
):
    out = tmp_path / "run"
    args = [*cli_args(data_file, out), "--epochs=3", *FT, f"--pretrained={duorec_ref / 'best_model'}"]

    killed("step:0:2", args, env)  # nothing committed yet: the restart starts from scratch
    assert checkpoints(out)[0] == []

    err = killed("refresh:2", args, env)  # end of epoch 1: keys for epoch 2 recomputed, index half rebuilt
    assert "index rebuild of epoch 2" in err
    assert checkpoints(out) == (["1"], [])  # checkpoint 2 comes after the refresh, so that it holds the keys

    killed("ckpt_partial:3", args, env)  # redoes epoch 1 and its refresh, commits 2, dies writing 3
    committed, temporary = checkpoints(out)
    assert committed == ["1", "2"] and len(temporary) == 1

    rerun(args, env)
    assert_same_run(ftragrec_ref, out)
