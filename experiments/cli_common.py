"""What every entry point shares: config-key help from the Config definition, and one-line error exits."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the usage examples' line breaks and appends "(default: ...)" to every option that has a default
    and does not already state it (required options and None defaults are described in their help)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "%(default)" in text
            or "default:" in text
            or action.required
            or not action.option_strings
            or action.default is None
            or action.default is argparse.SUPPRESS
        ):
            return text
        return text + " (default: %(default)s)"


def config_fields() -> list[tuple[str, str, object, str]]:
    """(section, key, default, comment) for every Config field, in definition order, read from the source of
    ftragrec_jax.config so that help texts and docs/config.md cannot drift from it."""
    from ftragrec_jax.config import Config

    comments, sections, section = {}, {}, ""
    for line in inspect.getsource(Config).splitlines():
        head = re.match(r"\s+# -+ (.*?) -+\s*$", line)
        if head:
            section = head.group(1)
            continue
        m = re.match(r"\s+(\w+):[^#]*#\s*(.*)$", line)
        if m:
            comments[m.group(1)], sections[m.group(1)] = m.group(2), section
    rows = []
    for f in dataclasses.fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((sections.get(f.name, ""), f.name, default, comments.get(f.name, "")))
    return rows


def config_key_help() -> str:
    """Every config key with its default and its comment (the epilog of train/evaluate --help)."""
    rows = [f"  {key}={default!r}\n      {comment}" for _, key, default, comment in config_fields()]
    return "config keys (set with --set key=value or --key=value; values are YAML; docs/config.md):\n" + "\n".join(rows)


def fail(message: str, code: int = 2) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def add_overrides(parser, help: str, flag: str = "--set", dest: str = "overrides") -> None:
    """A repeatable `--set KEY=VALUE` option (value parsed as YAML), collected in args.<dest>."""
    parser.add_argument(flag, dest=dest, action="append", default=[], metavar="KEY=VALUE", help=help)


def reject_unknown(parser, unknown: list[str]) -> None:
    """`--lerning_rate=0.1` gets the config's close-match hint instead of argparse's bare refusal."""
    from ftragrec_jax.config import unknown_key_error

    for arg in unknown:
        if arg.startswith("--") and "=" in arg:
            fail(str(unknown_key_error(arg[2:].split("=", 1)[0], f"option {arg!r}")))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
