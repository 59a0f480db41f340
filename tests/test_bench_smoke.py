"""The benchmark harness runs end to end: every benchmark once at tiny sizes, so it cannot rot.

Nothing about speed is asserted (this machine is shared); only that each benchmark produces rows with
timings or a stated reason, and a JSON report that parses and records the command and machine.
"""

import json

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
