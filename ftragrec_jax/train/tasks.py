"""Which task trains, and which scorer evaluates, each model kind (an encoder model or "ftragrec")."""

from __future__ import annotations

import jax
from flax import nnx

from ftragrec_jax.config import Config
from ftragrec_jax.errors import CheckpointError, ConfigError
from ftragrec_jax.model_dir import ENCODER_MODELS
from ftragrec_jax.train.task import Task
from ftragrec_jax.trees import dotted, key_names


def dataset_from_config(cfg: Config):
    """The dataset a config names ("" = the embedded Amazon Beauty file)."""
    from ftragrec_jax.data.dataset import default_dataset_path, load_dataset

    return load_dataset(cfg.data or default_dataset_path(), **cfg.dataset_kwargs())


def make_task(cfg: Config, dataset) -> Task:
    """The task for cfg.model; every dataset-dependent check runs here, before any training step."""
    dataset.require_samples("train", "valid", "test")  # all three are used; an empty one would fail late
    if cfg.model == "duorec":
        from ftragrec_jax.train.duorec_task import DuoRecTask

        return DuoRecTask(cfg, dataset)
    if cfg.model == "ftragrec":
        from ftragrec_jax.train.ftragrec_task import FTragrecTask

        return FTragrecTask(cfg, dataset)
    raise ConfigError(f"config key 'model': unknown model {cfg.model!r}")


def finite_params(tree) -> list[str]:
    """Dotted paths of parameter leaves holding NaN or Inf (empty when all are finite)."""
    import numpy as np

    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            bad.append(dotted(key_names(path)))
    return bad


def scorer_from_model_dir(path, meta: dict, params: dict, dataset, cfg: Config, mesh=None, inference=None):
    """(score_fn, before_test) for a loaded model directory (JAX-trained or converted from PyTorch);
    before_test() runs once between the valid and test evaluations (FTragrec: extend the memory).
    Parameters are replicated over `mesh` (None = config key `mesh`), whose data axis shards the batches.
    inference: FTragrec settings that replace the stored ones (`ftragrec_task.INFERENCE_KEYS`, e.g. alpha)."""
    from ftragrec_jax import parallel
    from ftragrec_jax.train.ftragrec_task import check_inference_overrides

    check_inference_overrides(inference or {}, meta, str(path))
    mesh = parallel.make_mesh(cfg.mesh) if mesh is None else mesh
    bad = finite_params(params)
    if bad:
        raise CheckpointError(f"{path}: parameters hold NaN/Inf in {', '.join(bad[:5])}; refusing to evaluate")
    if meta["model"] in ENCODER_MODELS:
        from ftragrec_jax.models.encoder import EncoderConfig

        try:
            enc_cfg = EncoderConfig(**meta["encoder"])
        except (TypeError, ConfigError) as e:
            raise CheckpointError(f"{path}/model.json: bad 'encoder' settings ({e})") from None
        score = encoder_scorer(enc_cfg, params, f"{path}/params", mesh=mesh)
        return (lambda item_seq, item_seq_len, batch: score(item_seq, item_seq_len)), (lambda: None)
    from ftragrec_jax.train.ftragrec_task import scorer_from_params

    return scorer_from_params(path, meta, params, dataset, cfg, mesh, inference)


def encoder_scorer(enc_cfg, params, source: str, mesh=None):
    """Jitted `(item_seq, item_seq_len) -> full-sort scores` of a DuoRec encoder filled from `params`
    (replicated over `mesh` when given, for batches sharded along its data axis)."""
    from ftragrec_jax.model_dir import assign_params
    from ftragrec_jax.models.bucketing import encode_bucketed
    from ftragrec_jax.models.encoder import build_encoder

    encoder = build_encoder(enc_cfg, seed=0)
    assign_params(encoder, params, source)
    graphdef, state = nnx.split(encoder)
    if mesh is not None:
        from ftragrec_jax import parallel

        state = parallel.replicate(state, mesh)

    @jax.jit
    def scores(state, item_seq, item_seq_len):
        enc = nnx.merge(graphdef, state)
        # length-bucketed: the same outputs; eval prefixes are short, so ~5x less encoder work on Beauty
        return enc.scores(encode_bucketed(enc, item_seq, item_seq_len, mesh=mesh))

    return lambda item_seq, item_seq_len: scores(state, item_seq, item_seq_len)
