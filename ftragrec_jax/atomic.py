"""Atomic writes of files (temp file in the same folder, fsync, rename: a reader never sees half a file) and of
directories (staged in a temp sibling, swapped into place), and the project's SHA-256 checksums of files and
arrays."""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import shutil
import sys
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


def files_manifest(root: str | os.PathLike) -> dict[str, list]:
    """{path below root, "/"-separated: [size in bytes, SHA-256]} of every file below root, sorted by path."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): [p.stat().st_size, sha256_file(p)] for p in files}


def check_manifest_format(manifest, where: str) -> None:
    """Raise ValueError naming `where` unless manifest is {str: [int size, str sha256]} (a hand-edited or
    damaged record must not turn into a confusing error later)."""
    ok = isinstance(manifest, dict) and all(
        isinstance(k, str)
        and isinstance(v, list)
        and len(v) == 2
        and isinstance(v[0], int)
        and not isinstance(v[0], bool)
        and isinstance(v[1], str)
        for k, v in manifest.items()
    )
    if not ok:
        raise ValueError(f"{where}: expected an object of path: [size, sha256]")


def manifest_mismatch(root: str | os.PathLike, manifest: dict[str, list]) -> str | None:
    """The first file below root that differs from `manifest` (missing, another size, another SHA-256), as a
    phrase naming it by its path below root; None when every listed file matches. Files the manifest does not
    list are not judged. Checked before a reader such as TensorStore opens the files: a damaged file is then
    refused by name, instead of half-read by background threads that report it again at exit."""
    root = Path(root)
    for rel, (size, digest) in manifest.items():
        path = root / rel
        if not path.is_file():
            return f"{rel}: missing"
        have = path.stat().st_size
        if have != size:
            return f"{rel}: {have} bytes, {size} when saved"
        if sha256_file(path) != digest:
            return f"{rel}: contents differ from the save (SHA-256 mismatch)"
    return None


# --- directories: staged in a temporary sibling, then swapped into place -----------------------------------
def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put the complete directory `tmp` at `dest` (a sibling): an atomic exchange on Linux, elsewhere two renames
    (dest briefly absent, never half-written). The previous dest, if any, is removed."""
    if not dest.exists():
        os.rename(tmp, dest)
    elif _exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous model
    else:  # two renames: DEST is briefly absent, never half-written
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
        os.rmdir(old)
        os.rename(dest, old)
        try:
            os.rename(tmp, dest)
        except BaseException:
            os.rename(old, dest)  # put the previous model back
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dest.parent)


def remove_stale_siblings(dest: Path) -> None:
    """Temp dirs (.NAME.tmp-*, .NAME.old-*) of an earlier replace_dir of the same dest killed before it finished."""
    for kind in ("tmp", "old"):
        for stale in dest.parent.glob(f".{glob.escape(dest.name)}.{kind}-*"):
            shutil.rmtree(stale, ignore_errors=True)
