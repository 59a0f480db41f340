"""FTragrec fine-tuning through the trainer on a 1-device and a 4-device mesh (exact backend, keys refreshed
between epochs); prints per-epoch losses, valid metrics, final retriever parameters' difference and how often
the sharded search was traced. Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 (tests do).

    python tests/scripts/sharded_ftragrec_run.py WORKDIR
"""

import json
import sys
from pathlib import Path

import numpy as np

from ftragrec_jax.models import search
from tests.test_train import TINY, final_params, metrics_lines, write_lines_dataset

traced = {"sharded": 0}
_search = search.sharded_exact_search


def counting_search(*args, **kwargs):
    traced["sharded"] += 1
    return _search(*args, **kwargs)


search.sharded_exact_search = counting_search


def train(work: Path, data: Path, out: str, *extra) -> Path:
    from experiments.train import main

    empty = work / "defaults.yaml"
    empty.write_text("# the Config defaults\n")
    args = [
        "--config",
        str(empty),
        "--set",
        f"data={data}",
        "--set",
        f"output_dir={work / out}",
        *[f"--{x}" for x in TINY],
        *extra,
    ]
    assert main(args) == 0
    return work / out


work = Path(sys.argv[1])
data = write_lines_dataset(work / "tiny.txt")
backbone = train(work, data, "duorec", "--epochs=1", "--mesh=1")
ft = [
    "--model=ftragrec",
    "--top_k=3",
    "--retriever_inner_size=16",
    "--retriever_update_interval=1",
    "--retrieval_backend=exact",
    "--epochs=2",
    f"--pretrained={backbone / 'best_model'}",
]
runs, counts = {}, {}
for n in (1, 4):
    traced["sharded"] = 0
    runs[n] = train(work, data, f"ft{n}", *ft, f"--mesh={n}")
    counts[n] = traced["sharded"]
p1, p4 = final_params(runs[1]), final_params(runs[4])
retriever = [k for k in p1 if k[0] == "retriever"]
diff = max(float(np.max(np.abs(p1[k] - p4[k]))) for k in retriever)
results = {n: json.loads((runs[n] / "results.json").read_text()) for n in runs}
print(
    json.dumps(
        {
            "metrics_1": metrics_lines(runs[1]),
            "metrics_4": metrics_lines(runs[4]),
            "test_1": results[1]["test"],
            "test_4": results[4]["test"],
            "retriever_leaves": len(retriever),
            "retriever_max_abs_diff": diff,
            "sharded_traces_1": counts[1],
            "sharded_traces_4": counts[4],
        }
    )
)
