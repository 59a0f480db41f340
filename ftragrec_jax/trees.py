"""Parameter trees: the one place that turns nested dicts and jax key paths into names, and fills a module's
parameters from a saved tree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from ftragrec_jax.errors import CheckpointError


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


def assign_params(model, params: dict, source: str = "params") -> None:
    """Fill `model`'s nnx.Param leaves from a pure dict; every leaf must be present with its shape."""

    state = nnx.state(model, nnx.Param)
    template = nnx.to_pure_dict(state)
    want, got = flatten(template), flatten(params)
    missing = sorted(".".join(k) for k in want.keys() - got.keys())
    extra = sorted(".".join(k) for k in got.keys() - want.keys())
    if missing or extra:
        raise CheckpointError(
            f"{source}: parameter tree does not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for key, ref in want.items():
        arr = np.asarray(got[key])
        if arr.shape != tuple(ref.shape):
            raise CheckpointError(
                f"{source}: {'.'.join(key)} has shape {arr.shape}, the model expects {tuple(ref.shape)}"
            )
    filled = jax.tree_util.tree_map(
        lambda ref, arr: np.asarray(arr, dtype=ref.dtype), template, _like(template, params)
    )
    nnx.replace_by_pure_dict(state, filled)
    nnx.update(model, state)


def _like(template, tree):
    """`tree` re-keyed with the template's key types (int list indices vs Orbax's strings)."""
    if isinstance(template, dict):
        by_str = {str(k): v for k, v in tree.items()}
        return {k: _like(v, by_str[str(k)]) for k, v in template.items()}
    return tree
