"""`python -m experiments.tune`: inference settings chosen on the validation users g was not fitted on."""

import dataclasses
import json

import numpy as np
import pytest

from tests.test_train import TINY, data_file, ft_args, full_run, train  # noqa: F401  (module fixtures reused here)

GRID = {"retriever_temperature": [0.05, 0.5, 3.0], "alpha": [0.2, 0.6]}


@pytest.fixture(scope="module")
def valid_fitted(full_run, data_file, tmp_path_factory):  # noqa: F811
    """A tiny FTragrec whose g was fitted on validation queries outside a 0.4 held-out share."""
    out = tmp_path_factory.mktemp("tune") / "run"
    extra = ["--epochs=1", "--retriever_queries=valid", "--retriever_valid_holdout=0.4"]
    assert train(data_file, out, *ft_args(full_run), *extra) == 0
    return out / "best_model"


def _reference_valid(checkpoint, data_file, point, holdout):  # noqa: F811
    """The point evaluated the plain way: its own scorer, knowledge base encoded again, held-out users."""
    from ftragrec_jax.data.batches import valid_query_split
    from ftragrec_jax.evaluation import evaluate_split
    from ftragrec_jax.scoring import load_model_dir

    m = load_model_dir(checkpoint, str(data_file), [f"{k}={v}" for k, v in point.items()], show_progress=False)
    _, held = valid_query_split(len(m.dataset.valid), holdout)
    users = dataclasses.replace(m.dataset, valid=m.dataset.valid.take(held))
    return evaluate_split(m.scorer, users, "valid", m.cfg, mesh=m.mesh)


def test_tune_chooses_on_the_held_out_users_and_tests_only_the_choice(valid_fitted, data_file, tmp_path):  # noqa: F811
    from ftragrec_jax.errors import ConfigError
    from ftragrec_jax.evaluation import evaluate_model_dir
    from ftragrec_jax.model_dir import read_meta
    from ftragrec_jax.tuning import grid_points, save_tuned, tune

    ftr = read_meta(valid_fitted)["ftragrec"]
    assert ftr["retriever_queries"] == "valid" and ftr["retriever_valid_holdout"] == 0.4  # recorded by training
    result = tune(valid_fitted, GRID, metric="ndcg@10", data=str(data_file), test=True, show_progress=False)
    points = grid_points(GRID)
    assert [p["settings"] for p in result.points] == points  # the product, last key fastest
    assert points[:2] == [{"retriever_temperature": 0.05, "alpha": 0.2}, {"retriever_temperature": 0.05, "alpha": 0.6}]
    assert "held-out 0.4 share" in result.users
    for i in (0, 3, 5):  # the shared knowledge base gives what a scorer of its own gives
        assert result.points[i]["valid"] == _reference_valid(valid_fitted, data_file, points[i], 0.4)
    scores = [p["valid"]["ndcg@10"] for p in result.points]
    assert len(set(scores)) > 1, "the grid should change the validation metric on this data"
    assert result.best == int(np.argmax(scores))  # the first of the largest
    assert (
        result.test
        == evaluate_model_dir(
            valid_fitted, str(data_file), [f"{k}={v}" for k, v in result.settings.items()], show_progress=False
        )["test"]
    )

    with pytest.raises(ConfigError, match="share of 0.4"):  # users g was fitted on cannot choose
        tune(valid_fitted, GRID, data=str(data_file), valid_holdout=0.6, show_progress=False)
    with pytest.raises(ConfigError, match="both fixed with --set and varied"):
        tune(valid_fitted, GRID, data=str(data_file), overrides=["alpha=0.3"], show_progress=False)

    saved = save_tuned(valid_fitted, tmp_path / "tuned", result)
    meta = read_meta(saved)
    assert {k: meta["ftragrec"][k] for k in GRID} == result.settings
    assert meta["source"]["tuned"]["settings"] == result.settings and meta["source"]["tuned"]["metric"] == "ndcg@10"
    assert evaluate_model_dir(saved, str(data_file), show_progress=False)["test"] == result.test
    with pytest.raises(ConfigError, match="exists"):
        save_tuned(valid_fitted, saved, result)


def test_tune_cli_writes_every_point_and_refuses_what_cannot_be_tuned(full_run, data_file, tmp_path, capsys):  # noqa: F811
    from experiments.tune import main

    out = tmp_path / "run"
    assert train(data_file, out, *ft_args(full_run), "--epochs=1", "--learnable_alpha=true") == 0
    model = str(out / "best_model")
    base = ["--checkpoint", model, "--data", str(data_file), "--no-progress"]
    js = tmp_path / "tune.json"
    assert main([*base, "--grid", "retriever_temperature=0.05,0.5", "--valid-holdout", "0.5", "--json", str(js)]) == 0
    got = json.loads(js.read_text())
    assert [p["settings"] for p in got["points"]] == [{"retriever_temperature": 0.05}, {"retriever_temperature": 0.5}]
    assert got["metric"] == "mrr@10" and "test" not in got  # the default valid_metric; test only when asked
    assert got["best"] in [p["settings"] for p in got["points"]]
    printed = capsys.readouterr().out
    assert "| retriever_temperature |" in printed and "chosen on mrr@10" in printed

    at7 = tmp_path / "tune7.json"  # the metric is checked against the topk in force, not the default one
    assert main([*base, "--grid", "top_k=2,3", "--set", "topk=[7]", "--metric", "ndcg@7", "--json", str(at7)]) == 0
    got7 = json.loads(at7.read_text())
    assert got7["metric"] == "ndcg@7" and set(got7["points"][0]["valid"]) >= {"ndcg@7", "hit@7"}
    capsys.readouterr()

    refusals = [
        (["--grid", "alpha=0.1,0.3"], "trained parameter"),  # learnable_alpha: alpha is g's, not a setting
        (["--grid", "hidden_size=8,16"], "cannot change without retraining"),
        (["--grid", "top_k=2,2"], "repeated"),
        (["--grid", "top_k=2", "--grid", "top_k=3"], "given twice"),
        (["--grid", "top_k=0,2"], "top_k"),  # a bad value, refused before anything is evaluated
        (["--grid", "top_k=2", "--metric", "ndcg@7"], "ndcg@7"),
        (["--grid", "top_k=2", "--save", str(out)], "exists"),
    ]
    for extra, message in refusals:
        with pytest.raises(SystemExit):
            main([*base, *extra])
        assert message in capsys.readouterr().err, extra
    with pytest.raises(SystemExit):  # the backbone is not an FTragrec model
        main(["--checkpoint", str(full_run / "best_model"), "--data", str(data_file), "--grid", "top_k=2"])
    assert "'duorec'" in capsys.readouterr().err


def test_a_knn_lm_model_trains_with_value_windows_and_tunes_over_them(full_run, data_file, tmp_path):  # noqa: F811
    """End to end: training with knn_value_window (the step's no-future rule), the window stored with the model,
    and tune varying it on the trained g; a representation-fusion model refuses a window, naming the key."""
    from ftragrec_jax.errors import CheckpointError
    from ftragrec_jax.model_dir import read_meta
    from ftragrec_jax.scoring import load_model_dir
    from ftragrec_jax.tuning import tune

    out = tmp_path / "knn"
    extra = ["--epochs=1", "--fusion=knn_lm", "--alpha=0.3", "--knn_value_window=2", "--quality_threshold=0.0"]
    assert train(data_file, out, *ft_args(full_run), *extra) == 0
    model = out / "best_model"
    assert read_meta(model)["ftragrec"]["knn_value_window"] == 2
    grid = {"knn_value_window": [1, 3], "knn_value_decay": [0.5, 1.0]}
    result = tune(model, grid, metric="ndcg@10", data=str(data_file), show_progress=False)
    valid = [p["valid"]["ndcg@10"] for p in result.points]
    assert valid[0] == valid[1]  # one-item windows: the decay has nothing to weigh
    assert len(set(valid[1:])) > 1, "windows and their decay should change the validation metric on this data"
    rep = tmp_path / "rep"
    assert train(data_file, rep, *ft_args(full_run), "--epochs=1") == 0
    with pytest.raises(CheckpointError, match="knn_value_window"):
        load_model_dir(rep / "best_model", str(data_file), ["knn_value_window=2"], show_progress=False)


def test_a_value_rerank_model_trains_saves_evaluates_and_tunes_its_pool(full_run, data_file, tmp_path):  # noqa: F811
    """End to end with g frozen: W trains from zero, the model directory evaluates to the run's own numbers,
    retriever_pool is an inference setting (tune varies it) and value_rerank itself cannot be overridden."""
    from experiments.evaluate import main as evaluate_main
    from ftragrec_jax.errors import ConfigError
    from ftragrec_jax.model_dir import load_model, read_meta
    from ftragrec_jax.scoring import load_model_dir
    from ftragrec_jax.tuning import tune

    out = tmp_path / "vr"
    extra = [
        "--epochs=2",
        "--fusion=knn_lm",
        "--alpha=0.3",
        "--quality_threshold=0.0",
        "--value_rerank=true",
        "--freeze_retriever=true",
        "--retriever_objective=knn_likelihood",
        "--retriever_pool=12",
        "--learning_rate=0.05",
    ]
    assert train(data_file, out, *ft_args(full_run), *extra) == 0
    model = out / "best_model"
    meta = read_meta(model)["ftragrec"]
    assert meta["value_rerank"] is True and meta["retriever_pool"] == 12
    _, params, _ = load_model(model)
    assert np.abs(np.asarray(params["reranker"]["kernel"])).max() > 0
    got = tmp_path / "eval.json"
    argv = ["--checkpoint", str(model), "--data", str(data_file), "--json", str(got), "--no-progress"]
    assert evaluate_main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert json.loads(got.read_text())["test"] == res["test"]
    result = tune(model, {"retriever_pool": [5, 12]}, metric="ndcg@10", data=str(data_file), show_progress=False)
    assert len(result.points) == 2
    with pytest.raises(ConfigError, match="value_rerank"):
        load_model_dir(model, str(data_file), ["value_rerank=false"], show_progress=False)
