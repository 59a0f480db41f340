"""Convert a PyTorch SASRec-family checkpoint (RecBole 0.2.x or 1.x: SASRec, DuoRec, CL4SRec, RaSeRec's
backbone) into an ftragrec-jax model directory.

    python -m converters.duorec_to_flax SRC DEST_DIR [--data FILE.inter] [--n-heads N] [--overwrite]

SRC is read with the restricted reader (no pickle code runs, recbole not needed). Its model class must be
one of converters.recbole_config.SASREC_FAMILY (others are refused by name); model.json records the kind.
The encoder keys are mapped through converters.mapping's explicit table; every other key (RaSeRec's
seq_tar_ram*, retriever_mlp.*, ...) is listed as ignored. DEST_DIR is written only when everything
checked out, and atomically, so a failed conversion leaves nothing behind.

A .pth holds weights but no item vocabulary. The data settings the model was trained with (k-core, duplicate
removal, timestamp normalisation, field names; converters.recbole_config) are read from the checkpoint's own
RecBole config and stored with the model. With --data, the dataset file the model was trained on is read with
those settings, whatever the file is called, its item count is checked against the weights, and DEST_DIR gets
vocab.json: `experiments.recommend` then takes original item tokens and `experiments.evaluate` needs no
--data. A sanity score on validation users flags a file whose item ids do not follow the order the model was
trained with (same count, other ids).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from converters.recbole_config import EXTRA_ITEM_ROWS, SASREC_FAMILY, data_settings, model_kind
from converters.safe_pickle import TorchCheckpoint, read_torch_checkpoint
from ftragrec_jax.atomic import sha256_file
from ftragrec_jax.config import DATASET_KEYS
from ftragrec_jax.data.dataset import load_dataset
from ftragrec_jax.errors import CheckpointError, FtragrecError

# RecBole settings our encoder implements exactly; any other value would silently change numbers.
FIXED_SETTINGS = {"hidden_act": "gelu", "layer_norm_eps": 1e-12}
# RecBole config key -> EncoderConfig field, checked against what the weights' shapes say.
SHAPE_KEYS = {
    "hidden_size": "hidden_size",
    "n_layers": "n_layers",
    "inner_size": "inner_size",
    "MAX_ITEM_LIST_LENGTH": "max_seq_length",
}
# RecBole config key -> EncoderConfig field that only the config can tell.
CONFIG_KEYS = {
    "hidden_dropout_prob": "hidden_dropout_prob",
    "attn_dropout_prob": "attn_dropout_prob",
    "initializer_range": "initializer_range",
}
# the data settings a checkpoint's config decides: Config's dataset keys but the file, its format and the max
# length (which the weights' position table decides)
DATA_KEYS = tuple(k for k in DATASET_KEYS if k not in ("data", "data_format", "MAX_ITEM_LIST_LENGTH"))
# validation samples scored by the id-order sanity check: enough to tell a model from chance, seconds on a CPU
SANITY_SAMPLES = 2000


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


def checkpoint_data_settings(ck: TorchCheckpoint, cfg, src: str) -> tuple[dict, list[str]]:
    """The data settings (Config key names) the checkpoint was trained with, read from its own RecBole config
    (recbole_config.data_settings), and the RecBole keys read. A file without a config gets the project's
    defaults, which the flags can override."""
    from ftragrec_jax.config import Config

    if ck.config is None:
        default = Config()
        settings = {k: getattr(default, k) for k in DATA_KEYS}
        read = []
    else:
        settings, read = data_settings(ck.config, src)
        settings = {k: settings[k] for k in DATA_KEYS}
    settings["MAX_ITEM_LIST_LENGTH"] = cfg.max_seq_length
    return settings, read


def dataset_options(
    settings: dict,
    cfg,
    *,
    fmt: str = "auto",
    min_user_inter_num: int | None = None,
    min_item_inter_num: int | None = None,
    max_item_list_length: int | None = None,
    normalize_time: bool | None = None,
) -> dict:
    """Dataset settings (Config key names) for --data: the checkpoint's own (`settings`), with each flag that is
    given replacing the setting it names; the max length defaults to the position table of the weights."""
    out = {"data_format": fmt, **settings}
    for who, flag in (("user", min_user_inter_num), ("item", min_item_inter_num)):
        if flag is not None:
            out[f"min_{who}_inter_num"], out[f"{who}_inter_num_interval"] = int(flag), ""
    if normalize_time is not None:
        out["normalize_time"] = bool(normalize_time)
    max_len = cfg.max_seq_length if max_item_list_length is None else int(max_item_list_length)
    if not 1 <= max_len <= cfg.max_seq_length:
        raise CheckpointError(
            f"--max-item-list-length {max_len}: expected 1..{cfg.max_seq_length} "
            f"(the checkpoint's position table has {cfg.max_seq_length} rows)"
        )
    out["MAX_ITEM_LIST_LENGTH"] = max_len
    return out


def _filters(options: dict) -> str:
    parts = []
    for who in ("user", "item"):
        interval = options.get(f"{who}_inter_num_interval")
        parts.append(
            f"{who}_inter_num_interval={interval!r}"
            if interval
            else f"min_{who}_inter_num={options[f'min_{who}_inter_num']}"
        )
    return ", ".join(parts)


def read_dataset(data, options: dict, n_items: int, src: str):
    """The dataset --data names, refused unless it has exactly the checkpoint's item rows."""
    from ftragrec_jax.config import Config

    cfg = Config(data=str(data), **{k: v for k, v in options.items() if k in DATASET_KEYS and k != "data"}).validate()
    dataset = load_dataset(data, **cfg.dataset_kwargs())
    if dataset.n_items != n_items:
        raise CheckpointError(
            f"{data}: has {dataset.n_items - 1} items after filtering ({_filters(options)}) but {src} has "
            f"{n_items - 1} (+1 padding row); not the file it was trained on, or other k-core settings "
            f"(--min-user-inter-num / --min-item-inter-num)"
        )
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
        part = valid.take(rows[start : start + 500])
        scores = np.array(encoder.scores(encoder(jnp.asarray(part.item_seq), jnp.asarray(part.item_seq_len))))
        scores[:, 0] = -np.inf  # padding is never recommended
        target = scores[np.arange(len(scores)), np.asarray(part.target)]
        ranks.append((scores > target[:, None]).sum(axis=1))
    rank = np.concatenate(ranks)
    top = rank < 10
    out.update(
        {
            "hit@10": float(top.mean()),
            "mrr@10": float(np.where(top, 1.0 / (rank + 1), 0.0).mean()),
            "ndcg@10": float(np.where(top, 1.0 / np.log2(rank + 2.0), 0.0).mean()),
        }
    )
    out["recall@10"] = out["hit@10"]  # one target per user
    return out


def convert(
    src,
    dest,
    *,
    n_heads: int | None = None,
    overwrite: bool = False,
    data=None,
    dataset_flags: dict | None = None,
    model_class: str | None = None,
) -> dict:
    """Read, map and check everything, then write DEST atomically. Returns the report as a dict.

    `data`: the dataset file the model was trained on (stores its vocabulary and settings with the model);
    `dataset_flags`: dataset_options() keyword overrides for reading it; `model_class`: the RecBole class of a
    plain state dict (a checkpoint records its own)."""
    src, dest = Path(src), Path(dest)
    if dest.exists() and not overwrite:
        raise CheckpointError(f"{dest}: already exists (pass --overwrite to replace a model directory)")
    ck = read_torch_checkpoint(src)  # before importing jax: a bad file fails fast

    from flax import nnx

    from converters.mapping import encoder_config_from_state_dict, load_torch_state_into_encoder
    from ftragrec_jax.model_dir import save_model
    from ftragrec_jax.models.encoder import build_encoder

    kind, recbole_class = model_kind(ck, str(src), model_class)
    state = dict(ck.state_dict)
    extra_rows = EXTRA_ITEM_ROWS.get(recbole_class, 0)
    if extra_rows and "item_embedding.weight" in state:  # a missing table is reported by the mapping
        state["item_embedding.weight"] = state["item_embedding.weight"][:-extra_rows]
    cfg = encoder_config_from_state_dict(state, **encoder_overrides(ck, str(src), n_heads))
    check_against_config(cfg, ck, str(src))
    settings, read = checkpoint_data_settings(ck, cfg, str(src))
    encoder = build_encoder(cfg, seed=0)
    ignored = sorted(load_torch_state_into_encoder(state, encoder))
    params = nnx.to_pure_dict(nnx.state(encoder, nnx.Param))
    n_params = int(sum(np.size(x) for x in _leaves(params)))
    source = {
        "file": src.name,
        "sha256": sha256_file(src),
        "format": "torch-" + ck.meta["format"],
        "recbole_class": recbole_class,
    }
    if extra_rows:
        source["dropped_item_rows"] = extra_rows  # CL4SRec's mask token, never scored
    for key in ("model_class", "epoch", "cur_step", "best_valid_score"):
        if key in ck.meta:
            source[key] = ck.meta[key]
    if ck.config is not None:
        source["recbole_config_keys_read"] = read
        if isinstance(ck.config.get("dataset"), str):
            source["recbole_dataset"] = ck.config["dataset"]
    meta = {"model": kind, "encoder": dataclasses.asdict(cfg), "ftragrec": None, "dataset": settings, "source": source}
    vocab, sanity = None, None
    if data is not None:
        options = dataset_options(settings, cfg, **(dataset_flags or {}))
        dataset = read_dataset(data, options, cfg.n_items, str(src))
        vocab, sanity = dataset.vocab, id_order_check(encoder, dataset, ck)
        meta["dataset"] = {"data": str(Path(data).resolve()), **options}
    save_model(dest, params, meta, vocab=vocab)
    mapped = [k for k in state if k not in set(ignored)]
    return {
        "src": str(src),
        "dest": str(dest),
        "mapped": mapped,
        "ignored": ignored,
        "model": kind,
        "n_params": n_params,
        "encoder": meta["encoder"],
        "dataset": meta["dataset"],
        "source": source,
        "vocab": vocab is not None,
        "sanity": sanity,
    }


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
        f"  source: {r['source'].get('model_class', 'plain state_dict')}, sha256 {r['source']['sha256'][:16]}..."
        f" -> model {r['model']!r}",
        f"  encoder: n_items={enc['n_items']} max_seq_length={enc['max_seq_length']} hidden_size={enc['hidden_size']} "
        f"n_layers={enc['n_layers']} n_heads={enc['n_heads']} inner_size={enc['inner_size']}",
        f"  dataset: {r['dataset']}",
        f"  keys mapped: {len(r['mapped'])}, parameters: {r['n_params']:,}"
        + (
            f" (the last {r['source']['dropped_item_rows']} item_embedding row(s), {r['source']['recbole_class']}'s "
            f"augmentation mask token, not converted)"
            if r["source"].get("dropped_item_rows")
            else ""
        ),
        f"  keys ignored: {len(r['ignored'])}" + (f": {', '.join(_group(r['ignored']))}" if r["ignored"] else ""),
        "  vocabulary: "
        + (
            "vocab.json from --data"
            if r.get("vocab")
            else "none (pass --data FILE to store it; recommend/evaluate then need --data)"
        ),
    ]
    sanity = r.get("sanity") or {}
    if sanity.get("samples"):
        line = (
            f"  sanity on {sanity['samples']} valid samples of --data: hit@10 {sanity['hit@10']:.4f} "
            f"mrr@10 {sanity['mrr@10']:.4f} ndcg@10 {sanity['ndcg@10']:.4f} (chance hit@10 {sanity['chance']:.4f}"
        )
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
    return (
        f"warning: on {r['dataset'].get('data')} the converted model scores {what}: the file's item ids are "
        f"probably not the ones it was trained with (RecBole numbers items by first appearance in its .inter "
        f"file), so this vocabulary would map tokens to the wrong items"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m converters.duorec_to_flax",
        description=__doc__.split("\n\n")[0],
        epilog='then: python -m experiments.recommend --checkpoint DEST_DIR --items "..." '
        "and python -m experiments.evaluate --checkpoint DEST_DIR [--data FILE.inter]",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("src", help="PyTorch checkpoint (.pth): RecBole checkpoint dict or plain state_dict")
    ap.add_argument("dest", help="model directory to create")
    ap.add_argument(
        "--n-heads", type=int, default=None, help="attention heads, only for a file without a RecBole config"
    )
    ap.add_argument(
        "--model-class",
        default=None,
        choices=sorted(SASREC_FAMILY),
        help="RecBole class of a plain state_dict (a RecBole checkpoint records its own)",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace DEST if it is an existing model directory")
    data = ap.add_argument_group("dataset (stores the item vocabulary and dataset settings with the model)")
    data.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="the dataset file the checkpoint was trained on (.inter atomic or one-line-per-user)",
    )
    data.add_argument(
        "--data-format",
        default="auto",
        choices=("auto", "atomic", "lines"),
        help="format of --data (auto: by extension)",
    )
    data.add_argument(
        "--min-user-inter-num",
        type=int,
        default=None,
        help="k-core for users (unset: the checkpoint config's k-core, 0.2 or 1.x keys; 5 without one)",
    )
    data.add_argument(
        "--min-item-inter-num",
        type=int,
        default=None,
        help="k-core for items (unset: the checkpoint config's k-core, 0.2 or 1.x keys; 5 without one)",
    )
    data.add_argument(
        "--normalize-time",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="min-max scale timestamps before ordering (unset: the checkpoint config's normalize_all / "
        "normalize_field; off without one)",
    )
    data.add_argument(
        "--max-item-list-length",
        type=int,
        default=None,
        help="prefix length kept (unset: the rows of the checkpoint's position table)",
    )
    args = ap.parse_args(argv)
    flags = {
        "fmt": args.data_format,
        "min_user_inter_num": args.min_user_inter_num,
        "min_item_inter_num": args.min_item_inter_num,
        "max_item_list_length": args.max_item_list_length,
        "normalize_time": args.normalize_time,
    }
    if args.data is None and any(v is not None for k, v in flags.items() if k != "fmt"):
        print(
            "error: --min-user-inter-num / --min-item-inter-num / --max-item-list-length / --normalize-time "
            "need --data",
            file=sys.stderr,
        )
        return 2
    try:
        report = convert(
            args.src,
            args.dest,
            n_heads=args.n_heads,
            overwrite=args.overwrite,
            data=args.data,
            dataset_flags=flags,
            model_class=args.model_class,
        )
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
