"""experiments.memory at toy sizes: the child processes run the project's code paths and report their peaks."""

from __future__ import annotations

import json

from tests.test_train import write_lines_dataset


def test_memory_script_reports_peaks(tmp_path, capsys):
    from experiments.memory import main

    data = write_lines_dataset(tmp_path / "tiny.txt", n_users=40, n_items=25)
    out = tmp_path / "mem.json"
    assert (
        main(
            [
                "--what",
                "ml1m_eval,kb_2m",
                f"--ml1m={data}",
                "--max-len=8",
                "--kb-entries=3000",
                "--kb-seq-len=4",
                "--kb-items=50",
                "--hidden=16",
                "--queries=16",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    got = json.loads(out.read_text())
    assert got["machine"]["command"].startswith("python -m experiments.memory --what ml1m_eval,kb_2m")
    ev, kb = got["results"]
    assert ev["what"] == "ml1m_eval" and ev["within_8gb"] and ev["info"]["test_samples"] > 0
    assert [s["stage"].split(" ")[0] for s in ev["stages"]][-2:] == ["valid", "test"]
    assert kb["info"]["entries"] == 3000 and kb["info"]["faiss_vs_exact_max_score_gap"] < 1e-5
    for r in (ev, kb):
        peaks = [s["peak_mb"] for s in r["stages"]]
        assert peaks == sorted(peaks) and 0 < peaks[-1] <= r["peak_rss_mb"]  # the kernel's figure bounds them
    assert "peak RSS" in capsys.readouterr().out


def test_memory_script_rejects_unknown_measurement(capsys):
    from experiments.memory import main

    assert main(["--what", "ml1m_eval,nope"]) == 2
    assert "nope" in capsys.readouterr().err
