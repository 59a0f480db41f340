"""The GPU suite's CPU smoke mode: every stage runs on tiny sizes and leaves its files, so the script that a
GPU lending runs once cannot rot in between."""

import json
import tarfile

from experiments.gpu_suite import STAGES, main


def test_smoke_runs_every_stage_and_leaves_its_files(tmp_path, capsys):
    out = tmp_path / "suite"
    assert main(["--out", str(out), "--smoke", "--budget-s", "400"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == list(STAGES)
    assert all(st["status"] == "ok" for st in summary["stages"].values()), summary["stages"]
    st = summary["stages"]
    assert st["env"]["result"]["jax"] and "devices" in st["env"]["result"]
    assert "passed" in st["correctness"]["result"]["pytest"]
    assert st["bench_fp32"]["result"]["rows"] and st["bench_default"]["result"]["rows"]
    assert "test" in st["train_beauty"]["result"]["results"]
    # at most 8 files, as a device run returns them
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert files == ["beauty_duorec.tar.gz", "logs.tar.gz", "sports_duorec.tar.gz", "summary.json", "summary.md"]
    with tarfile.open(out / "beauty_duorec.tar.gz") as tar:
        names = tar.getnames()
    assert "train_beauty/best_model/model.json" in names and "train_beauty/results.json" in names
    assert not any("/checkpoints" in n for n in names)
    assert "| train_beauty | ok |" in (out / "summary.md").read_text()


def test_a_budget_spent_skips_the_remaining_stages(tmp_path):
    out = tmp_path / "suite"
    assert main(["--out", str(out), "--smoke", "--budget-s", "1", "--stages", "env,correctness"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert all(st["status"].startswith(("skipped (budget", "timed out")) for st in summary["stages"].values())
