"""One flat run configuration, RecBole-style keys, loaded from YAML plus `--set key=value` overrides.

Flat on purpose: RecBole users type `--key=value` for any setting, and a flat table is what the docs
reference (`python -m experiments.config_reference`) is generated from, so it cannot drift.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from pathlib import Path
from typing import Any

import yaml

from ftragrec_jax.data.dataset import DUPLICATE_RULES, parse_intervals
from ftragrec_jax.errors import ConfigError, DataError

MODELS = ("duorec", "ftragrec")
BACKENDS = ("faiss", "exact")
METRICS = ("recall", "hit", "mrr", "ndcg", "precision")


@dataclasses.dataclass
class Config:
    # --- data -------------------------------------------------------------------------------
    data: str = ""  # dataset file (.inter atomic or one-line-per-user .txt[.gz]); "" = embedded Amazon Beauty
    data_format: str = "auto"  # "auto" (by extension), "atomic" or "lines"
    min_user_inter_num: int = 5  # k-core: users with fewer interactions are dropped (RecBole, DuoRec seq.yaml)
    min_item_inter_num: int = 5  # k-core: items with fewer interactions are dropped
    user_inter_num_interval: str = ""  # RecBole 1.x k-core for users, e.g. "[5,inf)"; replaces min_user_inter_num
    item_inter_num_interval: str = ""  # RecBole 1.x k-core for items, e.g. "(2,inf)"; replaces min_item_inter_num
    rm_dup_inter: str = ""  # repeated user-item pairs: "" keeps all, "first" / "last" keeps one (RecBole's key)
    normalize_time: bool = False  # min-max scale timestamps before ordering (RecBole's normalize_all): float32 ties
    USER_ID_FIELD: str = "user_id"  # atomic files: the user column (RecBole's key)
    ITEM_ID_FIELD: str = "item_id"  # atomic files: the item column
    TIME_FIELD: str = "timestamp"  # atomic files: the time column (type float)
    MAX_ITEM_LIST_LENGTH: int = 50  # keep the last N items of each prefix (RecBole's name)

    # --- encoder (SASRec/DuoRec; RecBole names) -----------------------------------------------
    hidden_size: int = 64  # embedding / Transformer width
    n_layers: int = 2  # Transformer blocks
    n_heads: int = 2  # attention heads; must divide hidden_size
    inner_size: int = 256  # feed-forward width inside each block
    hidden_dropout_prob: float = 0.5  # dropout on embeddings and block outputs
    attn_dropout_prob: float = 0.5  # dropout on attention probabilities
    initializer_range: float = 0.02  # std of the normal init (RecBole)

    # --- objective ----------------------------------------------------------------------------
    model: str = "duorec"  # "duorec" (pretraining) or "ftragrec" (retrieval fine-tuning on a frozen DuoRec)
    lmd_sem: float = 0.1  # DuoRec us_x: weight of the same-target contrastive term; 0 = plain SASRec CE
    tau: float = 1.0  # DuoRec: InfoNCE temperature (dot similarity)
    pretrain_holdout_last: int = 0  # DuoRec: each user's last N training samples are not trained on (queries for g)

    # --- training -----------------------------------------------------------------------------
    seed: int = 2020  # one seed fixes init, data order, dropout and same-target sampling (RecBole default)
    epochs: int = 50  # maximum epochs (DuoRec: 50; up to 100 allowed)
    train_batch_size: int = 256  # samples per step; the last batch is padded and masked
    learning_rate: float = 0.001  # Adam step size
    weight_decay: float = 0.0  # L2 added to the Adam update of trainable parameters (RecBole default 0)
    stopping_step: int = 10  # early-stopping patience in evaluations without a better valid_metric
    valid_metric: str = "mrr@10"  # model selection metric on the validation split
    eval_step: int = 1  # evaluate on validation every N epochs
    item_chunk_size: int = 0  # items per chunk for every CE, full-sort ranking and bulk top-k; 0 = all at once
    eval_batch_size: int = 1024  # users per chunk in full-sort evaluation (bounds memory); a multiple of the devices
    topk: tuple = (5, 10, 20, 50)  # cut-offs K for every metric
    mask_history: bool = False  # S3-Rec/ICLRec protocol: hide each user's past items when ranking (off = RecBole)
    output_dir: str = ""  # run folder; "" = runs/<model>-<dataset>-seed<seed>
    show_progress: bool = True  # tqdm bars for training and evaluation

    # --- FTragrec (defaults are the design's) ------------------------------------------------------
    pretrained: str = ""  # DuoRec model dir (converted or JAX-trained); "" with model=ftragrec = pretrain first
    pretrain_epochs: int = 50  # epochs of the DuoRec stage when pretrained is "" (model=ftragrec)
    retrieval_backend: str = "faiss"  # "faiss" (host callback from the jitted step) or "exact" (in-graph)
    faiss_index: str = "Flat"  # FAISS index factory string, e.g. "IVF1024,Flat"
    nprobe: int = 16  # IVF cells searched (IVF indexes only)
    top_k: int = 5  # neighbours retrieved per sequence
    retriever_layers: int = 1  # feed-forward layers of the retriever encoder g; 0 = no g (cosine of the frozen vectors)
    retriever_inner_size: int = 256  # width inside each retriever layer
    retriever_temperature: float = 0.07  # softmax temperature over neighbour similarities
    quality_threshold: float = 0.6  # neighbours with cosine below this are masked out
    alpha: float = 0.15  # share of retrieved knowledge in the enhanced representation
    fusion: str = "representation"  # "representation" (mix vectors, as designed) or "knn_lm" (mix item distributions)
    knn_value_window: int = 1  # knn_lm: a neighbour votes for its target and its user's next N-1 training targets
    knn_value_decay: float = 0.5  # knn_value_window > 1: the w-th item of a window weighs decay**w (renormalised)
    learnable_alpha: bool = False  # ablation: train alpha (as a logit) with the retriever
    learnable_temperature: bool = False  # train retriever_temperature (as a log) with the retriever, starting there
    exclude_same_user: bool = False  # ablation: retrieve no sample of the query's user (default: only its later ones)
    freeze_retriever: bool = False  # ablation: keep g at its initialisation (LN(x)); nothing of g trains
    enhanced_rec_weight: float = 0.5  # weight of CE on the enhanced scores
    kl_small_weight: float = 0.03  # weight of KL(retrieval || recommendation) over neighbours
    retriever_objective: str = "design"  # extra term for g: design (none), contrastive, usefulness, knn_likelihood
    retriever_pool: int = 200  # with an objective or value_rerank: entries searched per query (the cosine pool)
    retriever_loss_weight: float = 1.0  # weight of the objective's term in the total loss
    usefulness_temperature: float = 1.0  # objective "usefulness": softmax temperature of its target distribution
    value_rerank: bool = False  # fuse the best of the cosine pool by cosine + (W s)·E[target], W trained from 0
    retriever_queries: str = "train"  # queries g is fitted on: "train" (design), "valid" or "held_out" (docs/model.md)
    retriever_valid_holdout: float = 0.5  # queries valid: share of validation users kept for selection, untrained
    retriever_update_interval: int = 10  # recompute all keys and rebuild the index every N epochs
    extend_memory_with_valid: bool = False  # add validation samples to the knowledge base before testing
    cache_seq_output: bool = True  # encode training samples once (the encoder is frozen) instead of every step
    retrieval_chunk_size: int = 65536  # exact backend: keys scored per chunk (bounds memory)
    knowledge_base_dtype: str = "float32"  # storage of the frozen vectors h: "float16" halves them (rounded)
    faiss_overfetch: int = 32  # faiss backend: extra candidates per query, so the exclusion filter keeps top_k
    faiss_rerank: int = 0  # faiss backend: candidates re-scored exactly per query; 0 = top_k + 16 (raise for PQ/SQ)

    # --- scale-out -----------------------------------------------------------------------------
    mesh: Any = None  # devices on the data axis: None = all local devices, or an int
    faiss_shards: int = 1  # faiss backend: index split into N IndexShards parts (one per GPU with faiss-gpu)

    def validate(self) -> "Config":
        """Reject out-of-range values before any compute; the message names the key."""
        ck = _Checker(self)
        ck.choice("data_format", ("auto", "atomic", "lines"))
        for key in ("min_user_inter_num", "min_item_inter_num"):
            ck.require(key, self._int(key) >= 0, "an integer >= 0")
        for key in ("user_inter_num_interval", "item_inter_num_interval", "rm_dup_inter"):
            if getattr(self, key) is None:  # RecBole's YAML writes "not set" as ~
                setattr(self, key, "")
            ck.require(key, isinstance(getattr(self, key), str), "a string")
        for key in ("user_inter_num_interval", "item_inter_num_interval"):
            try:
                parse_intervals(getattr(self, key), key)
            except DataError as e:
                raise ConfigError(f"config key {key!r}: {e}") from None
        ck.choice("rm_dup_inter", DUPLICATE_RULES)
        for key in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD"):
            ck.require(key, isinstance(getattr(self, key), str) and getattr(self, key).strip() != "", "a column name")
        ck.require(
            "TIME_FIELD",
            len({self.USER_ID_FIELD, self.ITEM_ID_FIELD, self.TIME_FIELD}) == 3,
            "a column other than USER_ID_FIELD and ITEM_ID_FIELD",
        )
        for key in (
            "MAX_ITEM_LIST_LENGTH",
            "hidden_size",
            "n_layers",
            "n_heads",
            "inner_size",
            "epochs",
            "train_batch_size",
            "eval_step",
            "eval_batch_size",
            "top_k",
            "retriever_inner_size",
            "retriever_update_interval",
            "nprobe",
            "retrieval_chunk_size",
            "faiss_shards",
            "retriever_pool",
            "knn_value_window",
        ):
            ck.require(key, self._int(key) >= 1, "an integer >= 1")
        ck.require("pretrain_epochs", self._int("pretrain_epochs") >= 0, "an integer >= 0")
        ck.require("pretrain_holdout_last", self._int("pretrain_holdout_last") >= 0, "an integer >= 0")
        ck.require("item_chunk_size", self._int("item_chunk_size") >= 0, "an integer >= 0 (0 = whole catalogue)")
        ck.require("retriever_layers", self._int("retriever_layers") >= 0, "an integer >= 0 (0 = no retriever)")
        ck.require("faiss_overfetch", self._int("faiss_overfetch") >= 0, "an integer >= 0")
        ck.require("faiss_rerank", self._int("faiss_rerank") >= 0, "an integer >= 0 (0 = top_k + 16)")
        ck.require("stopping_step", self._int("stopping_step") >= 1, "an integer >= 1")
        ck.require("epochs", self.epochs <= 1000, "at most 1000")
        ck.require("n_heads", self.hidden_size % self.n_heads == 0, f"a divisor of hidden_size={self.hidden_size}")
        for key in ("hidden_dropout_prob", "attn_dropout_prob"):
            ck.require(key, 0.0 <= self._float(key) < 1.0, "a number in [0, 1)")
        for key in ("learning_rate", "tau", "retriever_temperature", "initializer_range", "usefulness_temperature"):
            ck.require(key, self._float(key) > 0.0, "a number > 0")
        for key in ("weight_decay", "lmd_sem", "enhanced_rec_weight", "kl_small_weight", "retriever_loss_weight"):
            ck.require(key, self._float(key) >= 0.0, "a number >= 0")
        ck.require("alpha", 0.0 <= self._float("alpha") <= 1.0, "a number in [0, 1]")
        ck.require("quality_threshold", -1.0 <= self._float("quality_threshold") <= 1.0, "a cosine in [-1, 1]")
        ck.require("knn_value_decay", 0.0 < self._float("knn_value_decay") <= 1.0, "a number in (0, 1]")
        ck.choice("model", MODELS)
        ck.choice("retrieval_backend", BACKENDS)
        ck.choice("fusion", ("representation", "knn_lm"))
        ck.choice("retriever_objective", ("design", "contrastive", "usefulness", "knn_likelihood"))
        ck.require(
            "retriever_objective",
            self.retriever_objective != "knn_likelihood" or self.fusion == "knn_lm",
            "knn_likelihood only with fusion knn_lm (it scores the pool's kNN-LM vote)",
        )
        ck.choice("retriever_queries", ("train", "valid", "held_out"))
        holdout = self._float("retriever_valid_holdout")
        ck.require("retriever_valid_holdout", 0.0 < holdout < 1.0, "a share in (0, 1)")
        ck.choice("knowledge_base_dtype", ("float32", "float16"))
        if self.fusion == "knn_lm" or self.learnable_alpha is True:
            ck.require(
                "alpha", 0.0 < self._float("alpha") < 1.0, "a number in (0, 1) with fusion knn_lm or learnable_alpha"
            )
        ck.require(
            "faiss_index",
            isinstance(self.faiss_index, str) and self.faiss_index.strip() != "",
            "a FAISS index factory string such as 'Flat'",
        )
        self.topk = tuple(self._int_list("topk"))
        name, _, k = str(self.valid_metric).lower().partition("@")
        ck.require(
            "valid_metric",
            name in METRICS and k.isdigit() and int(k) in self.topk,
            f"<metric>@K with metric in {METRICS} and K in topk={list(self.topk)}",
        )
        self.valid_metric = f"{name}@{k}"
        if self.mesh is not None:
            ck.require(
                "mesh",
                isinstance(self.mesh, int) and not isinstance(self.mesh, bool) and self.mesh >= 1,
                "null (all local devices) or an integer >= 1",
            )
        for key in (
            "normalize_time",
            "mask_history",
            "show_progress",
            "extend_memory_with_valid",
            "cache_seq_output",
            "learnable_alpha",
            "learnable_temperature",
            "exclude_same_user",
            "freeze_retriever",
            "value_rerank",
        ):
            ck.require(key, isinstance(getattr(self, key), bool), "true or false")
        return self

    def _int(self, key):
        value = getattr(self, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return value

    def _float(self, key):
        value = getattr(self, key)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; users mean the number
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
        setattr(self, key, float(value))
        return float(value)

    def _int_list(self, key):
        value = getattr(self, key)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (
            not isinstance(value, (list, tuple))
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            raise ConfigError(f"config key {key!r}: expected a list of integers >= 1, got {value!r}")
        return sorted(set(value))

    # --- views -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["topk"] = list(self.topk)
        return out

    def dataset_settings(self) -> dict:
        """What defines the dataset a model was trained on (stored with every checkpoint)."""
        return {k: getattr(self, k) for k in DATASET_KEYS}

    def dataset_kwargs(self) -> dict:
        """load_dataset's keyword arguments for this config's data settings (the path aside)."""
        return {
            "fmt": self.data_format,
            "min_user_inter_num": self.min_user_inter_num,
            "min_item_inter_num": self.min_item_inter_num,
            "max_seq_length": self.MAX_ITEM_LIST_LENGTH,
            "normalize_time": self.normalize_time,
            "user_inter_num_interval": self.user_inter_num_interval,
            "item_inter_num_interval": self.item_inter_num_interval,
            "rm_dup_inter": self.rm_dup_inter,
            "fields": (self.USER_ID_FIELD, self.ITEM_ID_FIELD, self.TIME_FIELD),
        }

    def encoder_config(self, n_items: int):
        # deferred: the models import jax and flax, and reading or checking a config needs neither
        from ftragrec_jax.models.encoder import EncoderConfig

        return EncoderConfig(
            n_items=n_items,
            max_seq_length=self.MAX_ITEM_LIST_LENGTH,
            hidden_size=self.hidden_size,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            initializer_range=self.initializer_range,
        )


DATASET_KEYS = (
    "data",
    "data_format",
    "min_user_inter_num",
    "min_item_inter_num",
    "user_inter_num_interval",
    "item_inter_num_interval",
    "rm_dup_inter",
    "normalize_time",
    "USER_ID_FIELD",
    "ITEM_ID_FIELD",
    "TIME_FIELD",
    "MAX_ITEM_LIST_LENGTH",
)
FIELDS = {f.name: f for f in dataclasses.fields(Config)}


class _Checker:
    def __init__(self, cfg):
        self.cfg = cfg

    def require(self, key, ok, expected):
        if not ok:
            raise ConfigError(f"config key {key!r}: expected {expected}, got {getattr(self.cfg, key)!r}")

    def choice(self, key, options):
        self.require(key, getattr(self.cfg, key) in options, f"one of {list(options)}")


def unknown_key_error(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(FIELDS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see docs/config.md for every key"
    return ConfigError(f"{where}: unknown config key {key!r}{hint}")


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (`lr=1e-3`, `topk=[5,10]`, `pretrained=runs/x`)."""
    key, sep, raw = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key=value")
    if key not in FIELDS:
        raise unknown_key_error(key, f"override {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({str(e).splitlines()[0]})") from None
    if FIELDS[key].type in ("str",) and value is not None and not isinstance(value, str):
        value = raw.strip()  # a path like 2020 or a factory string stays a string
    return key, value


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        detail = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise ConfigError(f"{path}:{line} invalid YAML ({detail})") from None
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(obj).__name__}")
    return obj


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | tuple = (), base: dict | None = None
) -> Config:
    """Defaults <- `base` (e.g. a checkpoint's stored settings) <- YAML file <- overrides, then validate."""
    values: dict[str, Any] = {}
    for source, mapping in (("stored config", base or {}), (str(path), _read_yaml(Path(path)) if path else {})):
        for key, value in mapping.items():
            if key not in FIELDS:
                raise unknown_key_error(str(key), source)
            values[key] = value
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    try:
        cfg = Config(**values)
    except TypeError as e:  # defensive: FIELDS already filtered unknown keys
        raise ConfigError(str(e)) from None
    return cfg.validate()


def split_cli_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Accept RecBole's `--key=value` beside `--set key=value`: returns (remaining argv, overrides)."""
    rest, overrides = [], []
    for arg in argv:
        if arg.startswith("--") and "=" in arg and arg[2:].split("=", 1)[0] in FIELDS:
            overrides.append(arg[2:])
        else:
            rest.append(arg)
    return rest, overrides
