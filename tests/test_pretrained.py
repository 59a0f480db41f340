"""The models shipped in the package (ftragrec_jax/pretrained/NAME, loaded as `builtin:NAME`): each loads,
its parameters match the checksum recorded when it was shipped, and it still gives the validation metrics
recorded in its PROVENANCE.json on the same users."""

import json

import pytest

from experiments.ship_pretrained import slice_metrics
from ftragrec_jax import model_dir
from ftragrec_jax.errors import CheckpointError


@pytest.mark.parametrize("name", model_dir.builtin_names())
def test_shipped_model_loads_matches_its_checksum_and_recorded_metrics(name):
    folder = model_dir.resolve(f"builtin:{name}")
    provenance = json.loads((folder / "PROVENANCE.json").read_text())
    meta, params, vocab = model_dir.load_model(f"builtin:{name}")  # verifies params_sha256 itself
    assert meta["params_sha256"] == provenance["params_sha256"]
    assert model_dir.params_digest(params) == provenance["params_sha256"]
    assert vocab is not None and vocab.n_items == meta["encoder"]["n_items"]
    recorded = provenance["slice"]
    got = slice_metrics(f"builtin:{name}", recorded["first_samples"])
    assert got["first_samples"] == recorded["first_samples"]
    for key in ("mrr@10", "ndcg@10", "hit@10"):
        assert got[key] == pytest.approx(recorded[key], abs=1e-6), key
    assert provenance["command"].startswith("python -m experiments.train")


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
