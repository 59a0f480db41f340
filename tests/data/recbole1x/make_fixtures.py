"""Regenerate the RecBole 1.x fixtures: SASRec checkpoints saved by RecBole 1.2.1's own trainer, and the
metrics it printed for them.

Not run by the tests, and it needs what the project does not depend on. How the committed files were made
(Python 3.11, in a scratch virtualenv outside the project):

    python -m venv /tmp/rb121 && /tmp/rb121/bin/pip install "recbole==1.2.1" "numpy<2" "pandas<3" \
        "setuptools<81" torch==2.13.0
    /tmp/rb121/bin/python tests/data/recbole1x/make_fixtures.py tests/data/recbole1x

Files:
- events.inter: 800-odd synthetic interactions (numpy default_rng(11); items follow a noisy chain, so a
  model learns something; timestamps seconds apart, so float32 merges many of them unless they are min-max
  normalised first; rows shuffled, so merged times keep a non-chronological file order). Synthetic, so it
  can be committed (MovieLens may not be redistributed).
- CASES below: one RecBole run each, on events.inter copied to <dataset>/<dataset>.inter. Both use RecBole's
  sample.yaml dataset defaults, with load_col naming the timestamp (the default loads only user and item,
  which a sequential model refuses). "shop" adds 1.x k-core intervals and a shorter MAX_ITEM_LIST_LENGTH;
  "norm" sets normalize_all, as RecBole's bundled settings for a dataset named ml-100k do (the name itself
  cannot be used here: for "ml-100k" RecBole 1.2.1 reads its own bundled copy of the data, whatever
  data_path says).
- <case>.pth: the best-validation checkpoint RecBole's trainer saved; metrics.json: the valid and test
  results run_recbole returned (RecBole rounds them to metric_decimal_place=4), with the versions used.

torch >= 2.6 loads with weights_only=True by default, which cannot read the Config object RecBole 1.2.1
pickles into its own checkpoint when it reloads the best model for the test, hence
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD below (this script trusts the file it just wrote).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402

N_USERS, N_ITEMS = 100, 70
# The model settings are small so the fixture stays a few KB; everything about the data, split and metrics
# is RecBole's default for a sequential model (eval_args LS valid_and_test, TO, full ranking).
MODEL = {
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 2,
    "n_heads": 2,
    "epochs": 40,
    "train_batch_size": 64,
    "eval_batch_size": 256,
    "train_neg_sample_args": None,
    "stopping_step": 40,
    "topk": [5, 10, 20, 50],
    "seed": 2020,
    "show_progress": False,
    "use_gpu": False,
}
CASES = {
    "shop": {
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[4,inf)",
        "item_inter_num_interval": "(2,inf)",
        "MAX_ITEM_LIST_LENGTH": 6,
    },
    "norm": {"load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]}, "normalize_all": True},
}


def write_events(path: Path) -> None:
    rng = np.random.default_rng(11)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(N_USERS):
        n = int(rng.integers(4, 13))
        t = 881250949.0 + float(rng.integers(0, 5000))
        item = int(rng.integers(0, N_ITEMS))
        for _ in range(n):
            lines.append(f"{u + 1}\t{item + 1}\t{int(rng.integers(1, 6))}\t{t:.0f}")
            step = 1 if rng.random() < 0.4 else int(rng.integers(2, N_ITEMS))  # a chain, often broken
            item = (item + step) % N_ITEMS
            t += float(rng.integers(1, 40))
    # rows out of time order, as in real exports: float32 ties (64 s apart at these magnitudes) then keep a
    # file order that is not chronological, so whether timestamps are normalised first changes the samples
    body = [lines[1 + i] for i in rng.permutation(len(lines) - 1)]
    path.write_text("\n".join([lines[0], *body]) + "\n")


def main(out: Path) -> None:
    import recbole
    import torch
    from recbole.quick_start import run_recbole

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    write_events(out / "events.inter")
    results = {"recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__, "cases": {}}
    for name, extra in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / name).mkdir()
            shutil.copy(out / "events.inter", Path(tmp) / name / f"{name}.inter")
            config = {**MODEL, **extra, "data_path": tmp, "checkpoint_dir": str(Path(tmp) / "saved")}
            res = run_recbole(model="SASRec", dataset=name, config_dict=config)
            (saved,) = (Path(tmp) / "saved").glob("*.pth")
            shutil.copy(saved, out / f"{name}.pth")
        results["cases"][name] = {
            "config": extra,
            "model": MODEL,
            "valid": {k: float(v) for k, v in res["best_valid_result"].items()},
            "test": {k: float(v) for k, v in res["test_result"].items()},
        }
    (out / "metrics.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
