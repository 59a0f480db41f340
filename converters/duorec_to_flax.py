"""Convert a PyTorch DuoRec-family checkpoint (RecBole 0.2.x) into an ftragrec-jax model directory.

    python -m converters.duorec_to_flax SRC DEST_DIR [--data FILE.inter] [--n-heads N] [--overwrite]

SRC is read with the restricted reader (no pickle code runs, recbole not needed). The DuoRec
encoder keys are mapped through converters.mapping's explicit table; every other key (RaSeRec's
seq_tar_ram*, retriever_mlp.*, ...) is listed as ignored. DEST_DIR is written only when everything
checked out, and atomically, so a failed conversion leaves nothing behind.

A .pth holds weights but no item vocabulary. With --data, the dataset file the model was trained on is
read with the checkpoint's own settings (k-core and max length from its RecBole config), its item count is
checked against the weights, and DEST_DIR gets vocab.json and those settings: `experiments.recommend` then
takes original item tokens and `experiments.evaluate` needs no --data. A sanity score on validation users
flags a file whose item ids do not follow the order the model was trained with (same count, other ids).
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
# validation samples scored by the id-order sanity check: enough to tell a model from chance, seconds on a CPU
SANITY_SAMPLES = 2000


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


def dataset_options(ck: TorchCheckpoint, cfg, *, fmt: str = "auto", min_user_inter_num: int | None = None,
                    min_item_inter_num: int | None = None, max_item_list_length: int | None = None) -> dict:
    """Dataset settings (Config key names) for --data: each flag, else the checkpoint's RecBole config, else
    the Config default; the max length defaults to the position table of the weights."""
    from ftragrec_jax.config import Config

    config, default = ck.config or {}, Config()

    def pick(flag, key):
        if flag is not None:
            return int(flag)
        stored = config.get(key)
        if isinstance(stored, int) and not isinstance(stored, bool):
            return stored
        return getattr(default, key)

    max_len = cfg.max_seq_length if max_item_list_length is None else int(max_item_list_length)
    if not 1 <= max_len <= cfg.max_seq_length:
        raise CheckpointError(f"--max-item-list-length {max_len}: expected 1..{cfg.max_seq_length} "
                              f"(the checkpoint's position table has {cfg.max_seq_length} rows)")
    return {"data_format": fmt, "min_user_inter_num": pick(min_user_inter_num, "min_user_inter_num"),
            "min_item_inter_num": pick(min_item_inter_num, "min_item_inter_num"), "MAX_ITEM_LIST_LENGTH": max_len}


def read_dataset(data, options: dict, n_items: int, src: str):
    """The dataset --data names, refused unless it has exactly the checkpoint's item rows."""
    from ftragrec_jax.data.dataset import load_dataset

    dataset = load_dataset(data, fmt=options["data_format"], min_user_inter_num=options["min_user_inter_num"],
                           min_item_inter_num=options["min_item_inter_num"],
                           max_seq_length=options["MAX_ITEM_LIST_LENGTH"])
    if dataset.n_items != n_items:
        raise CheckpointError(
            f"{data}: has {dataset.n_items - 1} items after filtering (min_user_inter_num="
            f"{options['min_user_inter_num']}, min_item_inter_num={options['min_item_inter_num']}) but {src} has "
            f"{n_items - 1} (+1 padding row); not the file it was trained on, or other k-core settings "
            f"(--min-user-inter-num / --min-item-inter-num)")
    return dataset


def id_order_check(encoder, dataset, ck: TorchCheckpoint) -> dict:
    """The converted model's valid metrics @10 on up to SANITY_SAMPLES samples of --data, beside the valid
    score the checkpoint stored for itself (RecBole's best_valid_score of its valid_metric) and chance.

    The item count cannot tell two id orders apart (RecBole numbers items by first appearance in its .inter
    file; another export of the same data numbers them differently): the model then scores far below its
    own recorded validation score."""
    import jax.numpy as jnp

    valid = dataset.valid
    n = min(len(valid), SANITY_SAMPLES)
    out = {"samples": n, "chance": min(1.0, 10 / max(dataset.n_items - 1, 1))}
    metric = str((ck.config or {}).get("valid_metric", "")).lower()
    stored = ck.meta.get("best_valid_score")
    if metric in ("recall@10", "hit@10", "mrr@10", "ndcg@10") and isinstance(stored, (int, float)):
        out["stored"] = {"metric": metric, "value": float(stored)}
    if n == 0:
        return out
    # spread over the whole split: samples are ordered by user, and a block of the first users is not typical
    rows = np.unique(np.linspace(0, len(valid) - 1, n).round().astype(np.int64))
    ranks = []
    for start in range(0, len(rows), 500):
        part = valid.take(rows[start:start + 500])
        scores = np.array(encoder.scores(encoder(jnp.asarray(part.item_seq), jnp.asarray(part.item_seq_len))))
        scores[:, 0] = -np.inf  # padding is never recommended
        target = scores[np.arange(len(scores)), np.asarray(part.target)]
        ranks.append((scores > target[:, None]).sum(axis=1))
    rank = np.concatenate(ranks)
    top = rank < 10
    out.update({"hit@10": float(top.mean()), "mrr@10": float(np.where(top, 1.0 / (rank + 1), 0.0).mean()),
                "ndcg@10": float(np.where(top, 1.0 / np.log2(rank + 2.0), 0.0).mean())})
    out["recall@10"] = out["hit@10"]  # one target per user
    return out


def convert(src, dest, *, n_heads: int | None = None, overwrite: bool = False, data=None,
            dataset_flags: dict | None = None) -> dict:
    """Read, map and check everything, then write DEST atomically. Returns the report as a dict.

    `data`: the dataset file the model was trained on (stores its vocabulary and settings with the model);
    `dataset_flags`: dataset_options() keyword overrides for reading it."""
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
    vocab, sanity = None, None
    if data is not None:
        options = dataset_options(ck, cfg, **(dataset_flags or {}))
        dataset = read_dataset(data, options, cfg.n_items, str(src))
        vocab, sanity = dataset.vocab, id_order_check(encoder, dataset, ck)
        meta["dataset"] = {"data": str(Path(data).resolve()), **options,
                           **({"dataset": meta["dataset"]["dataset"]} if "dataset" in (meta["dataset"] or {}) else {})}
    save_model(dest, params, meta, vocab=vocab)
    mapped = [k for k in ck.state_dict if k not in set(ignored)]
    return {"src": str(src), "dest": str(dest), "mapped": mapped, "ignored": ignored,
            "n_params": n_params, "encoder": meta["encoder"], "dataset": meta["dataset"], "source": source,
            "vocab": vocab is not None, "sanity": sanity}


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
        "  vocabulary: " + ("vocab.json from --data" if r.get("vocab") else
                            "none (pass --data FILE to store it; recommend/evaluate then need --data)"),
    ]
    sanity = r.get("sanity") or {}
    if sanity.get("samples"):
        line = (f"  sanity on {sanity['samples']} valid samples of --data: hit@10 {sanity['hit@10']:.4f} "
                f"mrr@10 {sanity['mrr@10']:.4f} ndcg@10 {sanity['ndcg@10']:.4f} (chance hit@10 {sanity['chance']:.4f}")
        if "stored" in sanity:
            line += f"; the checkpoint recorded valid {sanity['stored']['metric']} {sanity['stored']['value']:.4f}"
        lines.append(line + ")")
    return "\n".join(lines)


def sanity_warning(r: dict) -> str | None:
    """The model scores far below its own recorded valid score (or near chance, when none is recorded) on --data:
    the file's item ids are probably not in the order the model was trained with."""
    sanity = r.get("sanity") or {}
    if not sanity.get("samples"):
        return None
    stored = sanity.get("stored")
    if stored:
        got, want = sanity[stored["metric"]], stored["value"]
        if got >= 0.5 * want:
            return None
        what = f"valid {stored['metric']} {got:.4f} where the checkpoint recorded {want:.4f}"
    else:
        if sanity["chance"] * 3 >= 1.0 or sanity["hit@10"] > 3 * sanity["chance"]:
            return None
        what = f"valid hit@10 {sanity['hit@10']:.4f}, chance level ({sanity['chance']:.4f})"
    return (f"warning: on {r['dataset'].get('data')} the converted model scores {what}: the file's item ids are "
            f"probably not the ones it was trained with (RecBole numbers items by first appearance in its .inter "
            f"file), so this vocabulary would map tokens to the wrong items")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters.duorec_to_flax", description=__doc__.split("\n\n")[0],
                                 epilog="then: python -m experiments.recommend --checkpoint DEST_DIR --items \"...\" "
                                        "and python -m experiments.evaluate --checkpoint DEST_DIR [--data FILE.inter]",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("src", help="PyTorch checkpoint (.pth): RecBole checkpoint dict or plain state_dict")
    ap.add_argument("dest", help="model directory to create")
    ap.add_argument("--n-heads", type=int, default=None,
                    help="attention heads, only for a file without a RecBole config")
    ap.add_argument("--overwrite", action="store_true", help="replace DEST if it is an existing model directory")
    data = ap.add_argument_group("dataset (stores the item vocabulary and dataset settings with the model)")
    data.add_argument("--data", default=None, metavar="FILE",
                      help="the dataset file the checkpoint was trained on (.inter atomic or one-line-per-user)")
    data.add_argument("--data-format", default="auto", choices=("auto", "atomic", "lines"),
                      help="format of --data (auto: by extension)")
    data.add_argument("--min-user-inter-num", type=int, default=None,
                      help="k-core for users (unset: the checkpoint config's value, else 5)")
    data.add_argument("--min-item-inter-num", type=int, default=None,
                      help="k-core for items (unset: the checkpoint config's value, else 5)")
    data.add_argument("--max-item-list-length", type=int, default=None,
                      help="prefix length kept (unset: the rows of the checkpoint's position table)")
    args = ap.parse_args(argv)
    flags = {"fmt": args.data_format, "min_user_inter_num": args.min_user_inter_num,
             "min_item_inter_num": args.min_item_inter_num, "max_item_list_length": args.max_item_list_length}
    if args.data is None and any(v is not None for k, v in flags.items() if k != "fmt"):
        print("error: --min-user-inter-num / --min-item-inter-num / --max-item-list-length need --data",
              file=sys.stderr)
        return 2
    try:
        report = convert(args.src, args.dest, n_heads=args.n_heads, overwrite=args.overwrite, data=args.data,
                         dataset_flags=flags)
    except FtragrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    warning = sanity_warning(report)
    if warning:
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
