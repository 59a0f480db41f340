"""What every entry point shares: config-key help from the Config definition, and one-line error exits."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_key_help() -> str:
    """Every config key with its default and its comment, read from ftragrec_jax.config so it cannot drift."""
    from ftragrec_jax.config import Config

    comments = {}
    for line in inspect.getsource(Config).splitlines():
        m = re.match(r"\s+(\w+):[^#]*#\s*(.*)$", line)
        if m:
            comments[m.group(1)] = m.group(2)
    rows = []
    for f in dataclasses.fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"  {f.name}={default!r}\n      {comments.get(f.name, '')}")
    return "config keys (set with --set key=value or --key=value; values are YAML):\n" + "\n".join(rows)


def fail(message: str, code: int = 2) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def reject_unknown(parser, unknown: list[str]) -> None:
    """`--lerning_rate=0.1` gets the config's close-match hint instead of argparse's bare refusal."""
    from ftragrec_jax.config import unknown_key_error

    for arg in unknown:
        if arg.startswith("--") and "=" in arg:
            fail(str(unknown_key_error(arg[2:].split("=", 1)[0], f"option {arg!r}")))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
