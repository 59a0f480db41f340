"""ruff keeps the code in one shape: its lint (pycodestyle errors and warnings, pyflakes, import order) is clean
and `ruff format` is applied; settings in pyproject.toml."""

import subprocess
import sys

from tests.conftest import ROOT

# the project's own code only: a virtualenv or run folder inside the checkout is not ours to lint
CODE = ("ftragrec_jax", "converters", "experiments", "tests")


def test_ruff_lint_is_clean():
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", *CODE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_applied():
    """`ruff format` (line length 120, settings in pyproject.toml) leaves every file as it is."""
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", *CODE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
