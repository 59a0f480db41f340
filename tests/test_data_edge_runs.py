"""Data edge cases through the whole trainer ; tests/test_data_dataset.py checks the samples
themselves. Each case has a defined outcome: a run with exactly predictable metrics, or a one-line DataError
naming the file before the first epoch (never an epoch of compute followed by a failure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_train import FT, train

# k-core off: the edge cases must reach the trainer as written
RAW = ["--min_user_inter_num=0", "--min_item_inter_num=0"]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_one_item_catalogue_ranks_its_only_item_first(tmp_path):
    data = write(tmp_path / "one_item.txt", [f"{u} " + " ".join(["7"] * 5) for u in range(1, 6)])
    out = tmp_path / "run"
    assert train(data, out, "--epochs=1", *RAW) == 0
    res = results(out)
    assert res["protocol"]["dataset"]["n_items"] == 2  # padding + the one item
    for split in ("valid", "test"):
        for k in (5, 10, 20, 50):  # the target is the only rankable item: rank 1 for every sample
            assert res[split][f"hit@{k}"] == res[split][f"mrr@{k}"] == res[split][f"ndcg@{k}"] == 1.0
            assert res[split][f"precision@{k}"] == round(1 / k, 4)
    # FTragrec on it: neighbours are other users' samples and the user's own earlier ones
    ft = tmp_path / "ft"
    assert train(data, ft, "--epochs=1", *RAW, *FT, f"--pretrained={out / 'best_model'}") == 0
    assert results(ft)["test"]["hit@5"] == 1.0


def test_single_user(tmp_path):
    # 12 interactions of one user: 8 train samples, 1 valid, 1 test, all retrieval candidates of the same user
    data = write(tmp_path / "single.txt", ["u1 " + " ".join(str(i % 6 + 1) for i in range(12))])
    out = tmp_path / "run"
    assert train(data, out, "--epochs=1", *RAW) == 0
    ds = results(out)["protocol"]["dataset"]
    assert (ds["n_users"], ds["train_samples"], ds["valid_samples"], ds["test_samples"]) == (1, 9, 1, 1)
    # one test sample: every metric is that sample's own value (hit 0 or 1, mrr = 1/rank)
    test = results(out)["test"]
    assert test["hit@5"] in (0.0, 1.0) and test["mrr@5"] in {0.0, 1.0, 0.5, 0.3333, 0.25, 0.2}
    ft = tmp_path / "ft"  # FTragrec: a query may only retrieve the user's own shorter prefixes
    assert train(data, ft, "--epochs=1", *RAW, *FT, f"--pretrained={out / 'best_model'}") == 0
    row = json.loads((ft / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= row["fallback_fraction"] <= 1.0


def test_mixed_short_users_duplicates_and_eval_only_items(tmp_path):
    data = write(
        tmp_path / "mixed.txt",
        [
            "a 1 2 3 4 5 6",  # 5 samples: 3 train, valid, test
            "b 2 2 2 3",  # duplicates kept: 3 samples
            "c 1 3 9",  # item 9 only ever a test target: 2 samples, train + test, no valid
            "d 4 5",  # 1 sample: train only
            "e 6",  # no sample
            "f 1 2 3 8",  # item 8 only as f's test target
        ],
    )
    out = tmp_path / "run"
    assert train(data, out, "--epochs=1", *RAW) == 0
    ds = results(out)["protocol"]["dataset"]
    assert (ds["n_users"], ds["n_items"], ds["n_interactions"]) == (6, 9, 20)
    assert (ds["train_samples"], ds["valid_samples"], ds["test_samples"]) == (3 + 1 + 1 + 1 + 1, 3, 4)


@pytest.mark.parametrize(
    "lines,split,need",
    [
        ([f"{u} {u} {u + 1} {u + 2}" for u in range(1, 20)], "valid", 4),  # 3 interactions each: no valid sample
        ([f"{u} {u} {u + 1}" for u in range(1, 20)], "valid", 4),  # 2 each: train only
    ],
)
def test_no_evaluation_samples_is_refused_before_training(lines, split, need, tmp_path, capsys):
    data = write(tmp_path / "short.txt", lines)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train(data, out, "--epochs=1", *RAW)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"short.txt: no {split} samples" in err and f"at least {need} interactions" in err
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
