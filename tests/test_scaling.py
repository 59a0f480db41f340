"""experiments.scaling once at tiny sizes: every figure present, searches agree with numpy; no speed asserts."""

import json

import pytest

from tests.test_train import write_lines_dataset


def test_scaling_smoke(tmp_path):
    from experiments.scaling import main

    data = write_lines_dataset(tmp_path / "tiny.txt")
    out = tmp_path / "scaling.json"
    argv = [
        "--devices",
        "1,2",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--kb-sizes",
        "3001",
        "--kb-devices",
        "2",
        "--data",
        str(data),
        "--hidden",
        "8",
        "--max-len",
        "8",
        "--batch",
        "16",
        "--queries",
        "16",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["machine"]["command"] == "python -m experiments.scaling " + " ".join(argv)
    steps = {r["devices"]: r for r in res["results"] if r["kind"] == "step"}
    assert sorted(steps) == [1, 2]
    for d, r in steps.items():
        assert r["per_device_batch"] == 16 // d and r["median_ms"] > 0 and r["samples_per_s"] > 0
    rows = [row for r in res["results"] if r["kind"] == "kb" for row in r["rows"]]
    assert sorted(row["method"] for row in rows) == [
        "exact",
        "exact sharded x2",
        "faiss Flat",
        "faiss IndexShards x2 (Flat)",
    ]
    for row in rows:
        assert row["n"] == 3001 and row["ids_match_numpy"] and row["median_ms"] > 0 and row["peak_rss_gb"] > 0
    sharded = next(row for row in rows if row["method"] == "exact sharded x2")
    assert sharded["keys_bytes_per_device"] == 1501 * 8 * 4  # 3001 keys padded to 3002, half per device


@pytest.mark.parametrize("bad", [["--devices", "0"], ["--kb-sizes", "5"], ["--steps", "0"], ["--devices", "a"]])
def test_scaling_rejects_bad_arguments(bad, capsys):
    from experiments.scaling import main

    with pytest.raises(SystemExit):
        main(bad)
    assert "error" in capsys.readouterr().err
