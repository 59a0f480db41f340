"""XLA memory analysis of the DuoRec gradient alone and of the full step, with and without the same-target
(semantic) pass, at 10^6 items:  python experiments/results/2026-12-05_scale_cpu/duorec_grad_memory_analysis.py
"""
import sys, tempfile, numpy as np, jax
from pathlib import Path
from experiments.scale import synthetic_log
from ftragrec_jax.config import Config
from ftragrec_jax.data.dataset import load_dataset
from ftragrec_jax.data.batches import iterate_batches
from ftragrec_jax.train.duorec_task import DuoRecTask
from ftragrec_jax.models.duorec import duorec_loss
with tempfile.TemporaryDirectory() as tmp:
    p = Path(tmp) / "s.txt"
    synthetic_log(p, 1_000_000, 1_000_000, mean_len=10.0, zipf=1.0, seed=0)
    ds = load_dataset(p, max_seq_length=50, min_user_inter_num=0, min_item_inter_num=0)
GB = 1e9
for lmd in (0.1, 0.0):
    cfg = Config(model="duorec", data="x", item_chunk_size=65536, lmd_sem=lmd, show_progress=False).validate()
    task = DuoRecTask(cfg, ds)
    params, opt = task.init()
    b = next(iterate_batches(ds.train, 256, seed=0))
    b = {k: b[k].astype(np.int32) if b[k].dtype == np.int64 else b[k] for k in task.batch_fields}
    def grad_only(p, batch, key, data):
        return jax.grad(lambda q: duorec_loss(task.merge(q), batch, key, lmd_sem=lmd, tau=1.0, same_target=data, item_chunk_size=65536)[0])(p)
    m = jax.jit(grad_only).lower(params, b, jax.random.key(0), task.step_data()).compile().memory_analysis()
    print(f"lmd_sem {lmd} grad only: args {m.argument_size_in_bytes/GB:.2f} out {m.output_size_in_bytes/GB:.2f} temp {m.temp_size_in_bytes/GB:.2f}")
    m = jax.jit(task.train_step, donate_argnums=(0, 1)).lower(params, opt, b, jax.random.key(0), task.step_data()).compile().memory_analysis()
    print(f"lmd_sem {lmd} full step: args {m.argument_size_in_bytes/GB:.2f} out {m.output_size_in_bytes/GB:.2f} temp {m.temp_size_in_bytes/GB:.2f}")
