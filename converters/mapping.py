"""Explicit per-tensor mapping between DuoRec's PyTorch state_dict and the Flax encoder's params.

numpy only (no torch): state_dict values are numpy arrays (or anything `np.asarray` accepts).
Every tensor goes through one row of `ENCODER_TABLE`: (torch key pattern, Flax path pattern,
transform). `{i}` in a pattern is the Transformer layer index. Linear weights are [out, in] in
torch and kernels are [in, out] in Flax, hence `transpose`. Item row 0 is copied as it is (RecBole
never zeroes it). Other models (e.g. FTragrec's retriever) extend the mapping by passing their own
table to `load_torch_state` / `to_torch_state`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftragrec_jax.errors import CheckpointError, ConfigError
from ftragrec_jax.models.encoder import EncoderConfig
from ftragrec_jax.trees import dotted, flatten


class Transform(NamedTuple):
    name: str
    to_flax: object  # np.ndarray -> np.ndarray
    to_torch: object  # np.ndarray -> np.ndarray


def _transpose(x):
    return np.ascontiguousarray(np.asarray(x).T)


def _same(x):
    return np.asarray(x)


IDENTITY = Transform("identity", _same, _same)
TRANSPOSE = Transform("transpose", _transpose, _transpose)


class Entry(NamedTuple):
    torch_key: str  # e.g. "trm_encoder.layer.{i}.feed_forward.dense_1.weight"
    flax_path: str  # dot-joined, e.g. "layers.{i}.feed_forward.dense_1.kernel"
    transform: Transform
    per_layer: bool  # True: expanded for i in range(n_layers)


def _linear(torch_prefix, flax_prefix, per_layer=True):
    return [
        Entry(f"{torch_prefix}.weight", f"{flax_prefix}.kernel", TRANSPOSE, per_layer),
        Entry(f"{torch_prefix}.bias", f"{flax_prefix}.bias", IDENTITY, per_layer),
    ]


def _layer_norm(torch_prefix, flax_prefix, per_layer=True):
    return [
        Entry(f"{torch_prefix}.weight", f"{flax_prefix}.scale", IDENTITY, per_layer),
        Entry(f"{torch_prefix}.bias", f"{flax_prefix}.bias", IDENTITY, per_layer),
    ]


_TL = "trm_encoder.layer.{i}"
_FL = "layers.{i}"

ENCODER_TABLE: list[Entry] = [
    Entry("item_embedding.weight", "item_embedding.embedding", IDENTITY, False),
    Entry("position_embedding.weight", "position_embedding.embedding", IDENTITY, False),
    *_layer_norm("LayerNorm", "layer_norm", per_layer=False),
    *_linear(f"{_TL}.multi_head_attention.query", f"{_FL}.attention.query"),
    *_linear(f"{_TL}.multi_head_attention.key", f"{_FL}.attention.key"),
    *_linear(f"{_TL}.multi_head_attention.value", f"{_FL}.attention.value"),
    *_linear(f"{_TL}.multi_head_attention.dense", f"{_FL}.attention.dense"),
    *_layer_norm(f"{_TL}.multi_head_attention.LayerNorm", f"{_FL}.attention.layer_norm"),
    *_linear(f"{_TL}.feed_forward.dense_1", f"{_FL}.feed_forward.dense_1"),
    *_linear(f"{_TL}.feed_forward.dense_2", f"{_FL}.feed_forward.dense_2"),
    *_layer_norm(f"{_TL}.feed_forward.LayerNorm", f"{_FL}.feed_forward.layer_norm"),
]

# Every state_dict key that belongs to the DuoRec encoder (to tell ignored keys from bad ones).
_ENCODER_KEY = re.compile(r"^(item_embedding|position_embedding|LayerNorm|trm_encoder)\.")
_LAYER_KEY = re.compile(r"^trm_encoder\.layer\.(\d+)\.")

# RecBole config values our encoder implements; anything else is rejected rather than silently changed.
_SUPPORTED = {"hidden_act": ("gelu",), "layer_norm_eps": (1e-12,)}


def expand(table: Sequence[Entry], n_layers: int) -> list[tuple[str, tuple, Transform]]:
    """Concrete (torch key, Flax path tuple, transform) rows for a model with n_layers blocks."""
    rows = []
    for e in table:
        for i in range(n_layers) if e.per_layer else [None]:
            tk = e.torch_key.format(i=i)
            path = tuple(int(p) if p.isdigit() else p for p in e.flax_path.format(i=i).split("."))
            rows.append((tk, path, e.transform))
    return rows


def _shape(sd, key):
    return tuple(np.shape(sd[key]))


def _require(sd, key):
    if key not in sd:
        raise CheckpointError(f"state_dict: missing key {key!r}")
    return _shape(sd, key)


def encoder_config_from_state_dict(sd: Mapping[str, np.ndarray], **overrides) -> EncoderConfig:
    """Infer an EncoderConfig from DuoRec encoder shapes; `overrides` supply what shapes cannot tell
    (n_heads, default 2; dropouts; initializer_range) and may repeat inferred values, which must agree.
    `hidden_act` / `layer_norm_eps` overrides (from a RecBole config) are checked, not stored."""
    n_items, hidden = _require(sd, "item_embedding.weight")
    max_len, pos_hidden = _require(sd, "position_embedding.weight")
    layer_ids = sorted({int(m.group(1)) for k in sd if (m := _LAYER_KEY.match(k))})
    if not layer_ids:
        raise CheckpointError("state_dict: no trm_encoder.layer.{i}.* keys (not a DuoRec/SASRec encoder)")
    if layer_ids != list(range(len(layer_ids))):
        raise CheckpointError(f"state_dict: Transformer layer indices {layer_ids} are not 0..n-1")
    inner, in_hidden = _require(sd, "trm_encoder.layer.0.feed_forward.dense_1.weight")
    if pos_hidden != hidden or in_hidden != hidden:
        raise CheckpointError(
            f"state_dict: hidden sizes disagree (item_embedding {hidden}, position_embedding {pos_hidden}, "
            f"dense_1 input {in_hidden})"
        )
    inferred = {
        "n_items": int(n_items),
        "max_seq_length": int(max_len),
        "hidden_size": int(hidden),
        "n_layers": len(layer_ids),
        "inner_size": int(inner),
    }
    fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    settings = {"n_heads": 2}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _SUPPORTED:
            ok = any(
                value == s if isinstance(s, str) else np.isclose(float(value), s, rtol=0, atol=1e-15)
                for s in _SUPPORTED[key]
            )
            if not ok:
                raise ConfigError(f"encoder config: unsupported {key}={value!r} (supported: {_SUPPORTED[key]})")
        elif key not in fields:
            raise ConfigError(f"encoder config: unknown override {key!r} (known: {sorted(fields)})")
        elif key in inferred and int(value) != inferred[key]:
            raise CheckpointError(
                f"state_dict: {key} is {inferred[key]} from the tensor shapes but the config says {value!r}"
            )
        else:
            settings[key] = value
    cfg = EncoderConfig(**inferred, **settings)
    _check_shapes(sd, cfg)
    return cfg


def _expected_shapes(cfg: EncoderConfig) -> dict[str, tuple]:
    h, inner = cfg.hidden_size, cfg.inner_size
    shapes = {
        "item_embedding.weight": (cfg.n_items, h),
        "position_embedding.weight": (cfg.max_seq_length, h),
        "LayerNorm.weight": (h,),
        "LayerNorm.bias": (h,),
    }
    for i in range(cfg.n_layers):
        p = f"trm_encoder.layer.{i}"
        for name in ("query", "key", "value", "dense"):
            shapes[f"{p}.multi_head_attention.{name}.weight"] = (h, h)
            shapes[f"{p}.multi_head_attention.{name}.bias"] = (h,)
        shapes[f"{p}.multi_head_attention.LayerNorm.weight"] = (h,)
        shapes[f"{p}.multi_head_attention.LayerNorm.bias"] = (h,)
        shapes[f"{p}.feed_forward.dense_1.weight"] = (inner, h)
        shapes[f"{p}.feed_forward.dense_1.bias"] = (inner,)
        shapes[f"{p}.feed_forward.dense_2.weight"] = (h, inner)
        shapes[f"{p}.feed_forward.dense_2.bias"] = (h,)
        shapes[f"{p}.feed_forward.LayerNorm.weight"] = (h,)
        shapes[f"{p}.feed_forward.LayerNorm.bias"] = (h,)
    return shapes


def _check_shapes(sd, cfg):
    expected = _expected_shapes(cfg)
    for key, shape in expected.items():
        got = _require(sd, key)
        if got != shape:
            raise CheckpointError(f"state_dict: {key} has shape {got}, expected {shape}")
    stray = [k for k in sd if _ENCODER_KEY.match(k) and k not in expected]
    if stray:
        raise CheckpointError(f"state_dict: unexpected encoder key {stray[0]!r} for this architecture")


def _get(tree, path):
    for p in path:
        if not isinstance(tree, Mapping) or p not in tree:
            return None
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def load_torch_state(
    sd: Mapping[str, np.ndarray], module: nnx.Module, table: Sequence[Entry], n_layers: int, *, key_filter=None
) -> list[str]:
    """Fill every nnx.Param of `module` from `sd` through `table`. Returns the sd keys the table does
    not use (sorted). Raises CheckpointError on a missing key, a wrong shape, a non-float tensor or
    a Param left unfilled. `key_filter(key) -> bool` marks keys that must be consumed by the table
    (an unconsumed one is an error, not an ignored key)."""
    state = nnx.state(module, nnx.Param)
    pure = nnx.to_pure_dict(state)
    filled = set()
    used = set()
    for tk, path, tr in expand(table, n_layers):
        leaf = _get(pure, path)
        if leaf is None:
            raise CheckpointError(f"mapping: Flax model has no parameter {dotted(path)} (for {tk!r})")
        if tk not in sd:
            raise CheckpointError(f"state_dict: missing key {tk!r} (for {dotted(path)})")
        src = np.asarray(sd[tk])
        if not np.issubdtype(src.dtype, np.floating):
            raise CheckpointError(f"state_dict: {tk} has dtype {src.dtype}, expected a float tensor")
        value = tr.to_flax(src)
        if value.shape != tuple(leaf.shape):
            raise CheckpointError(
                f"state_dict: {tk} has shape {src.shape}, expected {_torch_shape(tuple(leaf.shape), tr)}"
            )
        _set(pure, path, jnp.asarray(np.asarray(value, dtype=leaf.dtype)))
        filled.add(path)
        used.add(tk)
    unfilled = [p for p in flatten(pure, str_keys=False) if p not in filled]
    if unfilled:
        raise CheckpointError(f"mapping: Flax parameter {dotted(unfilled[0])} has no state_dict source")
    ignored = sorted(k for k in sd if k not in used)
    if key_filter is not None:
        stray = [k for k in ignored if key_filter(k)]
        if stray:
            raise CheckpointError(f"state_dict: unexpected key {stray[0]!r} for this architecture")
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
    return ignored


def _torch_shape(flax_shape, tr):
    return flax_shape[::-1] if tr is TRANSPOSE else flax_shape


def to_torch_state(module: nnx.Module, table: Sequence[Entry], n_layers: int) -> dict[str, np.ndarray]:
    pure = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    out = {}
    for tk, path, tr in expand(table, n_layers):
        leaf = _get(pure, path)
        if leaf is None:
            raise CheckpointError(f"mapping: Flax model has no parameter {dotted(path)} (for {tk!r})")
        out[tk] = tr.to_torch(np.asarray(leaf))
    return out


def load_torch_state_into_encoder(sd: Mapping[str, np.ndarray], encoder) -> list[str]:
    """Copy a DuoRec state_dict into a SequenceEncoder in place; returns the ignored (non-encoder) keys."""
    return load_torch_state(
        sd, encoder, ENCODER_TABLE, encoder.config.n_layers, key_filter=lambda k: bool(_ENCODER_KEY.match(k))
    )


def encoder_to_torch_state(encoder) -> dict[str, np.ndarray]:
    """Exact inverse of load_torch_state_into_encoder: DuoRec state_dict keys -> float32 numpy arrays."""
    return to_torch_state(encoder, ENCODER_TABLE, encoder.config.n_layers)


# ---------------------------------------------------------------------------------------------------------
# FTragrec retriever g (added by the FTragrec work; the table above is untouched).
# torch: retriever_encoder.layer.{i}.{dense_1,dense_2,LayerNorm} (converters/reference/torch_ftragrec.py), beside the
# DuoRec keys at the top level. Flax: the `retriever` submodule of FTragrec, paths layers.{i}.*.
# ---------------------------------------------------------------------------------------------------------

_RL = "retriever_encoder.layer.{i}"
RETRIEVER_TABLE: list[Entry] = [
    *_linear(f"{_RL}.dense_1", "layers.{i}.dense_1"),
    *_linear(f"{_RL}.dense_2", "layers.{i}.dense_2"),
    *_layer_norm(f"{_RL}.LayerNorm", "layers.{i}.layer_norm"),
]
_RETRIEVER_KEY = re.compile(r"^retriever_encoder\.")
_RETRIEVER_LAYER_KEY = re.compile(r"^retriever_encoder\.layer\.(\d+)\.")


def retriever_layers_in_state_dict(sd: Mapping[str, np.ndarray]) -> int:
    """Number of retriever blocks in a PyTorch FTragrec state_dict (0: a plain DuoRec checkpoint)."""
    ids = sorted({int(m.group(1)) for k in sd if (m := _RETRIEVER_LAYER_KEY.match(k))})
    if ids and ids != list(range(len(ids))):
        raise CheckpointError(f"state_dict: retriever layer indices {ids} are not 0..n-1")
    return len(ids)


def load_torch_state_into_retriever(sd: Mapping[str, np.ndarray], retriever) -> list[str]:
    """Copy retriever_encoder.* weights into a Flax Retriever in place; returns the keys not used."""
    n = len(retriever.layers)
    found = retriever_layers_in_state_dict(sd)
    if found != n:
        raise CheckpointError(f"state_dict: {found} retriever_encoder layers, the model has retriever_layers={n}")
    return load_torch_state(sd, retriever, RETRIEVER_TABLE, n, key_filter=lambda k: bool(_RETRIEVER_KEY.match(k)))


def retriever_to_torch_state(retriever) -> dict[str, np.ndarray]:
    """Exact inverse of load_torch_state_into_retriever."""
    return to_torch_state(retriever, RETRIEVER_TABLE, len(retriever.layers))
