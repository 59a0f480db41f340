"""Convert a PyTorch DuoRec-family checkpoint (RecBole 0.2.x) into an ftragrec-jax model directory.

    python -m converters.duorec_to_flax SRC DEST_DIR [--n-heads N] [--overwrite]

SRC is read with the restricted reader (no pickle code runs, recbole not needed). The DuoRec
encoder keys are mapped through converters.mapping's explicit table; every other key (RaSeRec's
seq_tar_ram*, retriever_mlp.*, ...) is listed as ignored. DEST_DIR is written only when everything
checked out, and atomically, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path

import numpy as np

from converters.safe_pickle import TorchCheckpoint, read_torch_checkpoint
from ftragrec_jax.errors import CheckpointError, FtragrecError

# RecBole settings our encoder implements exactly; any other value would silently change numbers.
FIXED_SETTINGS = {"hidden_act": "gelu", "layer_norm_eps": 1e-12}
# RecBole config key -> EncoderConfig field, checked against what the weights' shapes say.
SHAPE_KEYS = {"hidden_size": "hidden_size", "n_layers": "n_layers", "inner_size": "inner_size",
              "MAX_ITEM_LIST_LENGTH": "max_seq_length"}
# RecBole config key -> EncoderConfig field that only the config can tell.
CONFIG_KEYS = {"hidden_dropout_prob": "hidden_dropout_prob", "attn_dropout_prob": "attn_dropout_prob",
               "initializer_range": "initializer_range"}
DATASET_KEYS = ("min_user_inter_num", "min_item_inter_num", "MAX_ITEM_LIST_LENGTH")


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encoder_overrides(ck: TorchCheckpoint, src: str, n_heads: int | None) -> dict:
    """EncoderConfig fields the weights cannot tell: n_heads (flag or config), dropout, init std."""
    config = ck.config or {}
    for key, want in FIXED_SETTINGS.items():
        if key in config and config[key] != want:
            raise CheckpointError(f"{src}: config {key}={config[key]!r}, but the Flax encoder implements {want!r}")
    cfg_heads = config.get("n_heads")
    if n_heads is not None and cfg_heads is not None and n_heads != cfg_heads:
        raise CheckpointError(f"{src}: --n-heads {n_heads} contradicts the checkpoint config n_heads={cfg_heads}")
    heads = n_heads if n_heads is not None else cfg_heads
    if heads is None:
        raise CheckpointError(f"{src}: the file has no config with n_heads (weights cannot tell); pass --n-heads")
    out = {"n_heads": int(heads)}
    for key, field in CONFIG_KEYS.items():
        if isinstance(config.get(key), (int, float)) and not isinstance(config.get(key), bool):
            out[field] = float(config[key])
    return out


def check_against_config(cfg, ck: TorchCheckpoint, src: str) -> None:
    config = ck.config or {}
    for key, field in SHAPE_KEYS.items():
        if key in config and config[key] != getattr(cfg, field):
            raise CheckpointError(
                f"{src}: config {key}={config[key]!r} but the weights have {field}={getattr(cfg, field)}"
            )


def dataset_meta(ck: TorchCheckpoint) -> dict | None:
    config = ck.config or {}
    out = {k: config[k] for k in DATASET_KEYS if isinstance(config.get(k), (int, float, str))}
    if isinstance(config.get("dataset"), str):
        out["dataset"] = config["dataset"]
    return out or None


def convert(src, dest, *, n_heads: int | None = None, overwrite: bool = False) -> dict:
    """Read, map and check everything, then write DEST atomically. Returns the report as a dict."""
    src, dest = Path(src), Path(dest)
    if dest.exists() and not overwrite:
        raise CheckpointError(f"{dest}: already exists (pass --overwrite to replace a model directory)")
    ck = read_torch_checkpoint(src)  # before importing jax: a bad file fails fast

    from flax import nnx

    from converters.mapping import encoder_config_from_state_dict, load_torch_state_into_encoder
    from ftragrec_jax.checkpoint import save_model
    from ftragrec_jax.models.encoder import build_encoder

    cfg = encoder_config_from_state_dict(ck.state_dict, **encoder_overrides(ck, str(src), n_heads))
    check_against_config(cfg, ck, str(src))
    encoder = build_encoder(cfg, seed=0)
    ignored = sorted(load_torch_state_into_encoder(ck.state_dict, encoder))
    params = nnx.to_pure_dict(nnx.state(encoder, nnx.Param))
    n_params = int(sum(np.size(x) for x in _leaves(params)))
    source = {"file": src.name, "sha256": sha256_of(src), "format": "torch-" + ck.meta["format"]}
    for key in ("model_class", "epoch", "cur_step", "best_valid_score"):
        if key in ck.meta:
            source[key] = ck.meta[key]
    meta = {"model": "duorec", "encoder": dataclasses.asdict(cfg), "ftragrec": None,
            "dataset": dataset_meta(ck), "source": source}
    save_model(dest, params, meta)
    mapped = [k for k in ck.state_dict if k not in set(ignored)]
    return {"src": str(src), "dest": str(dest), "mapped": mapped, "ignored": ignored,
            "n_params": n_params, "encoder": meta["encoder"], "dataset": meta["dataset"], "source": source}


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def _group(keys: list[str]) -> list[str]:
    """Ignored keys by top-level module, e.g. 'seq_tar_ram.* (10 keys)', to keep the report short."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(k.split(".", 1)[0], []).append(k)
    return [ks[0] if len(ks) == 1 else f"{h}.* ({len(ks)} keys)" for h, ks in groups.items()]


def format_report(r: dict) -> str:
    enc = r["encoder"]
    lines = [
        f"converted {r['src']} -> {r['dest']}",
        f"  source: {r['source'].get('model_class', 'plain state_dict')}, sha256 {r['source']['sha256'][:16]}...",
        f"  encoder: n_items={enc['n_items']} max_seq_length={enc['max_seq_length']} hidden_size={enc['hidden_size']} "
        f"n_layers={enc['n_layers']} n_heads={enc['n_heads']} inner_size={enc['inner_size']}",
        f"  dataset: {r['dataset']}",
        f"  keys mapped: {len(r['mapped'])}, parameters: {r['n_params']:,}",
        f"  keys ignored: {len(r['ignored'])}" + (f": {', '.join(_group(r['ignored']))}" if r["ignored"] else ""),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters.duorec_to_flax", description=__doc__.split("\n\n")[0],
                                 epilog="then: python -m experiments.evaluate --checkpoint DEST_DIR --data FILE.inter",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("src", help="PyTorch checkpoint (.pth): RecBole checkpoint dict or plain state_dict")
    ap.add_argument("dest", help="model directory to create")
    ap.add_argument("--n-heads", type=int, default=None,
                    help="attention heads, only for a file without a RecBole config")
    ap.add_argument("--overwrite", action="store_true", help="replace DEST if it is an existing model directory")
    args = ap.parse_args(argv)
    try:
        report = convert(args.src, args.dest, n_heads=args.n_heads, overwrite=args.overwrite)
    except FtragrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
