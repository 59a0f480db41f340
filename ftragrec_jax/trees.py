"""Parameter trees as paths: the one place that turns nested dicts and jax key paths into names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def key_names(path) -> tuple[str, ...]:
    """A jax key path as plain strings: ('retriever', 'layers', '0', 'dense_1', 'kernel', ...)."""
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)


def flatten(tree, prefix: tuple = (), *, str_keys: bool = True) -> dict[tuple, Any]:
    """{path tuple: leaf} for a nested dict (pure-dict parameters, Orbax's restored trees). str_keys: every key
    as a string (nnx's int list indices and Orbax's string ones then agree); False keeps the keys as they are."""
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, prefix + (str(k) if str_keys else k,), str_keys=str_keys))
        return out
    return {prefix: tree}


def dotted(path) -> str:
    """'layers.0.attention.query.kernel' for any path of keys."""
    return ".".join(str(p) for p in path)
