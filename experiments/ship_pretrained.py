"""Ship a trained model directory in the package, with its provenance, so that `builtin:NAME` loads it.

    python -m experiments.ship_pretrained --run /work/runs/beauty-duorec-s2020 --name beauty \
        --command "python -m experiments.train --config experiments/configs/beauty_duorec.yaml \
                   --set seed=2020 --set data="

Copies RUN/best_model to ftragrec_jax/pretrained/NAME/ and writes PROVENANCE.json beside it: the command, the
commit it is shipped from, the run's seed, selection, epochs and valid/test metrics (RUN/results.json), the
parameters' SHA-256 (model.json), and the model's MRR@10 / NDCG@10 / HR@10 on the first SLICE validation
users, which tests/test_pretrained.py recomputes to show that the shipped files still give the run's numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

from experiments.cli_common import fail

SLICE = 2000  # validation users the shipped model is re-scored on by the tests: seconds on a CPU


def slice_metrics(model, n: int, data=None) -> dict:
    """MRR@10, NDCG@10 and HR@10 of a model directory on the first n samples of its validation split, unrounded
    (the project's per-user metric formulas over the 1-based target ranks; each user's rank does not depend on
    the batch it is scored in), so a test can compare them to 1e-6."""
    import dataclasses

    import numpy as np

    from ftragrec_jax.evaluation import split_ranks
    from ftragrec_jax.metrics import single_target_metrics, summarize
    from ftragrec_jax.scoring import load_model_dir

    m = load_model_dir(model, data=data, show_progress=False)
    dataset = dataclasses.replace(m.dataset, valid=m.dataset.valid.take(np.arange(min(n, len(m.dataset.valid)))))
    rank = np.asarray(split_ranks(m.scorer, dataset, "valid", m.cfg, mesh=m.mesh, show_progress=False))
    means = summarize(single_target_metrics(rank, (10,)), (10,), columns=[0], decimals=15)
    return {
        "split": "valid",
        "first_samples": int(len(rank)),
        **{key: means[key] for key in ("mrr@10", "ndcg@10", "hit@10")},
    }


def main(argv=None) -> int:
    from ftragrec_jax.atomic import write_json_atomic
    from ftragrec_jax.model_dir import builtin_root, read_meta

    ap = argparse.ArgumentParser(prog="python -m experiments.ship_pretrained", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="run folder (RUN/best_model, RUN/results.json)")
    ap.add_argument("--name", required=True, help="the NAME of builtin:NAME")
    ap.add_argument("--command", required=True, help="the command that trained the run, for the record")
    ap.add_argument("--slice", type=int, default=SLICE, help="validation samples re-scored by the tests")
    ap.add_argument(
        "--trained-at",
        default=None,
        metavar="COMMIT",
        help="the commit the run was trained at, when not the one shipping it",
    )
    args = ap.parse_args(argv)
    run = Path(args.run)
    results = json.loads((run / "results.json").read_text())
    src = run / "best_model"
    meta = read_meta(src)
    dest = builtin_root() / args.name
    tmp = dest.with_name(f".{args.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    provenance = {
        "name": f"builtin:{args.name}",
        "command": args.command,
        "trained_at_commit": args.trained_at or commit,
        "shipped_from_commit": commit,
        "shipped_on": datetime.date.today().isoformat(),
        "seed": results.get("seed"),
        "selected": results.get("selected"),
        "epochs_run": results.get("epochs_run"),
        "stopped": results.get("stopped"),
        "train_time_s": results.get("train_time_s"),
        "valid": results.get("valid"),
        "test": results.get("test"),
        "params_sha256": meta.get("params_sha256"),
        "dataset": meta.get("dataset"),
        "slice": slice_metrics(tmp, args.slice),
    }
    write_json_atomic(tmp / "PROVENANCE.json", provenance)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    print(json.dumps({k: provenance[k] for k in ("name", "selected", "slice")}, indent=1))
    test = provenance["test"] or {}
    print(f"shipped {dest}: test hit@10 {test.get('hit@10')}, ndcg@10 {test.get('ndcg@10')}")
    return 0


if __name__ == "__main__":
    from ftragrec_jax.errors import FtragrecError

    try:
        sys.exit(main())
    except (FtragrecError, OSError, ValueError) as e:
        fail(str(e))
