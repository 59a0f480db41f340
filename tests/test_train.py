"""The trainer end to end on a tiny synthetic dataset: files, resume (in-process and after SIGKILL),
NaN stop, config errors, the evaluate CLI, determinism."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ftragrec_jax.errors import ConfigError
from tests.conftest import ROOT

TINY = [
    "hidden_size=8",
    "n_layers=1",
    "n_heads=2",
    "inner_size=16",
    "MAX_ITEM_LIST_LENGTH=8",
    "train_batch_size=8",
    "eval_batch_size=64",
    "min_user_inter_num=3",
    "min_item_inter_num=1",
    "show_progress=false",
    "learning_rate=0.01",
]
KS = (5, 10, 20, 50)
METRICS = ("recall", "mrr", "ndcg", "hit", "precision")


def write_lines_dataset(path: Path, n_users=60, n_items=30, seed=0) -> Path:
    """One line per user, `user item item ...`; items follow a noisy cycle so there is something to learn."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, n_users + 1):
        length = int(rng.integers(4, 14))
        start = int(rng.integers(1, n_items + 1))
        items = [(start + 2 * i + int(rng.random() < 0.2)) % n_items + 1 for i in range(length)]
        lines.append(" ".join(map(str, [u, *items])))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_lines_dataset(tmp_path_factory.mktemp("data") / "tiny.txt")


def cli_args(data_file, out, *extra) -> list[str]:
    """The CLI on the config defaults (not quickstart.yaml, which may change) plus the tiny settings."""
    empty = data_file.parent / "defaults.yaml"
    empty.write_text("# the Config defaults\n")
    return [
        "--config",
        str(empty),
        "--set",
        f"data={data_file}",
        "--set",
        f"output_dir={out}",
        *[f"--{x}" for x in TINY],
        *extra,
    ]


def train(data_file, out, *extra):
    from experiments.train import main

    return main(cli_args(data_file, out, *extra))


def metrics_lines(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # wall-clock times differ between runs by nature
        for k in [k for k in r if k.endswith("time_s")]:
            del r[k]
    return rows


def final_params(run: Path) -> dict:
    from ftragrec_jax.model_dir import load_model
    from ftragrec_jax.trees import flatten

    return flatten(load_model(run / "latest_model")[1])


def results_without_times(run: Path) -> dict:
    res = json.loads((run / "results.json").read_text())
    return {k: v for k, v in res.items() if not k.endswith("time_s") and k != "checkpoint"}


def assert_same_run(a: Path, b: Path):
    assert metrics_lines(a) == metrics_lines(b)
    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=".".join(k))
    ra, rb = results_without_times(a), results_without_times(b)
    ra["protocol"]["dataset"]["settings"].pop("data", None)
    rb["protocol"]["dataset"]["settings"].pop("data", None)
    assert ra == rb


@pytest.fixture(scope="module")
def full_run(data_file, tmp_path_factory) -> Path:
    """The uninterrupted reference: 3 epochs."""
    out = tmp_path_factory.mktemp("full") / "run"
    assert train(data_file, out, "--epochs=3") == 0
    return out


def test_run_writes_all_files(full_run, capsys):
    run = full_run
    for name in ("config.yaml", "metrics.jsonl", "results.json", "train.log"):
        assert (run / name).is_file(), name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["epochs"] == 3 and cfg["hidden_size"] == 8 and cfg["lmd_sem"] == 0.1
    rows = metrics_lines(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert {"loss", "ce", "sem_nce", "grad_norm", "step", "valid"} <= r.keys()
        assert set(r["valid"]) == {f"{m}@{k}" for m in METRICS for k in KS}
        assert np.isfinite(r["loss"]) and r["loss"] > 0
    res = json.loads((run / "results.json").read_text())
    for split in ("valid", "test"):
        assert set(res[split]) == {f"{m}@{k}" for m in METRICS for k in KS}
        assert all(0.0 <= v <= 1.0 for v in res[split].values())
    best = max(rows, key=lambda r: r["valid"]["mrr@10"])  # ties: the first epoch reaching it
    assert res["best_epoch"] == best["epoch"] and res["valid"] == best["valid"]
    assert res["protocol"]["mask_history"] is False and res["protocol"]["dataset"]["n_users"] > 0
    log = (run / "train.log").read_text().splitlines()
    for r in rows:  # one line per epoch: its loss terms, valid metrics and times (the same numbers as the file)
        lines = [line for line in log if f" epoch {r['epoch']} " in line]
        assert len(lines) == 1, lines
        assert f"loss {r['loss']:.4f} (ce {r['ce']:.4f}, sem_nce {r['sem_nce']:.4f})" in lines[0]
        assert f"valid mrr@10 {r['valid']['mrr@10']:.4f} ndcg@10 {r['valid']['ndcg@10']:.4f}" in lines[0]
        assert "train " in lines[0] and " eval " in lines[0]
    assert any(line.endswith(f"results: {run / 'results.json'}") for line in log)
    for d in ("best_model", "latest_model"):
        meta = json.loads((run / d / "model.json").read_text())
        assert meta["model"] == "duorec" and meta["encoder"]["hidden_size"] == 8
        assert (run / d / "vocab.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == "3"


def test_resume_after_stop_is_identical(full_run, data_file, tmp_path):
    out = tmp_path / "run"
    assert train(data_file, out, "--epochs=1") == 0
    assert len(metrics_lines(out)) == 1
    assert train(data_file, out, "--epochs=3") == 0  # same folder, more epochs: continues at epoch 1
    assert_same_run(full_run, out)
    assert "resuming from" in (out / "train.log").read_text()


def test_seed_changes_losses(full_run, data_file, tmp_path):
    # same seed -> same losses is test_resume_after_stop_is_identical (two processes' epoch 0 agree)
    b = tmp_path / "b"
    assert train(data_file, b, "--epochs=1", "--seed=7") == 0
    assert metrics_lines(b)[0]["loss"] != metrics_lines(full_run)[0]["loss"]


def kill_after_checkpoint_then_rerun(cmd, env, out, checkpoint: str):
    """SIGKILL the run once training checkpoint `checkpoint` exists (mid-run), then rerun the same command."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not (out / "checkpoints" / checkpoint).is_dir() and proc.poll() is None:
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "results.json").exists(), "the run finished before it was killed"
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_sigkill_mid_run_then_restart_is_identical(full_run, data_file, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.train", *cli_args(data_file, out), "--epochs=3"]
    # both processes share a compilation cache: the restart then skips most of the compile
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache")}
    kill_after_checkpoint_then_rerun(cmd, env, out, "1")
    assert_same_run(full_run, out)


def test_nan_loss_stops_with_message_and_keeps_checkpoint(full_run, data_file, tmp_path, monkeypatch):
    import jax
    import jax.numpy as jnp

    from experiments.train import run as run_cli
    from ftragrec_jax.config import load_config
    from ftragrec_jax.model_dir import load_model
    from ftragrec_jax.train import pipeline
    from ftragrec_jax.train.duorec_task import DuoRecTask
    from ftragrec_jax.train.loop import NonFiniteError

    out = tmp_path / "run"
    shutil.copytree(full_run, out)  # 3 good epochs, then a term turns NaN in epoch 3
    best_before = (out / "best_model" / "model.json").read_bytes()

    class Poisoned(DuoRecTask):
        def train_step(self, params, opt_state, batch, key, data=None):
            params, opt_state, m = super().train_step(params, opt_state, batch, key, data)
            return params, opt_state, {**m, "sem_nce": m["sem_nce"] * jnp.nan}

    monkeypatch.setattr(pipeline, "make_task", lambda cfg, ds: Poisoned(cfg, ds))
    cfg = load_config(None, [f"data={data_file}", f"output_dir={out}", *TINY, "epochs=5"])
    step = metrics_lines(full_run)[2]["step"]  # steps done after epoch 2: the first step of epoch 3
    with pytest.raises(NonFiniteError, match=rf"loss term 'sem_nce' is nan at epoch 3, step {step} \(batch 0"):
        run_cli(cfg)
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit())[-1] == "3"
    assert metrics_lines(out) == metrics_lines(full_run)
    assert (out / "best_model" / "model.json").read_bytes() == best_before
    _, params, _ = load_model(out / "latest_model")
    assert all(np.all(np.isfinite(v)) for v in jax.tree_util.tree_leaves(params))
    assert "non-finite training value" in (out / "train.log").read_text()


def test_config_errors_before_compute(full_run, data_file, tmp_path, capsys):
    from experiments.train import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["--set", f"output_dir={out}", "--set", "hidden_dropout_prob=-0.5"])
    assert e.value.code == 2 and "'hidden_dropout_prob'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--set", f"output_dir={out}", "--learning_rat=0.1"])
    assert "did you mean learning_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # more devices than this process has: refused before data is read
        main(["--set", f"output_dir={out}", "--mesh=64"])
    assert "'mesh'" in capsys.readouterr().err
    assert not out.exists()
    # a folder holding a run of another config is refused before any compute, naming the key
    before = {p: p.stat().st_mtime_ns for p in full_run.rglob("*")}
    with pytest.raises(SystemExit):
        train(data_file, full_run, "--epochs=4", "--learning_rate=0.5")
    assert "learning_rate" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in full_run.rglob("*")} == before


def test_help_lists_options_with_defaults(capsys):
    from experiments.train import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--config" in text and "quickstart.yaml" in text and "learning_rate=0.001" in text
    assert "stopping_step=10" in text


def test_evaluate_cli_json_and_refusals(full_run, data_file, tmp_path, capsys):
    from experiments.evaluate import main
    from ftragrec_jax.model_dir import load_model, save_model

    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "--checkpoint",
                str(full_run / "best_model"),
                "--data",
                str(data_file),
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    got = json.loads(out.read_text())
    assert set(got) == {"valid", "test"}
    for split in ("valid", "test"):
        assert set(got[split]) == {f"{m}@{k}" for m in METRICS for k in KS}
    res = json.loads((full_run / "results.json").read_text())
    assert got["valid"] == res["valid"] and got["test"] == res["test"]
    assert "recall@10" in capsys.readouterr().out

    other = write_lines_dataset(tmp_path / "other.txt", n_items=45, seed=1)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(full_run / "best_model"), "--data", str(other), "--no-progress"])
    assert "item rows" in capsys.readouterr().err

    meta, params, vocab = load_model(full_run / "best_model")
    params["item_embedding"]["embedding"][3, 0] = np.nan
    bad = save_model(tmp_path / "nan_model", params, meta, vocab)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(bad), "--data", str(data_file), "--no-progress"])
    err = capsys.readouterr().err
    assert "NaN/Inf" in err and "item_embedding" in err
    shutil.rmtree(bad)


# --- FTragrec fine-tuning through the same loop ----------------------------------------------------------

FT = ["--model=ftragrec", "--top_k=3", "--retriever_inner_size=16", "--retriever_update_interval=2"]


def ft_args(full_run):
    return [*FT, f"--pretrained={full_run / 'best_model'}"]


@pytest.fixture(scope="module")
def ft_run(full_run, data_file, tmp_path_factory) -> Path:
    """Uninterrupted FTragrec reference: 3 epochs, keys refreshed for epoch 2 (at the end of epoch 1)."""
    out = tmp_path_factory.mktemp("ft") / "run"
    assert train(data_file, out, "--epochs=3", *ft_args(full_run)) == 0
    return out


def test_ftragrec_trains_only_the_retriever_and_resumes_identically(ft_run, full_run, data_file, tmp_path):
    from ftragrec_jax.model_dir import load_model

    rows = json.loads("[" + ",".join((ft_run / "metrics.jsonl").read_text().splitlines()) + "]")
    assert [("index_refresh_time_s" in r) for r in rows] == [False, True, False]
    # validation refreshes for itself whenever the scheduled refresh did not just happen
    assert [("valid_refresh_time_s" in r) for r in rows] == [True, False, True]
    assert {"rec_loss", "enhanced_rec_loss", "kl_loss", "fallback_fraction"} <= rows[0].keys()
    _, backbone, _ = load_model(full_run / "best_model")
    meta, tuned, _ = load_model(ft_run / "latest_model")
    assert meta["model"] == "ftragrec" and meta["ftragrec"]["top_k"] == 3
    for path, value in __import__("jax").tree_util.tree_leaves_with_path(backbone):
        got = tuned["encoder"]
        for p in path:
            got = got[p.key]
        np.testing.assert_array_equal(got, value)  # the DuoRec backbone is bit-identical after fine-tuning

    out = tmp_path / "run"
    assert train(data_file, out, "--epochs=1", *ft_args(full_run)) == 0
    assert train(data_file, out, "--epochs=3", *ft_args(full_run)) == 0  # the refresh for epoch 2 happens here
    assert_same_run(ft_run, out)


def test_ftragrec_validation_judges_each_epoch_as_its_saved_model(ft_run):
    """Epoch 0's validation (no scheduled refresh after it) searches keys of its own g, like the final
    evaluation of best_model, so the two valid rows agree; with the keys of the initial g they did not."""
    rows = [json.loads(line) for line in (ft_run / "metrics.jsonl").read_text().splitlines()]
    res = json.loads((ft_run / "results.json").read_text())
    assert rows[res["best_epoch"]]["valid"] == res["valid"]
    assert "valid_refresh_time_s" in rows[0] and "index_refresh_time_s" not in rows[0]


def _training_terms(run: Path) -> list[dict]:
    keep = (
        "epoch",
        "step",
        "loss",
        "rec_loss",
        "enhanced_rec_loss",
        "kl_loss",
        "fallback_fraction",
        "short_fraction",
        "neighbours",
        "grad_norm",
    )
    return [{k: r[k] for k in keep if k in r} for r in metrics_lines(run)]


def test_ftragrec_validation_refresh_leaves_training_unchanged(ft_run, full_run, data_file, tmp_path):
    """Validation refreshes keys for itself (epochs 0 and 2 here) and hands the training keys back: without any
    validation (eval_step > epochs) every training loss term and the final retriever are bit for bit the same."""
    out = tmp_path / "no_valid"
    assert train(data_file, out, "--epochs=3", "--eval_step=10", *ft_args(full_run)) == 0
    assert all("valid" not in r for r in metrics_lines(out))
    assert _training_terms(out) == _training_terms(ft_run)
    a, b = final_params(ft_run), final_params(out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_ftragrec_epoch_after_a_scheduled_refresh_searches_the_new_keys(full_run, data_file):
    """retriever_update_interval 2: end_epoch(1) recomputes every key with the current g and the step data the
    next epoch's steps receive holds them; end_epoch(0) and end_epoch(2) keep the keys as they are."""
    from flax import nnx

    from ftragrec_jax.config import load_config
    from ftragrec_jax.data.dataset import dataset_from_config
    from ftragrec_jax.models.knowledge_base import compute_keys
    from ftragrec_jax.train.pipeline import make_task

    cfg = load_config(None, [*TINY, f"data={data_file}", *(a.lstrip("-") for a in ft_args(full_run))])
    task = make_task(cfg, dataset_from_config(cfg))
    model = task.merge(task.init()[0])
    rng = np.random.default_rng(0)
    for layer in model.retriever.layers:  # move g away from its initial LN(x), as training would
        w = layer.dense_2.kernel[...]
        layer.dense_2.kernel[...] = w + 0.3 * rng.normal(size=w.shape).astype(np.float32)
    params = nnx.split(model, nnx.Param, ...)[1]
    new = compute_keys(task.merge(params).retriever, task.kb.h)
    assert not np.allclose(new, np.asarray(task.step_data().keys), atol=1e-4)
    for epoch, refreshed in ((0, False), (1, True), (2, False)):
        before = np.asarray(task.step_data().keys).copy()
        record = task.end_epoch(params, epoch)
        after = np.asarray(task.step_data().keys)
        assert ("index_refresh_time_s" in record) == refreshed, epoch
        if refreshed:
            np.testing.assert_allclose(after, new, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(after, before)


def test_ftragrec_extend_memory_with_valid_end_to_end(ft_run, full_run, data_file, tmp_path):
    """extend_memory_with_valid adds the validation samples to the base before testing only: validation and
    training are those of the run without it, the test base is larger, the model directory records the setting,
    and evaluating that directory later gives the same test metrics as the run printed."""
    from experiments.evaluate import main as evaluate_main
    from ftragrec_jax import scoring
    from ftragrec_jax.config import load_config
    from ftragrec_jax.data.dataset import dataset_from_config
    from ftragrec_jax.model_dir import load_model

    out = tmp_path / "ext"
    assert train(data_file, out, "--epochs=3", "--extend_memory_with_valid=true", *ft_args(full_run)) == 0
    assert metrics_lines(out) == metrics_lines(ft_run)
    res, ref = json.loads((out / "results.json").read_text()), json.loads((ft_run / "results.json").read_text())
    assert res["valid"] == ref["valid"]
    meta, params, _ = load_model(out / "best_model")
    assert meta["ftragrec"]["extend_memory_with_valid"] is True
    # the saved model's scorer: test scores change once before_test() has put the validation samples in the base
    cfg = load_config(None, [*TINY, f"data={data_file}"])
    dataset = dataset_from_config(cfg)
    scorer = scoring.from_params(meta, params, source=str(out / "best_model"), dataset=dataset)
    score, before_test = scorer.score, scorer.before_test
    test = dataset.test
    batch = {"user": np.asarray(test.user, np.int32), "prefix_len": np.asarray(test.prefix_len, np.int32)}
    seq, lens = np.asarray(test.item_seq, np.int32), np.asarray(test.item_seq_len, np.int32)
    plain = np.asarray(score(seq, lens, batch))
    before_test()
    extended = np.asarray(score(seq, lens, batch))
    assert (np.abs(extended - plain).max(axis=1) > 1e-6).mean() > 0.2  # many test rows got other neighbours
    report = tmp_path / "eval.json"
    assert (
        evaluate_main(
            ["--checkpoint", str(out / "best_model"), "--data", str(data_file), "--no-progress", "--json", str(report)]
        )
        == 0
    )
    assert json.loads(report.read_text())["test"] == res["test"]


def test_ftragrec_sigkill_then_restart_is_identical(ft_run, full_run, data_file, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.train", *cli_args(data_file, out), "--epochs=3", *ft_args(full_run)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache")}
    kill_after_checkpoint_then_rerun(cmd, env, out, "2")
    assert_same_run(ft_run, out)


def test_evaluation_in_item_chunks_gives_the_run_metrics(full_run, data_file):
    """item_chunk_size at evaluation: a DuoRec model directory ranked over item chunks gives exactly the metrics
    its run printed (valid and test, every K)."""
    from ftragrec_jax.evaluation import evaluate_model_dir

    res = json.loads((full_run / "results.json").read_text())
    got = evaluate_model_dir(full_run / "best_model", str(data_file), ["item_chunk_size=7"], show_progress=False)
    assert got["valid"] == res["valid"] and got["test"] == res["test"]


def test_ftragrec_evaluate_cli_matches_results(ft_run, data_file, tmp_path):
    from experiments.evaluate import main

    out = tmp_path / "eval.json"
    assert (
        main(
            ["--checkpoint", str(ft_run / "best_model"), "--data", str(data_file), "--json", str(out), "--no-progress"]
        )
        == 0
    )
    res = json.loads((ft_run / "results.json").read_text())
    got = json.loads(out.read_text())
    assert got["valid"] == res["valid"] and got["test"] == res["test"]


def test_ftragrec_results_carry_its_backbone_and_the_cli_prints_the_comparison(
    ft_run, full_run, data_file, tmp_path, capsys
):
    """A fine-tuning run on a given backbone records the backbone on the same valid and test users (equal to the
    backbone's own run) and the relative change; the CLI ends with the backbone vs FTragrec table. The tiny data
    is not the published Beauty split, so no published rows are printed."""
    from ftragrec_jax.evaluation import relative_change

    res = json.loads((ft_run / "results.json").read_text())
    duorec = json.loads((full_run / "results.json").read_text())
    assert res["backbone"]["valid"] == duorec["valid"] and res["backbone"]["test"] == duorec["test"]
    assert res["relative_change_test"] == relative_change(duorec["test"], res["test"])
    out = tmp_path / "again"
    capsys.readouterr()
    assert train(data_file, out, "--epochs=1", *ft_args(full_run)) == 0
    text = capsys.readouterr().out
    table = text[text.index("test      ") :]
    assert table.splitlines()[0].split() == ["test", "DuoRec", "FTragrec", "change"]
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:6]}
    assert list(rows) == ["hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr@10"]
    again = json.loads((out / "results.json").read_text())
    assert rows["ndcg@10"][:2] == [f"{again['backbone']['test']['ndcg@10']:.4f}", f"{again['test']['ndcg@10']:.4f}"]
    assert "published" not in text


def test_published_rows_only_on_the_published_beauty_split():
    from ftragrec_jax.evaluation import comparison_table, published_for

    beauty = {
        "mask_history": False,
        "dataset": {"n_users": 22363, "n_interactions": 198502, "settings": {"max_seq_length": 50}},
    }
    assert set(published_for(beauty)) == {"DuoRec", "RaSeRec"}
    assert published_for({**beauty, "mask_history": True}) == {}
    assert published_for({**beauty, "dataset": {**beauty["dataset"], "n_users": 22362}}) == {}
    assert published_for({**beauty, "dataset": {**beauty["dataset"], "settings": {"max_seq_length": 20}}}) == {}
    m = {"hit@5": 0.05, "hit@10": 0.08, "ndcg@5": 0.03, "ndcg@10": 0.04, "mrr@10": 0.03}
    text = comparison_table(m, {**m, "ndcg@10": 0.044}, published_for(beauty))
    assert "ndcg@10       0.0400    0.0440    +10.0%" in text
    lines = text.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("published")))
    assert lines[at + 1].split() == ["test", "DuoRec", "RaSeRec"]
    assert lines[at + 3].split() == ["hit@10", "0.0845", "0.0860"]
    assert lines[at + 2].split() == ["hit@5", "—", "0.0569"]


def test_compare_cli_pairs_the_backbone_with_its_fine_tuned_model(ft_run, full_run, data_file, tmp_path, capsys):
    from experiments.compare import main

    out = tmp_path / "compare.json"
    assert (
        main(
            [
                "--a",
                str(full_run / "best_model"),
                "--b",
                str(ft_run / "best_model"),
                "--data",
                str(data_file),
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    got = json.loads(out.read_text())
    test_a = json.loads((full_run / "results.json").read_text())["test"]
    test_b = json.loads((ft_run / "results.json").read_text())["test"]
    assert [r["k"] for r in got["rows"]] == [5, 10, 20, 50]
    for row in got["rows"]:  # the same users and ranks as each model's own test evaluation
        assert np.round(row["hit_a"], 4) == test_a[f"hit@{row['k']}"]
        assert np.round(row["hit_b"], 4) == test_b[f"hit@{row['k']}"]
        assert row["hit_b"] - row["hit_a"] == pytest.approx((row["b_only"] - row["a_only"]) / got["users"])
    for row in got["ndcg_rows"]:  # NDCG@K per user, paired the same way
        assert np.round(row["ndcg_a"], 4) == test_a[f"ndcg@{row['k']}"]
        assert np.round(row["ndcg_b"], 4) == test_b[f"ndcg@{row['k']}"]
    assert "p (sign test)" in capsys.readouterr().out
    # --set-b reaches model B only: FTragrec with alpha 0 is its backbone, user by user (a DuoRec model A
    # would refuse alpha)
    assert (
        main(
            [
                "--a",
                str(full_run / "best_model"),
                "--b",
                str(ft_run / "best_model"),
                "--data",
                str(data_file),
                "--set-b",
                "alpha=0",
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    got = json.loads(out.read_text())
    assert all((r["a_only"], r["b_only"], r["p_value"]) == (0, 0, 1.0) for r in got["rows"])
    assert all((r["a_better"], r["b_better"], r["p_value"]) == (0, 0, 1.0) for r in got["ndcg_rows"])


def test_compare_refuses_models_resolving_to_different_datasets(full_run, data_file):
    import dataclasses

    from ftragrec_jax.errors import ConfigError
    from ftragrec_jax.scoring import load_model_dir

    first = load_model_dir(full_run / "best_model", str(data_file), show_progress=False)
    cfg, dataset = first.cfg, first.dataset
    other = dataclasses.replace(cfg, MAX_ITEM_LIST_LENGTH=cfg.MAX_ITEM_LIST_LENGTH + 1)
    with pytest.raises(ConfigError, match="MAX_ITEM_LIST_LENGTH"):
        load_model_dir(full_run / "best_model", str(data_file), show_progress=False, shared=(other, dataset))


def test_evaluate_overrides_how_a_trained_retriever_is_used(ft_run, full_run, data_file, tmp_path, capsys):
    from experiments.evaluate import main

    def evaluate(ckpt, *sets):
        out = tmp_path / "eval.json"
        args = ["--checkpoint", str(ckpt), "--data", str(data_file), "--json", str(out), "--no-progress"]
        assert main([*args, *(a for s in sets for a in ("--set", s))]) == 0
        return json.loads(out.read_text())

    # alpha 0 leaves the frozen backbone's vector, so the fine-tuned model must score exactly as its backbone
    backbone = json.loads((full_run / "results.json").read_text())
    assert evaluate(ft_run / "best_model", "alpha=0") == {"valid": backbone["valid"], "test": backbone["test"]}
    stored = json.loads((ft_run / "results.json").read_text())
    assert evaluate(ft_run / "best_model", "alpha=0.9", "quality_threshold=0") != {
        "valid": stored["valid"],
        "test": stored["test"],
    }
    # refused before any data is read: the data file given here does not exist
    for ckpt, key, expected in (
        (ft_run / "best_model", "retriever_layers=2", "fixed by the trained model"),
        (full_run / "best_model", "top_k=2", "FTragrec checkpoints only"),
    ):
        with pytest.raises(SystemExit):
            main(["--checkpoint", str(ckpt), "--data", str(tmp_path / "missing.txt"), "--set", key])
        err = capsys.readouterr().err
        assert key.split("=")[0] in err and expected in err, err


def test_ftragrec_refuses_a_backbone_of_another_catalogue(full_run, tmp_path, capsys):
    other = write_lines_dataset(tmp_path / "other.txt", n_items=45, seed=1)
    with pytest.raises(SystemExit):
        train(other, tmp_path / "run", "--epochs=1", *ft_args(full_run))
    err = capsys.readouterr().err
    assert "'pretrained'" in err and "item rows" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_pipeline_pretrains_then_fine_tunes(data_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        train(
            data_file,
            out,
            "--model=ftragrec",
            "--pretrain_epochs=1",
            "--epochs=1",
            "--top_k=3",
            "--retriever_inner_size=16",
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "DuoRec" in text and "FTragrec" in text and "ndcg@10" in text and str(out) in text
    assert f"results: {out / 'results.json'}" in text
    # the FTragrec stage shows the frozen backbone's valid score first, then fallback and index per epoch
    backbone_valid = json.loads((out / "duorec" / "results.json").read_text())["valid"]
    log = (out / "ftragrec" / "train.log").read_text()
    assert f"frozen backbone before fine-tuning: valid mrr@10 {backbone_valid['mrr@10']:.4f}" in log
    epoch_line = next(line for line in log.splitlines() if " epoch 0 " in line)
    assert "fallback " in epoch_line and "index kept" in epoch_line and "kl_loss" in epoch_line
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"backbone", "ftragrec", "relative_change_test"}
    assert res["backbone"]["test"] == json.loads((out / "duorec" / "results.json").read_text())["test"]
    ft_cfg = yaml.safe_load((out / "ftragrec" / "config.yaml").read_text())
    assert ft_cfg["pretrained"] == str(out / "duorec" / "best_model") and ft_cfg["model"] == "ftragrec"
    rel = res["relative_change_test"]["ndcg@10"]
    b, f = res["backbone"]["test"]["ndcg@10"], res["ftragrec"]["test"]["ndcg@10"]
    assert rel == pytest.approx((f - b) / b)


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_state_their_command(path):
    from ftragrec_jax.config import load_config

    load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# python -m experiments.train")
    assert f"experiments/configs/{path.name}" in first or path.name == "quickstart.yaml"


def test_four_device_run_matches_one_device(full_run, data_file, tmp_path):
    """The same loop on a 4-device mesh (forced CPU devices). Dropout off: the 1-device losses and metrics to
    float32 tolerance. Dropout on: each device draws its own masks (key folded with the device index, as in
    PyTorch DDP), so the run is not the 1-device one but repeats exactly given the seed and the device count."""
    from experiments.train import main

    off = ("--hidden_dropout_prob=0", "--attn_dropout_prob=0")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    # every command line first: cli_args rewrites the defaults file the runs read
    cmds = {
        name: [
            sys.executable,
            "-m",
            "experiments.train",
            *cli_args(data_file, tmp_path / name, *extra),
            "--epochs=1",
            "--mesh=4",
        ]
        for name, extra in (("four_off", off), ("four_on", ()), ("four_on_again", ()))
    }
    one_off = cli_args(data_file, tmp_path / "one_off", "--epochs=1", "--mesh=1", *off)
    procs = {
        name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, cmd in cmds.items()
    }
    try:
        assert main(one_off) == 0
        for name, p in procs.items():
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, (name, err[-2000:])
    finally:
        for p in procs.values():
            p.kill()
    a, b = metrics_lines(tmp_path / "four_off")[0], metrics_lines(tmp_path / "one_off")[0]
    for k in ("loss", "ce", "sem_nce", "grad_norm"):
        assert a[k] == pytest.approx(b[k], rel=1e-5), k
    for k, v in b["valid"].items():
        assert a["valid"][k] == pytest.approx(v, abs=2e-4), k  # 4-decimal metrics; a rank tie may flip
    assert_same_run(tmp_path / "four_on", tmp_path / "four_on_again")
    assert metrics_lines(tmp_path / "four_on")[0]["loss"] != metrics_lines(full_run)[0]["loss"]  # masks per device


def test_ftragrec_mostly_fallback_is_warned_once(full_run, data_file, tmp_path):
    """quality_threshold 1 keeps only exact duplicates as neighbours: every epoch line shows most samples falling
    back, and one warning (not one per epoch) says why."""
    import re

    out = tmp_path / "run"
    assert train(data_file, out, "--epochs=2", *ft_args(full_run), "--quality_threshold=1.0") == 0
    log = (out / "train.log").read_text()
    shares = [float(x) for x in re.findall(r"INFO epoch \d+ .* fallback ([\d.]+)%", log)]
    assert len(shares) == 2 and min(shares) >= 50, shares
    assert log.count("% of training samples had no neighbour with cosine >= quality_threshold=1.0") == 1


def test_valid_query_split_is_fixed_disjoint_and_sized():
    from ftragrec_jax.data.batches import valid_query_split

    fit, held = valid_query_split(101, 0.3)
    assert len(held) == 30 and len(fit) == 71
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(101))
    assert (np.diff(fit) > 0).all() and (np.diff(held) > 0).all()
    again = valid_query_split(101, 0.3)
    assert np.array_equal(again[0], fit) and np.array_equal(again[1], held)  # no seed: one split for every run
    assert not np.array_equal(held, np.arange(30))  # a permutation, not the first users


def test_last_per_user_matches_a_per_user_sort():
    from ftragrec_jax.data.batches import last_per_user

    rng = np.random.default_rng(0)
    user = rng.integers(1, 9, size=200)
    prefix = rng.permutation(200) + 1  # unique within each user, rows in random order
    for n in (0, 1, 2, 5, 50):
        got = last_per_user(user, prefix, n)
        want = np.zeros(200, bool)
        for u in np.unique(user):
            rows = np.flatnonzero(user == u)
            want[rows[np.argsort(-prefix[rows])[:n]]] = True
        assert np.array_equal(got, want), n
    assert last_per_user(np.array([], np.int32), np.array([], np.int32), 2).shape == (0,)


@pytest.fixture(scope="module")
def holdout_run(data_file, tmp_path_factory) -> Path:
    """A DuoRec backbone pretrained without each user's last 2 training samples."""
    out = tmp_path_factory.mktemp("holdout") / "run"
    assert train(data_file, out, "--epochs=2", "--pretrain_holdout_last=2") == 0
    return out


def test_duorec_pretrained_without_held_out_samples(holdout_run, data_file, monkeypatch):
    """pretrain_holdout_last=2: the loop trains on the training split minus each user's last 2 samples, the
    same-target positives come from that reduced split too, validation and test are untouched, and model.json
    records the count for FTragrec."""
    from ftragrec_jax.config import load_config
    from ftragrec_jax.data.batches import last_per_user
    from ftragrec_jax.data.dataset import dataset_from_config
    from ftragrec_jax.model_dir import read_meta
    from ftragrec_jax.train import duorec_task
    from ftragrec_jax.train.pipeline import make_task

    seen = []
    real = duorec_task.make_same_target_sampler
    monkeypatch.setattr(duorec_task, "make_same_target_sampler", lambda tr, n: seen.append(tr) or real(tr, n))
    cfg = load_config(None, [*TINY, f"data={data_file}", "pretrain_holdout_last=2"])
    dataset = dataset_from_config(cfg)
    task = make_task(cfg, dataset)
    loop = task.loop_dataset(dataset)
    held = last_per_user(dataset.train.user, dataset.train.prefix_len, 2)
    assert 0 < held.sum() < len(held)
    assert np.array_equal(loop.train.target, dataset.train.target[~held])
    assert np.array_equal(loop.train.item_seq, dataset.train.item_seq[~held])
    assert seen == [loop.train]  # positives drawn only from what is trained on
    assert loop.valid is dataset.valid and loop.test is dataset.test

    assert read_meta(holdout_run / "best_model")["source"]["pretrain_holdout_last"] == 2
    protocol = json.loads((holdout_run / "results.json").read_text())["protocol"]
    assert protocol["dataset"]["train_samples"] == int((~held).sum())
    assert protocol["pretrain_holdout_last"].startswith("2:")

    with pytest.raises(ConfigError, match="pretrain_holdout_last.*nothing is left"):
        make_task(load_config(None, [*TINY, f"data={data_file}", "pretrain_holdout_last=50"]), dataset)


def test_ftragrec_fitted_on_held_out_queries(holdout_run, full_run, data_file, tmp_path):
    """retriever_queries=held_out: g is fitted on the training samples its backbone never trained on (read from
    the backbone's model.json), run through the frozen encoder in the step; the base is the whole training
    split, validation and test every user; only g changes. A backbone without held-out samples, or a config
    count that disagrees with the backbone's, is refused by name."""
    from ftragrec_jax.config import load_config
    from ftragrec_jax.data.batches import last_per_user
    from ftragrec_jax.data.dataset import dataset_from_config
    from ftragrec_jax.model_dir import load_model
    from ftragrec_jax.train.pipeline import make_task
    from ftragrec_jax.trees import flatten

    extra = [*FT, f"--pretrained={holdout_run / 'best_model'}", "--retriever_queries=held_out"]
    cfg = load_config(None, [*TINY, f"data={data_file}", *(a.lstrip("-") for a in extra)])
    dataset = dataset_from_config(cfg)
    task = make_task(cfg, dataset)
    loop = task.loop_dataset(dataset)
    held = last_per_user(dataset.train.user, dataset.train.prefix_len, 2)
    assert task.holdout_last == 2
    assert np.array_equal(loop.train.target, dataset.train.target[held])
    assert np.array_equal(loop.train.prefix_len, dataset.train.prefix_len[held])
    assert loop.valid is dataset.valid and loop.test is dataset.test
    assert task.cached is False and len(task.kb) == len(dataset.train)

    out = tmp_path / "run"
    assert train(data_file, out, "--epochs=2", *extra) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["dataset"]["train_samples"] == int(held.sum())
    assert results["protocol"]["retriever_queries"].startswith("held_out:")
    _, backbone, _ = load_model(holdout_run / "best_model")
    meta, tuned, _ = load_model(out / "latest_model")
    assert meta["source"]["pretrain_holdout_last"] == 2
    for path, value in flatten(backbone).items():  # the frozen backbone is bit-identical
        np.testing.assert_array_equal(flatten(tuned["encoder"])[path], value)
    init = flatten(task.export_params(task.init()[0])["retriever"])
    now = flatten(tuned["retriever"])
    assert any(not np.allclose(now[k], init[k]) for k in init)  # g trained on the held-out queries

    no_holdout = [*FT, f"--pretrained={full_run / 'best_model'}", "--retriever_queries=held_out"]
    with pytest.raises(ConfigError, match="retriever_queries.*held_out needs a backbone"):
        make_task(load_config(None, [*TINY, f"data={data_file}", *(a.lstrip("-") for a in no_holdout)]), dataset)
    mismatch = [*extra, "--pretrain_holdout_last=3"]
    with pytest.raises(ConfigError, match="pretrain_holdout_last.*pretrained with 2"):
        make_task(load_config(None, [*TINY, f"data={data_file}", *(a.lstrip("-") for a in mismatch)]), dataset)


def test_ftragrec_fitted_on_valid_queries(full_run, data_file, tmp_path):
    """retriever_queries=valid: the loop's training batches are validation queries of the fitted share (their
    encoder outputs computed in the step: nothing of the base is indexed by them), validation runs on the
    held-out users, test on every user, the base is the training split, and only g changes."""
    from ftragrec_jax.config import load_config
    from ftragrec_jax.data.batches import valid_query_split
    from ftragrec_jax.data.dataset import dataset_from_config
    from ftragrec_jax.model_dir import load_model
    from ftragrec_jax.train.pipeline import make_task

    extra = ["--retriever_queries=valid", "--retriever_valid_holdout=0.4"]
    cfg = load_config(None, [*TINY, f"data={data_file}", *(a.lstrip("-") for a in [*ft_args(full_run), *extra])])
    dataset = dataset_from_config(cfg)
    task = make_task(cfg, dataset)
    loop = task.loop_dataset(dataset)
    fit, held = valid_query_split(len(dataset.valid), 0.4)
    assert np.array_equal(loop.train.user, dataset.valid.user[fit])
    assert np.array_equal(loop.train.item_seq, dataset.valid.item_seq[fit])
    assert np.array_equal(loop.valid.user, dataset.valid.user[held]) and loop.test is dataset.test
    assert task.cached is False and len(task.kb) == len(dataset.train)

    out = tmp_path / "run"
    assert train(data_file, out, "--epochs=2", *ft_args(full_run), *extra) == 0
    results = json.loads((out / "results.json").read_text())
    protocol = results["protocol"]
    assert protocol["dataset"]["train_samples"] == len(fit) and protocol["dataset"]["valid_samples"] == len(held)
    assert protocol["dataset"]["test_samples"] == len(dataset.test)
    assert protocol["retriever_queries"].startswith("valid:")
    from ftragrec_jax.trees import flatten

    _, backbone, _ = load_model(full_run / "best_model")
    _, tuned, _ = load_model(out / "latest_model")
    for path, value in flatten(backbone).items():  # the frozen backbone is bit-identical
        np.testing.assert_array_equal(flatten(tuned["encoder"])[path], value)
    init = flatten(task.export_params(task.init()[0])["retriever"])
    now = flatten(tuned["retriever"])
    assert init.keys() == now.keys()
    assert any(not np.allclose(now[k], init[k]) for k in init)  # g trained on the validation queries

    with pytest.raises(SystemExit):
        train(data_file, tmp_path / "bad", *ft_args(full_run), "--retriever_queries=test")
