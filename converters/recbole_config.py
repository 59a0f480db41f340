"""What a RecBole checkpoint's own config says about its model class and its data, for RecBole 0.2.x and 1.x.

The converter reads the preprocessing a model was trained with from the config pickled into its checkpoint
(RecBole's `Config.final_config_dict`), never from a data file's name. Each RecBole setting either maps to a
project data setting (`ftragrec_jax.config.DATASET_KEYS`) or, when the data path does not implement it and
it is set, refuses the conversion with the key's name: a setting silently dropped would give other samples,
other item ids and so other metrics.

RecBole 0.2.x (DuoRec, CL4SRec, RaSeRec) and 1.x name several settings differently:

| what | RecBole 0.2.x | RecBole 1.x |
|---|---|---|
| k-core | min_/max_user_inter_num, min_/max_item_inter_num | user_inter_num_interval, item_inter_num_interval |
| value filters | lowest_val, highest_val, equal_val, not_equal_val | val_interval |
| split | eval_setting "TO_LS,full", leave_one_num 2 | eval_args split LS valid_and_test, order TO, mode full |

Both: rm_dup_inter, normalize_all / normalize_field, USER_ID_FIELD / ITEM_ID_FIELD / TIME_FIELD,
field_separator, load_col / unload_col, threshold, benchmark_filename, MAX_ITEM_LIST_LENGTH (checked against
the weights by the converter).
"""

from __future__ import annotations

import re

from ftragrec_jax.data.dataset import parse_intervals
from ftragrec_jax.errors import CheckpointError, DataError

# RecBole model class -> the model kind a model directory records. All of them are the SASRec encoder
# (item + position embeddings, post-LN Transformer, dot-product scores over the item table); DuoRec and
# CL4SRec add training objectives only. RaSeRec's checkpoint holds a frozen DuoRec backbone plus its own
# retrieval modules, of which only the backbone is converted.
SASREC_FAMILY = {"SASRec": "sasrec", "DuoRec": "duorec", "CL4SRec": "cl4srec", "RaSeRec": "duorec"}
# Rows at the end of item_embedding that are not items: CL4SRec (DuoRec's and RecBole-DA's) appends the token
# its item-mask augmentation writes into training sequences, and scores only the first n_items rows.
EXTRA_ITEM_ROWS = {"CL4SRec": 1}


def class_name(ck) -> str | None:
    """The RecBole model class a checkpoint was saved from (its short name), or None for a plain state dict."""
    qualname = ck.meta.get("model_class")
    if isinstance(qualname, str) and qualname:
        return qualname.rsplit(".", 1)[-1]
    model = (ck.config or {}).get("model")
    return model if isinstance(model, str) and model else None


def model_kind(ck, src: str, declared: str | None = None) -> tuple[str, str | None]:
    """(model kind for model.json, RecBole class name or None). Refuses a class whose forward pass is not the
    SASRec encoder's (FEARec, BERT4Rec, GRU4Rec, SASRecF, ...): its weights would load into the wrong
    computation. `declared` (--model-class) names the class of a plain state dict and must agree with a
    checkpoint that records one."""
    found = class_name(ck)
    if declared is not None and found is not None and declared != found:
        raise CheckpointError(f"{src}: --model-class {declared} contradicts the checkpoint's model class {found}")
    name = found or declared
    if name is None:
        return "sasrec", None
    if name not in SASREC_FAMILY:
        raise CheckpointError(
            f"{src}: model class {name!r} is not a SASRec-family encoder; this converter handles "
            f"{', '.join(SASREC_FAMILY)} (other architectures would load into the wrong forward pass)"
        )
    return SASREC_FAMILY[name], name


def _unset(value) -> bool:
    return value is None or value == "" or value == [] or value == {} or value is False


def _version(config: dict) -> str:
    if "eval_args" in config or "user_inter_num_interval" in config or "item_inter_num_interval" in config:
        return "1.x"
    return "0.2"


def _refuse_if_set(config: dict, keys, src: str, why: str) -> None:
    for key in keys:
        if key in config and not _unset(config[key]):
            raise CheckpointError(f"{src}: config {key}={config[key]!r}: {why}")


def _split_0_2(config: dict, src: str) -> None:
    setting = config.get("eval_setting")
    if setting is None:
        return
    parts = [p.strip() for p in str(setting).split(",")]
    if parts[0] != "TO_LS" or (len(parts) > 1 and parts[1] != "full") or len(parts) > 2:
        raise CheckpointError(
            f"{src}: config eval_setting={setting!r}: only 'TO_LS,full' (temporal order, "
            f"leave-one-out, full ranking) is implemented"
        )
    if config.get("leave_one_num", 2) != 2:
        raise CheckpointError(
            f"{src}: config leave_one_num={config['leave_one_num']!r}: only 2 (valid and test) is implemented"
        )
    if config.get("group_by_user", True) is not True:
        raise CheckpointError(
            f"{src}: config group_by_user={config['group_by_user']!r}: only per-user leave-one-out is implemented"
        )


def _split_1_x(config: dict, src: str) -> None:
    args = config.get("eval_args")
    if args is None:
        return
    if not isinstance(args, dict):
        raise CheckpointError(f"{src}: config eval_args={args!r}: expected a dict")
    split = args.get("split")
    if split != {"LS": "valid_and_test"}:
        raise CheckpointError(
            f"{src}: config eval_args.split={split!r}: only {{'LS': 'valid_and_test'}} "
            f"(leave-one-out for valid and test) is implemented"
        )
    if args.get("order", "TO") != "TO":
        raise CheckpointError(
            f"{src}: config eval_args.order={args['order']!r}: only 'TO' (temporal order) is implemented"
        )
    if args.get("group_by", "user") not in ("user", None):
        raise CheckpointError(f"{src}: config eval_args.group_by={args['group_by']!r}: only 'user' is implemented")
    mode = args.get("mode", "full")
    modes = mode.values() if isinstance(mode, dict) else [mode]
    if any(m != "full" for m in modes):
        raise CheckpointError(f"{src}: config eval_args.mode={mode!r}: only 'full' (full ranking) is implemented")


def _interval_0_2(config: dict, who: str) -> str:
    """0.2's min_/max_<who>_inter_num as a 1.x interval ("" = no bound): RecBole bans a count below
    `min or -1` or above `max or inf`."""
    lo, hi = config.get(f"min_{who}_inter_num"), config.get(f"max_{who}_inter_num")
    for key, value in ((f"min_{who}_inter_num", lo), (f"max_{who}_inter_num", hi)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise CheckpointError(f"config {key}={value!r}: expected an integer >= 0 or None")
    if not lo and not hi:
        return ""
    return f"[{lo or 0},{hi if hi else 'inf'}{']' if hi else ')'}"


def data_settings(config: dict | None, src: str) -> tuple[dict, list[str]]:
    """(project data settings, the RecBole keys they were read from) for a checkpoint's config.

    Keys the config does not have keep RecBole's defaults for that version; a setting the data path does not
    implement raises CheckpointError naming it."""
    config = config or {}
    version = _version(config)
    read: list[str] = []

    def have(key):
        if key in config:
            read.append(key)
            return True
        return False

    if have("field_separator") and config["field_separator"] != "\t":
        raise CheckpointError(
            f"{src}: config field_separator={config['field_separator']!r}: only tab-separated atomic files are read"
        )
    _refuse_if_set(
        config,
        ("lowest_val", "highest_val", "equal_val", "not_equal_val", "val_interval"),
        src,
        "filtering interactions by field values is not implemented",
    )
    _refuse_if_set(config, ("threshold",), src, "labels from a rating threshold are not implemented")
    _refuse_if_set(
        config,
        ("benchmark_filename",),
        src,
        "pre-split benchmark files are not read; the split is leave-one-out over one file",
    )
    _refuse_if_set(
        config,
        ("additional_feat_suffix", "alias_of_user_id", "alias_of_item_id", "fields_in_same_space", "discretization"),
        src,
        "extra feature files or id spaces are not implemented",
    )

    fields = {}
    for key, default in (("USER_ID_FIELD", "user_id"), ("ITEM_ID_FIELD", "item_id"), ("TIME_FIELD", "timestamp")):
        value = config.get(key, default)
        have(key)
        if not isinstance(value, str) or not value:
            raise CheckpointError(f"{src}: config {key}={value!r}: expected a column name")
        fields[key] = value
    load_col = config.get("load_col")
    if have("load_col") and load_col is not None:
        if not isinstance(load_col, dict):
            raise CheckpointError(f"{src}: config load_col={load_col!r}: expected a dict of atomic-file columns")
        extra = sorted(set(load_col) - {"inter"})
        if extra:
            raise CheckpointError(
                f"{src}: config load_col={load_col!r}: loads {', '.join(repr(e) for e in extra)} files; feature "
                f"files change the k-core filter and the ids RecBole assigns, and they are not read here"
            )
        columns = load_col.get("inter") or []
        missing = [f for f in fields.values() if f not in columns]
        if missing:
            raise CheckpointError(
                f"{src}: config load_col={load_col!r}: the 'inter' columns lack "
                f"{', '.join(missing)}; a sequential model needs the user, item and time columns"
            )
    unload = config.get("unload_col")
    if have("unload_col") and isinstance(unload, dict):
        gone = [f for f in fields.values() if f in (unload.get("inter") or [])]
        if gone:
            raise CheckpointError(
                f"{src}: config unload_col={unload!r}: removes {', '.join(gone)}, which the data needs"
            )

    if version == "0.2":
        _split_0_2(config, src)
        have("eval_setting")
        intervals = {}
        for who in ("user", "item"):
            for bound in ("min", "max"):
                have(f"{bound}_{who}_inter_num")
            intervals[who] = _interval_0_2(config, who)
    else:
        _split_1_x(config, src)
        have("eval_args")
        intervals = {}
        for who in ("user", "item"):
            key = f"{who}_inter_num_interval"
            value = config.get(key)
            have(key)
            if value is not None and not isinstance(value, str):
                raise CheckpointError(f"{src}: config {key}={value!r}: expected an interval string such as '[5,inf)'")
            try:
                parse_intervals(value or "", key)
            except DataError as e:
                raise CheckpointError(f"{src}: config {e}") from None
            intervals[who] = (value or "").strip()

    keep = config.get("rm_dup_inter")
    have("rm_dup_inter")
    if keep not in (None, "first", "last"):
        raise CheckpointError(f"{src}: config rm_dup_inter={keep!r}: expected None, 'first' or 'last'")

    norm_field, norm_all = config.get("normalize_field"), config.get("normalize_all")
    have("normalize_field")
    have("normalize_all")
    if norm_field:
        if not isinstance(norm_field, (list, tuple)):
            raise CheckpointError(f"{src}: config normalize_field={norm_field!r}: expected a list of field names")
        normalize = fields["TIME_FIELD"] in norm_field
    else:
        normalize = bool(norm_all)

    out = {
        "min_user_inter_num": 0,
        "min_item_inter_num": 0,
        "user_inter_num_interval": intervals["user"],
        "item_inter_num_interval": intervals["item"],
        "rm_dup_inter": keep or "",
        "normalize_time": normalize,
        **fields,
    }
    # 0.2's plain lower bounds keep their own names in model.json (what a 0.2 user recognises)
    for who in ("user", "item"):
        m = re.fullmatch(r"\[(\d+),inf\)", intervals[who])
        if version == "0.2" and (m or not intervals[who]):
            out[f"min_{who}_inter_num"] = int(m.group(1)) if m else 0
            out[f"{who}_inter_num_interval"] = ""
    return {"recbole": version, **out}, read
