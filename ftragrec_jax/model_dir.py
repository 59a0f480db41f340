"""The model directory: DIR/model.json + DIR/params/ (Orbax) + optional DIR/vocab.json
+ optional DIR/knowledge_base.npz (FTragrec: the base's frozen encodings, so the model recommends without
its training data).

A model directory is written whole into a temporary sibling and swapped into place (an atomic
exchange on Linux), so a reader sees either the previous complete model or the new complete one,
never a mix; a save killed halfway leaves only a hidden temp sibling, removed by the next save.
Parameters are saved as host numpy arrays: no device or sharding is recorded, so a model written
on a CPU restores on a GPU machine and back. model.json records the size and SHA-256 of every parameter
file (checked before they are opened) and a SHA-256 of the parameters (checked after they are read), so files
damaged after the save are refused rather than read as other numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ftragrec_jax.atomic import (
    check_manifest_format,
    files_manifest,
    fsync_dir,
    manifest_mismatch,
    remove_stale_siblings,
    replace_dir,
    sha256_arrays,
    write_json_atomic,
)
from ftragrec_jax.data.vocab import Vocab
from ftragrec_jax.errors import CheckpointError, ConfigError, FtragrecError, short_reason
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder
from ftragrec_jax.trees import assign_params, flatten

FORMAT = "ftragrec-jax/model/v1"
MODEL_JSON = "model.json"
PARAMS_DIR = "params"
VOCAB_JSON = "vocab.json"
KNOWLEDGE_BASE = "knowledge_base.npz"
# h float32 [N, H] (frozen encoder output), target/user/prefix_len int32 [N]; keys are recomputed with g.
KB_FIELDS = {"h": np.float32, "target": np.int32, "user": np.int32, "prefix_len": np.int32}
# Model kinds: an encoder alone (DuoRec as trained here; "sasrec" / "cl4srec" only from converted RecBole
# checkpoints: the same encoder, trained with other objectives) or FTragrec (encoder + retriever + base).
ENCODER_MODELS = ("duorec", "sasrec", "cl4srec")
MODELS = (*ENCODER_MODELS, "ftragrec")
# model.json key: SHA-256 of the parameters. TensorStore notices missing or truncated files, but a bit flip
# inside array data reads back as a different number; the digest catches that.
DIGEST_KEY = "params_sha256"
# model.json key: size and SHA-256 of every file under params/, checked before Orbax opens them, so a damaged
# file is refused by name instead of being half-read (Orbax's reader threads then also print tracebacks at exit).
FILES_KEY = "params_files"


BUILTIN = "builtin:"  # `builtin:NAME` names a model directory shipped in the package (ftragrec_jax/pretrained/NAME)


def builtin_root() -> Path:

    return Path(str(resources.files("ftragrec_jax") / "pretrained"))


def builtin_names() -> list[str]:
    root = builtin_root()
    return sorted(d.name for d in root.iterdir() if (d / MODEL_JSON).is_file()) if root.is_dir() else []


def resolve(path) -> Path:
    """The directory a model path names: a folder, or `builtin:NAME` for a model shipped in the package."""
    text = str(path)
    if not text.startswith(BUILTIN):
        return Path(path)
    name = text[len(BUILTIN) :]
    found = builtin_root() / name
    if not name or "/" in name or "\\" in name or not (found / MODEL_JSON).is_file():
        raise CheckpointError(
            f"{text}: no built-in model {name!r}; the package ships "
            f"{', '.join(BUILTIN + n for n in builtin_names()) or 'none'}"
        )
    return found


def params_digest(tree) -> str:
    """sha256_arrays over every leaf labelled with its dotted path, in sorted path order (so int list indices
    and Orbax's string keys give the same digest)."""
    return sha256_arrays((".".join(key) + ":", leaf) for key, leaf in sorted(flatten(tree).items()))


def _numpy_tree(params) -> Any:
    def leaf(x):
        try:
            return np.asarray(x)
        except Exception as e:
            raise CheckpointError(f"params: leaf of type {type(x).__name__} is not an array ({e})") from None

    tree = jax.tree_util.tree_map(leaf, params)
    if not jax.tree_util.tree_leaves(tree):
        raise CheckpointError("params: the parameter tree is empty")
    return tree


def _checked_meta(meta: dict) -> dict:
    if not isinstance(meta, dict):
        raise CheckpointError(f"model meta: expected a dict, got {type(meta).__name__}")
    out = {"format": FORMAT, "model": None, "encoder": None, "ftragrec": None, "dataset": None, "source": None}
    out.update(meta)
    out["format"] = FORMAT
    if out.get("model") not in MODELS:
        raise CheckpointError(f"model meta: 'model' must be one of {MODELS}, got {out.get('model')!r}")
    if not isinstance(out.get("encoder"), dict):
        raise CheckpointError("model meta: 'encoder' must be a dict of EncoderConfig fields")
    try:
        json.dumps(out)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"model meta: not JSON-serialisable ({e})") from None
    return out


def _orbax():
    import orbax.checkpoint as ocp  # imported lazily: it is slow to import and only needed here

    return ocp


def _checkpointer():
    """Orbax for a model directory, which one process writes or reads on its own: by default Orbax would wait
    at a barrier for every process of a multi-host run, and the trainer writes model directories from
    process 0 only (training checkpoints are the collective ones, in train/checkpoints.py)."""

    ocp = _orbax()
    me = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    )


def _save_params(path: Path, tree) -> None:
    ckptr = _checkpointer()
    try:
        ckptr.save(path, tree)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()


def _is_model_dir(path: Path) -> bool:
    return (path / MODEL_JSON).is_file() or (path / PARAMS_DIR).is_dir()


def save_model(path, params, meta: dict, vocab: Vocab | None = None, knowledge_base: dict | None = None) -> Path:
    """Write a complete model directory at `path`, replacing an existing model directory atomically.

    `params` is a pure-dict tree (`nnx.to_pure_dict(nnx.state(model, nnx.Param))`); `meta` holds at
    least "model" and "encoder" (EncoderConfig fields). Refuses to replace a non-empty folder that
    is not a model directory, so a typo cannot delete someone's data. `knowledge_base` (FTragrec) holds the
    KB_FIELDS arrays of the base.
    """
    dest = Path(path).absolute()
    meta = _checked_meta(meta)
    tree = _numpy_tree(params)
    meta[DIGEST_KEY] = params_digest(tree)
    if dest.exists() and not dest.is_dir():
        raise CheckpointError(f"{dest}: exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not _is_model_dir(dest):
        raise CheckpointError(f"{dest}: refusing to replace a non-empty folder that is not a model directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(dest)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)
        _save_params(tmp / PARAMS_DIR, tree)
        meta[FILES_KEY] = files_manifest(tmp / PARAMS_DIR)
        if vocab is not None:
            vocab.save(tmp / VOCAB_JSON)
        if knowledge_base is not None:
            _save_knowledge_base(tmp / KNOWLEDGE_BASE, knowledge_base)
        write_json_atomic(tmp / MODEL_JSON, meta)  # last, so its presence means "complete"
        for name in (MODEL_JSON, VOCAB_JSON, KNOWLEDGE_BASE):
            if (tmp / name).exists():
                os.chmod(tmp / name, 0o644)  # mkstemp files are private; a model is meant to be shared
        fsync_dir(tmp)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _save_knowledge_base(path: Path, kb: dict) -> None:
    arrays = {}
    for name, dtype in KB_FIELDS.items():
        if name not in kb:
            raise CheckpointError(f"knowledge base: missing array {name!r}")
        arrays[name] = np.asarray(kb[name], dtype=dtype)
    n = len(arrays["h"])
    if arrays["h"].ndim != 2 or any(a.shape != (n,) for k, a in arrays.items() if k != "h"):
        raise CheckpointError("knowledge base: expected h [N, H] and target/user/prefix_len [N]")
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def load_knowledge_base(path) -> dict | None:
    """The stored knowledge-base arrays of a model directory, or None when it has none (read without pickle)."""
    path = resolve(path)
    src = Path(path) / KNOWLEDGE_BASE
    if not src.exists():
        return None
    try:
        with np.load(src, allow_pickle=False) as z:
            arrays = {name: np.asarray(z[name]) for name in KB_FIELDS}
    except KeyError as e:
        raise CheckpointError(f"{src}: missing array {e.args[0]!r}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{src}: unreadable knowledge base ({type(e).__name__}: {e})") from None
    n = len(arrays["h"])
    if arrays["h"].ndim != 2 or any(arrays[k].shape != (n,) for k in ("target", "user", "prefix_len")):
        raise CheckpointError(f"{src}: expected h [N, H] and target/user/prefix_len [N]")
    for name, dtype in KB_FIELDS.items():
        if arrays[name].dtype != dtype:
            raise CheckpointError(f"{src}: {name} has dtype {arrays[name].dtype}, expected {np.dtype(dtype)}")
    return arrays


def _int_keys(tree):
    """Orbax returns dict keys as strings; nnx list indices are ints, so restore those."""
    if isinstance(tree, dict):
        items = {k: _int_keys(v) for k, v in tree.items()}
        if items and all(isinstance(k, str) and k.isdigit() for k in items):
            return {int(k): v for k, v in items.items()}
        return items
    return np.asarray(tree)


def read_meta(path) -> dict:
    """model.json of a model directory, checked for format and required keys."""
    path = resolve(path)
    src = Path(path) / MODEL_JSON
    if not Path(path).is_dir():
        raise CheckpointError(f"{path}: model directory does not exist")
    try:
        with open(src, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{src}: missing: {path} is not a complete model directory") from None
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or bad UTF-8
        raise CheckpointError(f"{src}: unreadable model description ({type(e).__name__}: {short_reason(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{src}: expected format {FORMAT!r}")
    if meta.get("model") not in MODELS or not isinstance(meta.get("encoder"), dict):
        raise CheckpointError(f"{src}: needs 'model' in {MODELS} and an 'encoder' dict")
    for key in ("ftragrec", "dataset", "source"):  # read with .get(...) or {} by every consumer
        if not isinstance(meta.get(key), (dict, type(None))):
            raise CheckpointError(f"{src}: {key!r} must be an object or null, got {type(meta[key]).__name__}")
    if not isinstance(meta.get(DIGEST_KEY), (str, type(None))):
        raise CheckpointError(f"{src}: {DIGEST_KEY!r} must be a string")
    if meta.get(FILES_KEY) is not None:
        try:
            check_manifest_format(meta[FILES_KEY], f"{src}: {FILES_KEY!r}")
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    return meta


def load_model(path) -> tuple[dict, dict, Vocab | None]:
    """(meta, params as a pure dict of numpy arrays, vocab or None) from a model directory."""
    path = resolve(path)
    path = Path(path).absolute()
    meta = read_meta(path)
    params_dir = path / PARAMS_DIR
    if not params_dir.is_dir():
        raise CheckpointError(f"{params_dir}: missing: {path} is not a complete model directory")
    manifest = meta.get(FILES_KEY)  # absent in directories written before it existed
    problem = manifest_mismatch(params_dir, manifest) if manifest is not None else None
    if problem is not None:
        raise CheckpointError(
            f"{params_dir}: cannot restore parameters ({problem}): the files were damaged after the save"
        )
    ckptr = _checkpointer()
    try:
        tree = ckptr.restore(params_dir)
    except Exception as e:  # Orbax raises many types for a damaged checkpoint
        raise CheckpointError(
            f"{params_dir}: cannot restore parameters ({type(e).__name__}: {short_reason(e)})"
        ) from None
    finally:
        ckptr.close()
    params = _int_keys(tree)
    stored = meta.get(DIGEST_KEY)  # absent in directories written before it existed
    if stored is not None and stored != params_digest(params):
        raise CheckpointError(
            f"{params_dir}: the parameters read back differ from the ones saved (checksum "
            f"mismatch with {MODEL_JSON}): the files were damaged after the save"
        )
    vocab = None
    if (path / VOCAB_JSON).exists():
        try:
            vocab = Vocab.load(path / VOCAB_JSON)
        except FtragrecError as e:
            raise CheckpointError(str(e)) from None
    return meta, params, vocab


def encoder_from_model_dir(path):
    """(SequenceEncoder with the saved weights, meta, vocab|None) from a model directory.

    For an FTragrec model the encoder's weights are the `encoder` subtree of its parameters.
    """
    path = resolve(path)

    meta, params, vocab = load_model(path)
    try:
        cfg = EncoderConfig(**meta["encoder"])
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{Path(path) / MODEL_JSON}: bad 'encoder' settings ({e})") from None
    if meta["model"] == "ftragrec":
        if "encoder" not in params:
            raise CheckpointError(f"{Path(path) / PARAMS_DIR}: FTragrec parameters have no 'encoder' subtree")
        params = params["encoder"]
    encoder = build_encoder(cfg, seed=0)
    assign_params(encoder, params, str(Path(path) / PARAMS_DIR))
    return encoder, meta, vocab


def check_vocab_compat(meta: dict, n_items: int, source: str = "model") -> None:
    """A model's item table must have exactly the dataset's item rows (padding included)."""
    have = (meta.get("encoder") or {}).get("n_items")
    if have != n_items:
        raise CheckpointError(
            f"{source}: checkpoint has {have} item rows but the dataset vocabulary has {n_items} "
            f"(padding included); the model was trained on a different item set"
        )
