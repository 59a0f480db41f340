"""Numerical faults: a NaN gradient under a finite loss, a diverging run, and model directories holding NaN/Inf.
The NaN-loss-term case is
tests/test_train.py::test_nan_loss_stops_with_message_and_keeps_checkpoint."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_train import TINY, metrics_lines, train, write_lines_dataset


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_lines_dataset(tmp_path_factory.mktemp("data") / "tiny.txt")


@pytest.fixture(scope="module")
def one_epoch(data_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    assert train(data_file, out, "--epochs=1") == 0
    return out


def committed(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def flat_params(model_dir: Path) -> dict:
    from ftragrec_jax.model_dir import load_model
    from ftragrec_jax.trees import flatten

    return flatten(load_model(model_dir)[1])


def test_nan_gradient_under_finite_loss_stops_and_keeps_the_checkpoint(one_epoch, data_file, tmp_path, monkeypatch):
    from experiments.train import run as run_cli
    from ftragrec_jax.config import load_config
    from ftragrec_jax.train import steps
    from ftragrec_jax.train.loop import NonFiniteError

    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    real = steps.duorec_loss

    def loss_with_nan_gradient(encoder, batch, key, **kw):
        total, terms = real(encoder, batch, key, **kw)
        s = jnp.sum(encoder.item_embedding.embedding[...])
        return total + 0.0 * jnp.sqrt(s - s), terms  # adds exactly 0; its gradient is 0 * inf = NaN

    monkeypatch.setattr(steps, "duorec_loss", loss_with_nan_gradient)  # the name the DuoRec step calls
    cfg = load_config(None, [f"data={data_file}", f"output_dir={out}", *TINY, "epochs=3"])
    step = metrics_lines(one_epoch)[0]["step"]
    with pytest.raises(NonFiniteError, match=rf"the gradient norm is nan at epoch 1, step {step} \(batch 0 of"):
        run_cli(cfg)
    assert committed(out) == ["1"] and metrics_lines(out) == metrics_lines(one_epoch)
    for name in ("latest_model", "best_model"):  # nothing from the poisoned epoch was written
        got, ref = flat_params(out / name), flat_params(one_epoch / name)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])
    assert "the last good checkpoint" in (out / "train.log").read_text()

    # the kept checkpoint is usable: the fixed code continues from it
    monkeypatch.undo()
    assert train(data_file, out, "--epochs=2") == 0
    assert committed(out) == ["1", "2"] and [r["epoch"] for r in metrics_lines(out)] == [0, 1]


def test_diverging_run_stops_in_the_first_epoch_and_writes_no_model(data_file, tmp_path):
    from experiments.train import run as run_cli
    from ftragrec_jax.config import load_config
    from ftragrec_jax.train.loop import NonFiniteError

    out = tmp_path / "run"
    cfg = load_config(None, [f"data={data_file}", f"output_dir={out}", *TINY, "epochs=2", "learning_rate=1.0e+30"])
    with pytest.raises(NonFiniteError) as e:
        run_cli(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert "at epoch 0, step " in msg and "no checkpoint was written (it failed in the first epoch)" in msg
    assert ("loss term '" in msg) or ("the gradient norm" in msg)
    assert not (out / "checkpoints").exists() or committed(out) == []
    assert not (out / "latest_model").exists() and not (out / "best_model").exists()
    assert not (out / "results.json").exists()


@pytest.fixture(scope="module")
def ftragrec_dir(one_epoch, tmp_path_factory) -> Path:
    """An FTragrec model directory on the one-epoch DuoRec backbone (retriever freshly initialised)."""
    from flax import nnx

    from ftragrec_jax.model_dir import encoder_from_model_dir, save_model
    from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec

    encoder, meta, vocab = encoder_from_model_dir(one_epoch / "best_model")
    hp = FTragrecHParams(top_k=3, retriever_inner_size=16)
    params = nnx.to_pure_dict(jax.device_get(nnx.state(build_ftragrec(encoder, hp, seed=0), nnx.Param)))
    meta = {
        "model": "ftragrec",
        "encoder": dataclasses.asdict(encoder.config),
        "ftragrec": dataclasses.asdict(hp),
        "dataset": meta["dataset"],
        "source": None,
    }
    return save_model(tmp_path_factory.mktemp("ft") / "model", params, meta, vocab)


@pytest.mark.parametrize(
    "which,leaf,value",
    [
        ("duorec", ("layers", "0", "attention", "query", "kernel"), np.inf),
        ("duorec", ("layer_norm", "bias"), -np.inf),
        ("ftragrec", ("retriever", "layers", "0", "dense_1", "kernel"), np.nan),
        ("ftragrec", ("encoder", "item_embedding", "embedding"), np.inf),
    ],
)
def test_evaluate_and_recommend_refuse_non_finite_parameters(
    which, leaf, value, one_epoch, ftragrec_dir, data_file, tmp_path
):
    from ftragrec_jax import recommend
    from ftragrec_jax.errors import CheckpointError
    from ftragrec_jax.evaluation import evaluate_model_dir
    from ftragrec_jax.model_dir import load_model, save_model

    src = one_epoch / "best_model" if which == "duorec" else ftragrec_dir
    meta, params, vocab = load_model(src)
    node = params
    for k in leaf[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k if k in node else int(k)]
    node[leaf[-1]] = np.array(node[leaf[-1]], copy=True)
    node[leaf[-1]].flat[1] = value
    bad = save_model(tmp_path / "bad", params, meta, vocab)
    dotted = ".".join(leaf)
    with pytest.raises(CheckpointError, match=rf"parameters hold NaN/Inf in {dotted}; refusing to evaluate"):
        evaluate_model_dir(bad, data=str(data_file), show_progress=False)
    with pytest.raises(CheckpointError, match=rf"NaN/Inf in {dotted}; refusing to recommend"):
        recommend.load(bad, data=str(data_file))
    # the same directory with finite values evaluates
    res = evaluate_model_dir(src, data=str(data_file), show_progress=False)
    assert 0.0 <= res["test"]["ndcg@10"] <= 1.0
    json.dumps(res)
