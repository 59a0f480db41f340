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
from array import array
from itertools import repeat
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
    user: np.ndarray  # str tokens [N], or int32 codes into user_tokens
    item: np.ndarray  # str tokens [N], or int32 codes into item_tokens
    timestamp: np.ndarray  # float64 [N]; the position in the line for the one-line format
    line: np.ndarray  # int64 [N], 1-based line number in the source file
    # Coded tokens (the one-line reader): 4 bytes per interaction instead of a string each. Codes follow first
    # appearance in the file, so ids factorised from codes come out in the same order as from the strings.
    user_tokens: np.ndarray | None = None  # str [n_distinct_users]
    item_tokens: np.ndarray | None = None  # str [n_distinct_items]

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx) -> "Interactions":
        return dataclasses.replace(
            self, user=self.user[idx], item=self.item[idx], timestamp=self.timestamp[idx], line=self.line[idx]
        )

    def tokens(self, who: str, values: np.ndarray) -> np.ndarray:
        """The str tokens of `values` taken from the `who` ("user"/"item") column (codes or tokens)."""
        table = getattr(self, f"{who}_tokens")
        return values if table is None else table[values]


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
    lines = _stream_text_lines(path)
    first = next(lines, (1, ""))[1]
    if not first.strip():
        raise DataError(
            f"{path}:1: empty file, expected a header like 'user_id:token\\titem_id:token\\ttimestamp:float'"
        )
    header = first.split("\t")
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
    for ln, text in lines:
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
    """`user item1 item2 ...` per line, chronological; the position in the line is the timestamp.

    Streamed line by line, tokens coded as they are read (a dict of the distinct tokens, int32 codes per
    interaction): the file, its lines and a string per interaction are never held at once."""
    user_code: dict[str, int] = {}
    item_code: dict[str, int] = {}
    users, items, pos, line_nos = array("i"), array("i"), array("i"), array("q")
    user_line = array("q")  # the line of each user code
    for ln, text in _stream_text_lines(path):
        toks = text.split()
        if not toks:
            continue
        if len(toks) < 2:
            raise DataError(
                f"{path}:{ln}: expected 'user item1 item2 ...' (a user and at least one item), got {text.strip()!r}"
            )
        u = toks[0]
        if u in user_code:
            first = user_line[user_code[u]]
            raise DataError(f"{path}:{ln}: user {u!r} already has a line ({first}); expected one line per user")
        code = user_code[u] = len(user_code)
        user_line.append(ln)
        n = len(toks) - 1
        users.extend(repeat(code, n))
        items.extend([item_code.setdefault(t, len(item_code)) for t in toks[1:]])
        pos.extend(range(n))
        line_nos.extend(repeat(ln, n))
    return Interactions(
        str(path),
        np.frombuffer(users, np.int32).copy(),
        np.frombuffer(items, np.int32).copy(),
        np.frombuffer(pos, np.int32).astype(np.float64),
        np.frombuffer(line_nos, np.int64).copy(),
        user_tokens=_str_array(list(user_code)),
        item_tokens=_str_array(list(item_code)),
    )


def _stream_text_lines(path: str | os.PathLike):
    """(1-based line number, line without its ending) of a text file read line by line; `.gz` is decompressed.
    Errors name the file and the line (a NUL byte, invalid UTF-8) or say why it cannot be read."""
    try:
        f = gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    with f:
        ln = 0
        try:
            for ln, raw in enumerate(f, start=1):
                if b"\x00" in raw:
                    raise DataError(f"{path}:{ln}: NUL byte, expected a text file")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{path}:{ln}: not valid UTF-8 text") from None
                text = text[:-1] if text.endswith("\n") else text
                yield ln, text[:-1] if text.endswith("\r") else text
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise DataError(f"{path}: cannot read: {e}") from None


def _str_array(tokens: list[str]) -> np.ndarray:
    return np.asarray(tokens, dtype=str) if tokens else np.zeros(0, dtype="<U1")
