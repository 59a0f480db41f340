import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftragrec_jax import parallel
from ftragrec_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_sharded_step_matches_single_device():
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests/scripts/sharded_ce_step.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 4
    assert max(abs(a - b) for a, b in zip(res["loss_1"], res["loss_4"])) < 1e-5
    assert res["param_max_abs_diff"] < 1e-5  # all-reduce changes the summation order


def test_batch_must_divide_devices():
    mesh = parallel.make_mesh(1)
    assert parallel.check_batch_divides(256, mesh) == 256
    with pytest.raises(ConfigError, match="mesh"):
        parallel.make_mesh(10_000)
