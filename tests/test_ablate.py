"""`python -m experiments.ablate`: variants x seeds on one frozen backbone, tabulated against it, resumable."""

import json

import pytest

from tests.test_train import TINY, data_file, full_run  # noqa: F401  (module fixtures reused here)


def test_ablation_sweep_writes_table_and_skips_finished_runs(full_run, data_file, tmp_path, capsys):  # noqa: F811
    from experiments.ablate import main

    cfg = tmp_path / "ft.yaml"
    cfg.write_text("model: ftragrec\n" + "".join(f"{t.replace('=', ': ', 1)}\n" for t in TINY))
    grid = tmp_path / "grid.yaml"
    grid.write_text("default: {}\nknn: {fusion: knn_lm, quality_threshold: 0.0}\nbad: {alpha: 2}\n")
    args = [
        "--config",
        str(cfg),
        "--grid",
        str(grid),
        "--set",
        f"data={data_file}",
        "--set",
        f"pretrained={full_run / 'best_model'}",
        "--set",
        "epochs=1",
        "--set",
        "top_k=3",
        "--set",
        "retriever_inner_size=16",
        "--seeds",
        "1,2",
        "--out",
        str(tmp_path / "runs"),
        "--table",
        str(tmp_path / "table.md"),
    ]
    assert main([*args, "--only", "default,knn"]) == 0
    data = json.loads((tmp_path / "table.json").read_text())
    assert set(data["variants"]) == {"default", "knn"}
    for v in data["variants"].values():
        assert set(v["per_seed"]) == {"1", "2"}
        assert set(v["mean"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr@10"}
    backbone = json.loads((full_run / "results.json").read_text())["test"]
    assert data["backbone"]["ndcg@10"] == backbone["ndcg@10"]  # the frozen backbone, evaluated on the same split
    table = (tmp_path / "table.md").read_text()
    assert "| frozen backbone |" in table and "| knn | 1,2 |" in table
    stamp = (tmp_path / "runs" / "knn-seed1" / "results.json").stat().st_mtime_ns
    assert main([*args, "--only", "knn"]) == 0  # finished runs are read back, not retrained
    assert (tmp_path / "runs" / "knn-seed1" / "results.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args, "--only", "bad"])
    assert "alpha" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--only", "nope"])
    assert "unknown variants" in capsys.readouterr().err


def test_shipped_grids_state_their_command_and_every_variant_validates():
    from pathlib import Path

    from experiments.ablate import load_grid
    from ftragrec_jax.config import load_config

    root = Path(__file__).resolve().parents[1]
    grids = sorted((root / "experiments" / "configs" / "ablations").glob("*.yaml"))
    assert grids
    for path in grids:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# python -m experiments.ablate") and f"ablations/{path.name}" in first
        config = root / first.split("--config ")[1].split()[0]
        for name, variant in load_grid(path).items():
            load_config(config, [f"{k}={json.dumps(v)}" for k, v in variant.items()])  # raises on a bad key
