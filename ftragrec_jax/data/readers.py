"""Readers for RecBole atomic `.inter` files and the one-line-per-user text format.

Both return the same `Interactions` table, in file order (RecBole's id remapping depends on that order).
Errors name the file, the line and what was expected; nothing is dropped without a count in the log.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ftragrec_jax.errors import DataError

log = logging.getLogger("ftragrec_jax")

# RecBole 0.2.1's FeatureType values; anything else in a header is refused, as RecBole does.
KNOWN_TYPES = ("token", "float", "token_seq", "float_seq")
# The types RecBole's sequential pipeline needs for its USER_ID_FIELD, ITEM_ID_FIELD and TIME_FIELD columns,
# and those fields' default names.
ROLE_TYPES = ("token", "token", "float")
DEFAULT_FIELDS = ("user_id", "item_id", "timestamp")


@dataclasses.dataclass(frozen=True)
class Interactions:
    source: str  # the file, for messages
    user: np.ndarray  # str tokens [N]
    item: np.ndarray  # str tokens [N]
    timestamp: np.ndarray  # float64 [N]; the position in the line for the one-line format
    line: np.ndarray  # int64 [N], 1-based line number in the source file

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx) -> "Interactions":
        return Interactions(self.source, self.user[idx], self.item[idx], self.timestamp[idx], self.line[idx])


def read_interactions(
    path: str | os.PathLike, fmt: str = "auto", fields: tuple[str, str, str] = DEFAULT_FIELDS
) -> Interactions:
    """`fmt`: "atomic" (RecBole .inter), "lines" (`user item1 item2 ...`) or "auto" (by the file's extension).
    `fields`: the user, item and time column names of an atomic file (RecBole's USER_ID_FIELD, ITEM_ID_FIELD,
    TIME_FIELD)."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "atomic":
        return read_atomic(path, fields)
    if fmt == "lines":
        return read_lines(path)
    raise DataError(f"{path}: unknown dataset format {fmt!r} (expected 'auto', 'atomic' or 'lines')")


def detect_format(path: str | os.PathLike) -> str:
    name = Path(path).name
    if name.endswith(".gz"):
        name = name[:-3]
    return "atomic" if name.endswith(".inter") else "lines"


def _read_text_lines(path: str | os.PathLike) -> list[str]:
    """The file's lines without line endings; `.gz` is decompressed."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if str(path).endswith(".gz"):
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read: {e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line_no}: not valid UTF-8 text") from None
    if "\x00" in text:
        line_no = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(f"{path}:{line_no}: NUL byte, expected a text file")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _parse_floats(values: list[str], lines: np.ndarray, path, column: str) -> np.ndarray:
    """Vectorised float parsing; on failure, find and name the first offending line."""
    try:
        out = np.array(values, dtype=np.float64)
        if np.isfinite(out).all():
            return out
    except (ValueError, OverflowError):
        pass
    for v, ln in zip(values, lines):
        try:
            x = float(v)
        except ValueError:
            x = None
        if x is None or not math.isfinite(x):
            raise DataError(f"{path}:{ln}: column {column!r}: expected a finite number, got {v!r}")
    raise DataError(f"{path}: column {column!r}: expected finite numbers")  # unreachable in practice


def read_atomic(path: str | os.PathLike, fields: tuple[str, str, str] = DEFAULT_FIELDS) -> Interactions:
    """RecBole atomic file: tab-separated, header `name:type` per column, any order, extra columns ignored.
    `fields` names the user, item and time columns."""
    if len(fields) != 3 or len(set(fields)) != 3 or not all(isinstance(f, str) and f for f in fields):
        raise DataError(f"{path}: fields {fields!r}: expected three distinct column names (user, item, time)")
    required = dict(zip(fields, ROLE_TYPES))
    lines = _read_text_lines(path)
    if not lines or not lines[0].strip():
        raise DataError(
            f"{path}:1: empty file, expected a header like 'user_id:token\\titem_id:token\\ttimestamp:float'"
        )
    header = lines[0].split("\t")
    col_of: dict[str, int] = {}
    for j, cell in enumerate(header):
        name, sep, ftype = cell.partition(":")
        if not sep or not name:
            raise DataError(f"{path}:1: column {j + 1} header {cell!r}: expected 'name:type'")
        if ftype not in KNOWN_TYPES:
            raise DataError(
                f"{path}:1: column {name!r} has unknown type {ftype!r} (expected one of {', '.join(KNOWN_TYPES)})"
            )
        if name in col_of:
            raise DataError(f"{path}:1: column {name!r} appears twice")
        col_of[name] = j
        if name in required and ftype != required[name]:
            raise DataError(f"{path}:1: column {name!r} has type {ftype!r}, expected {required[name]!r}")
    missing = [f"{n}:{t}" for n, t in required.items() if n not in col_of]
    if missing:
        raise DataError(f"{path}:1: missing required column(s) {', '.join(missing)}")

    n_cols = len(header)
    ju, ji, jt = (col_of[f] for f in fields)
    users, items, times, line_nos = [], [], [], []
    no_id = []  # rows without a user or item token: RecBole drops them with a warning; we count them
    for ln, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue  # blank lines are not records (pandas skips them too)
        cells = text.split("\t")
        if len(cells) != n_cols:
            raise DataError(f"{path}:{ln}: expected {n_cols} tab-separated fields (as in the header), got {len(cells)}")
        if not cells[ju] or not cells[ji]:
            no_id.append(ln)
            continue
        users.append(cells[ju])
        items.append(cells[ji])
        times.append(cells[jt].strip())
        line_nos.append(ln)
    if no_id:
        log.warning(
            "%s: dropped %d line(s) without a %s or %s (first: line %d), as RecBole does",
            path,
            len(no_id),
            fields[0],
            fields[1],
            no_id[0],
        )
    line_arr = np.asarray(line_nos, dtype=np.int64)
    ts = _parse_floats(times, line_arr, path, fields[2]) if times else np.zeros(0, np.float64)
    return Interactions(str(path), _str_array(users), _str_array(items), ts, line_arr)


def read_lines(path: str | os.PathLike) -> Interactions:
    """`user item1 item2 ...` per line, chronological; the position in the line is the timestamp."""
    lines = _read_text_lines(path)
    users, items, pos, line_nos = [], [], [], []
    seen: dict[str, int] = {}
    for ln, text in enumerate(lines, start=1):
        toks = text.split()
        if not toks:
            continue
        if len(toks) < 2:
            raise DataError(
                f"{path}:{ln}: expected 'user item1 item2 ...' (a user and at least one item), got {text.strip()!r}"
            )
        u = toks[0]
        if u in seen:
            raise DataError(f"{path}:{ln}: user {u!r} already has a line ({seen[u]}); expected one line per user")
        seen[u] = ln
        n = len(toks) - 1
        users.extend([u] * n)
        items.extend(toks[1:])
        pos.extend(range(n))
        line_nos.extend([ln] * n)
    return Interactions(
        str(path),
        _str_array(users),
        _str_array(items),
        np.asarray(pos, dtype=np.float64),
        np.asarray(line_nos, dtype=np.int64),
    )


def _str_array(tokens: list[str]) -> np.ndarray:
    return np.asarray(tokens, dtype=str) if tokens else np.zeros(0, dtype="<U1")
