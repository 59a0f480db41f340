"""ruff's lint (pycodestyle errors and warnings, pyflakes, import order; settings in pyproject.toml) is clean."""

import subprocess
import sys

from tests.conftest import ROOT

# the project's own code only: a virtualenv or run folder inside the checkout is not ours to lint
CODE = ("ftragrec_jax", "converters", "experiments", "tests")


def test_ruff_lint_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *CODE], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
