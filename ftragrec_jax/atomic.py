"""Atomic file writes (temp file in the same folder, fsync, rename: a reader never sees half a file) and the
project's SHA-256 checksums of files and arrays."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Callable

import numpy as np


def write_atomic(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = True) -> Path:
    """Call `write(f)` on a temp sibling of `path`, then atomically replace `path` with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text), binary=False)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_arrays(labelled: Iterable[tuple[str, np.ndarray]]) -> str:
    """SHA-256 over (label, array) pairs in the order given: each contributes `{label}{dtype}{shape};` then its
    bytes. TensorStore notices missing or truncated chunk files, but a bit flip inside array data reads back as
    a different number; this digest catches that."""
    h = hashlib.sha256()
    for label, arr in labelled:
        a = np.ascontiguousarray(np.asarray(arr))
        h.update(f"{label}{a.dtype.str}{a.shape};".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()
