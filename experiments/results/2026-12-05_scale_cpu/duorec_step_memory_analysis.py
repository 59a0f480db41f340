"""XLA memory analysis of the compiled DuoRec step on the synthetic 10^6-interaction log of experiments.scale:
    python experiments/results/2026-12-05_scale_cpu/duorec_step_memory_analysis.py ITEMS ITEM_CHUNK_SIZE
"""
import sys, tempfile, numpy as np, jax
from pathlib import Path
from experiments.scale import synthetic_log
from ftragrec_jax.config import Config
from ftragrec_jax.data.dataset import load_dataset
from ftragrec_jax.data.batches import iterate_batches
from ftragrec_jax.train.duorec_task import DuoRecTask
n_items, chunk = int(float(sys.argv[1])), int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    p = Path(tmp) / "s.txt"
    synthetic_log(p, 1_000_000, n_items, mean_len=10.0, zipf=1.0, seed=0)
    ds = load_dataset(p, max_seq_length=50, min_user_inter_num=0, min_item_inter_num=0)
cfg = Config(model="duorec", data="x", item_chunk_size=chunk if ds.n_items > chunk else 0, show_progress=False).validate()
task = DuoRecTask(cfg, ds)
params, opt = task.init()
b = next(iterate_batches(ds.train, 256, seed=0))
b = {k: b[k].astype(np.int32) if b[k].dtype == np.int64 else b[k] for k in task.batch_fields}
lowered = jax.jit(task.train_step, donate_argnums=(0, 1)).lower(params, opt, b, jax.random.key(0), task.step_data())
m = lowered.compile().memory_analysis()
GB = 1e9
print(f"n_items {ds.n_items} chunk {cfg.item_chunk_size}: args {m.argument_size_in_bytes/GB:.2f} GB, out {m.output_size_in_bytes/GB:.2f}, temp {m.temp_size_in_bytes/GB:.2f}, alias {m.alias_size_in_bytes/GB:.2f}, table {ds.n_items*64*4/GB:.3f} GB")
