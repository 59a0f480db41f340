"""DuoRec's train step (same-target sampling, the three passes fused and length-bucketed) on a 1-device and a
4-device mesh with dropout off: the step metrics and parameters after a few steps, and what each compiled
step does: the shapes it all-gathers and how many length-bucket conditionals a device runs. Prints one JSON
line. Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 (tests/test_scale_out.py does).

    python tests/scripts/sharded_duorec_step.py WORKDIR
"""

import json
import re
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from ftragrec_jax import parallel
from ftragrec_jax.config import load_config
from ftragrec_jax.data.batches import iterate_batches
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.train.pipeline import make_task
from tests.test_train import TINY, write_lines_dataset

jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py sets it

# 256 rows: 3 x 256 fused rows are 12 chunks of 64 on one device, 192 rows = 3 chunks on each of 4
BATCH, STEPS = 256, 2
work = Path(sys.argv[1])
data = write_lines_dataset(work / "tiny.txt", n_users=120)  # ~650 training samples: 2 full batches
# length 20 > the smallest buckets: the bucketed encoder has budgets to choose from
common = [
    *TINY,
    "MAX_ITEM_LIST_LENGTH=20",
    f"data={data}",
    f"train_batch_size={BATCH}",
    "hidden_dropout_prob=0",
    "attn_dropout_prob=0",
    "lmd_sem=0.1",
]
dataset = dataset_from_config(load_config(None, [*common, "mesh=1"]))
assert len(dataset.train) >= BATCH * STEPS, len(dataset.train)


def all_gathers(hlo: str) -> list[str]:
    """Result shapes ("s32[768,20]") of every all-gather in a compiled module."""
    shapes = []
    for line in hlo.splitlines():
        if re.search(r"\ball-gather(-start)?\(", line):
            result = line.split("=", 1)[1].split("all-gather")[0]
            shapes += [f"{t}[{d}]" for t, d in re.findall(r"\b([a-z]+\d+)\[([\d,]*)\]", result)]
    return shapes


def chunk_loops(hlo: str) -> list[int]:
    """Trip counts of the compiled while loops: the bucketed encoder scans over its row chunks."""
    return sorted(int(n) for n in re.findall(r'known_trip_count":\{"n":"(\d+)"', hlo))


def run(n_devices: int) -> dict:
    cfg = load_config(None, [*common, f"mesh={n_devices}"])
    task = make_task(cfg, dataset)
    mesh = task.mesh
    params, opt_state = parallel.replicate(task.init(), mesh)
    sampler = parallel.place_step_data(task.step_data(), mesh)
    step = jax.jit(task.train_step)
    base_key = jax.random.key(cfg.seed, impl="unsafe_rbg")
    metrics, hlo = [], None
    batches = iterate_batches(dataset.train, BATCH, seed=cfg.seed, epoch=0)
    for i, batch in zip(range(STEPS), batches):
        fed = parallel.put_batch(
            {k: batch[k].astype(np.int32) if batch[k].dtype == np.int64 else batch[k] for k in task.batch_fields}, mesh
        )
        key = jax.random.fold_in(base_key, i)
        if hlo is None:
            hlo = step.lower(params, opt_state, fed, key, sampler).compile().as_text()
        params, opt_state, m = step(params, opt_state, fed, key, sampler)
        metrics.append({k: float(v) for k, v in m.items()})
    flat = {
        "/".join(map(str, p)): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(jax.device_get(params)))[0]
    }
    return {
        "mesh": mesh.size,
        "metrics": metrics,
        "params": flat,
        "all_gathers": all_gathers(hlo),
        "conditionals": hlo.count(" conditional("),
        "chunk_loops": chunk_loops(hlo),
    }


one, four = run(1), run(4)
diffs = {k: float(np.max(np.abs(one["params"][k] - four["params"][k]))) for k in one["params"]}
out = {"devices": jax.device_count(), "param_max_abs_diff": diffs}
for r in (one, four):
    out.update({f"{k}_{r['mesh']}": r[k] for k in ("metrics", "all_gathers", "conditionals", "chunk_loops")})
print(json.dumps(out))
