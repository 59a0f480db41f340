"""The benchmark harness runs end to end: every benchmark once at tiny sizes, so it cannot rot.

Nothing about speed is asserted (this machine is shared); only that each benchmark produces rows with
timings or a stated reason, and a JSON report that parses and records the command and machine.
"""

import json

import numpy as np
import pytest

from experiments import bench

TINY = [
    "--data",
    "synthetic",
    "--items",
    "40",
    "--users",
    "24",
    "--max-len",
    "8",
    "--kb",
    "300",
    "--batch",
    "8",
    "--top-k",
    "3",
    "--repeats",
    "1",
    "--epoch-repeats",
    "1",
    "--threads",
    "1",
    "--no-torch-compile",
]


def test_every_benchmark_runs_and_writes_json(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    report = bench.run(bench.parse_args(TINY + ["--json", str(out)]))
    assert report["errors"] == {}
    data = json.loads(out.read_text())
    assert data["format"] == "ftragrec-jax/bench/v1"
    assert "--json" in data["machine"]["command"] and data["machine"]["date_utc"]
    by_bench = {}
    for row in data["rows"]:
        by_bench.setdefault(row["bench"], []).append(row)
    assert set(by_bench) == set(bench.BENCHES)
    for name, rows in by_bench.items():
        assert any(r["reference"] for r in rows), name
        for r in rows:
            assert r["device"], (name, r["side"])
            if r["skipped"]:
                assert r["side"] == "torch.compile" and "disabled" in r["skipped"]
            else:
                assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["ratio"] > 0
    assert all("metrics agree" in r["note"] for r in by_bench["eval"])
    assert all(r["recall_vs_exact"] == 1.0 for r in by_bench["retrieval"] if "Flat" in r["side"])
    assert data["table"].count("\n") == len(data["rows"]) + 1


def test_bad_arguments_are_rejected():
    for argv in (
        ["--what", "nope"],
        ["--batch", "0"],
        ["--kb", "2", "--top-k", "5"],
        ["--ftragrec-variants", "exact-cached,hnsw"],
        ["--ftragrec-variants", ","],
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)


def test_ftragrec_variants_select_the_jax_sides():
    pytest.importorskip("torch")
    report = bench.run(
        bench.parse_args(TINY + ["--what", "ftragrec_step", "--ftragrec-variants", "exact-cached,ivf-cached"])
    )
    sides = [r["side"] for r in report["rows"]]
    assert sides[0] == "jax exact cached" and sides[1].startswith("jax faiss IVF") and len(sides) == 3, sides


def test_scale_synthetic_log_has_the_asked_size(tmp_path):
    """The scale benchmark's generator: about the asked interactions, every item present, histories >= 5,
    popularity falling with the item's rank (Zipf)."""
    from experiments.scale import synthetic_log

    path = tmp_path / "log.txt"
    users, written = synthetic_log(path, 50_000, 2_000, mean_len=10.0, zipf=1.0, seed=0)
    rows = [line.split() for line in path.read_text().splitlines()]
    items = np.concatenate([np.array(r[1:], int) for r in rows])
    assert len(rows) == users and len(items) == written and abs(written - 50_000) < 2_500
    assert min(len(r) - 1 for r in rows) >= 5
    counts = np.bincount(items, minlength=2_001)[1:]
    assert (counts > 0).all() and counts[:10].sum() > counts[-1000:].sum()


def test_scale_runs_every_stage_on_a_tiny_log(tmp_path):
    from experiments.scale import main

    out = tmp_path / "scale.json"
    argv = ["--sizes=5e3:100,1e9:1e6", "--steps=1", "--batches=5", "--encode=500", "--eval-users=100"]
    assert main([*argv, "--faiss-index=Flat", "--item-chunk=64", f"--json={out}", f"--plot={tmp_path / 'p.png'}"]) == 0
    small, huge = json.loads(out.read_text())
    stages = [s["stage"] for s in small["stages"]]
    for name in ("load", "batches", "duorec_step", "eval", "kb_encode", "kb_build", "ftragrec_step"):
        assert name in stages, (name, stages)
    assert "loading alone about" in huge["skipped"]  # 10^9 interactions would not fit; not run
    assert (tmp_path / "p.png").stat().st_size > 0
