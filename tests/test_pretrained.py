"""The models shipped in the package (ftragrec_jax/pretrained/NAME, loaded as `builtin:NAME`): each loads,
its parameters match the checksum recorded when it was shipped, and it still gives the validation metrics
recorded in its PROVENANCE.json on the same users."""

import json
from pathlib import Path

import pytest

from experiments.ship_pretrained import slice_metrics
from ftragrec_jax import model_dir
from ftragrec_jax.errors import CheckpointError
from tests.conftest import SHARED


@pytest.mark.parametrize("name", model_dir.builtin_names())
def test_shipped_model_loads_matches_its_checksum_and_recorded_metrics(name):
    folder = model_dir.resolve(f"builtin:{name}")
    provenance = json.loads((folder / "PROVENANCE.json").read_text())
    meta, params, vocab = model_dir.load_model(f"builtin:{name}")  # verifies params_sha256 itself
    assert meta["params_sha256"] == provenance["params_sha256"]
    assert model_dir.params_digest(params) == provenance["params_sha256"]
    assert vocab is not None and vocab.n_items == meta["encoder"]["n_items"]
    recorded = provenance["slice"]
    got = slice_metrics(f"builtin:{name}", recorded["first_samples"], data=_data_file(provenance))
    assert got["first_samples"] == recorded["first_samples"]
    for key in ("mrr@10", "ndcg@10", "hit@10"):
        assert got[key] == pytest.approx(recorded[key], abs=1e-6), key
    assert provenance["command"].startswith("python -m experiments.train")


def _data_file(provenance) -> str | None:
    """The shipped model's dataset file: None for the data embedded in the package (data ""), else the stored
    ../shared/... path resolved against the real-data folder beside the checkout (skipped when absent), so the
    test does not depend on the directory pytest runs from."""
    stored = provenance["dataset"]["data"]
    if not stored:
        return None
    prefix = "../shared/"
    assert stored.startswith(prefix), f"a shipped model's data must be embedded or under {prefix}: {stored!r}"
    path = SHARED / stored[len(prefix) :]
    if not path.is_file():
        pytest.skip(f"real data file {path} not present")
    return str(path)


def test_slice_metrics_are_the_evaluators(tmp_path):
    """slice_metrics (what the shipped models record) computes the evaluator's metrics, unrounded: on a small
    trained model they round to evaluate_split's figures on the same users (an off-by-one rank would not)."""
    import dataclasses

    import numpy as np

    from ftragrec_jax.evaluation import evaluate_split
    from ftragrec_jax.scoring import load_model_dir
    from tests.test_train import train, write_lines_dataset

    data = write_lines_dataset(tmp_path / "tiny.txt")
    assert train(data, tmp_path / "run", "--epochs=2") == 0
    path = tmp_path / "run" / "best_model"
    got = slice_metrics(path, 40)
    m = load_model_dir(path, show_progress=False)
    sliced = dataclasses.replace(m.dataset, valid=m.dataset.valid.take(np.arange(min(40, len(m.dataset.valid)))))
    want = evaluate_split(m.scorer, sliced, "valid", m.cfg, mesh=m.mesh)
    assert got["first_samples"] == len(sliced.valid)
    for key in ("mrr@10", "ndcg@10", "hit@10"):
        assert round(got[key], 4) == pytest.approx(want[key], abs=1e-12), key
    assert got["hit@10"] > 0  # the check means something only if some targets rank in the top 10


def test_the_beauty_backbone_is_shipped():
    """The default run fine-tunes on builtin:beauty: it ships, trained on the embedded Beauty data (data ""),
    and its recorded test figures are within 2% of the published DuoRec's (HR@10 0.0845, NDCG@10 0.0443)."""
    assert "beauty" in model_dir.builtin_names()
    folder = model_dir.resolve("builtin:beauty")
    provenance = json.loads((folder / "PROVENANCE.json").read_text())
    assert provenance["dataset"]["data"] == "" and provenance["dataset"]["MAX_ITEM_LIST_LENGTH"] == 50
    assert provenance["test"]["hit@10"] >= round(0.98 * 0.0845, 4)
    assert provenance["test"]["ndcg@10"] >= round(0.98 * 0.0443, 4)


def test_the_sports_backbone_is_shipped():
    """builtin:sports is the DuoRec trained on ../shared's Sports_and_Outdoors by sports_duorec.yaml, seed 2020,
    so the retriever experiments on Sports start from a fixed, converged backbone (its figures: the results
    files, 5-7% under the published DuoRec's HR@10 0.0498 / NDCG@10 0.0262 as every run of ours on this file)."""
    assert "sports" in model_dir.builtin_names()
    provenance = json.loads((model_dir.resolve("builtin:sports") / "PROVENANCE.json").read_text())
    assert Path(provenance["dataset"]["data"]).name == "Sports_and_Outdoors.txt"
    assert provenance["dataset"]["MAX_ITEM_LIST_LENGTH"] == 50 and provenance["seed"] == 2020
    assert provenance["stopped"].startswith("early stopping")
    assert provenance["test"]["hit@10"] >= 0.0471 and provenance["test"]["ndcg@10"] >= 0.0244


def test_unknown_builtin_names_list_what_ships(tmp_path, monkeypatch):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "model.json").write_text("{}")
    (tmp_path / "half").mkdir()  # no model.json: not a shipped model
    monkeypatch.setattr(model_dir, "builtin_root", lambda: tmp_path)
    assert model_dir.builtin_names() == ["one"]
    assert model_dir.resolve("builtin:one") == tmp_path / "one"
    assert model_dir.resolve("runs/x/best_model").as_posix() == "runs/x/best_model"
    for bad in ("builtin:two", "builtin:half", "builtin:", "builtin:../one"):
        with pytest.raises(CheckpointError, match=r"no built-in model .*; the package ships builtin:one"):
            model_dir.resolve(bad)
