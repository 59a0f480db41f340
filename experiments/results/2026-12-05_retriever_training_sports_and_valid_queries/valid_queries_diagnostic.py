"""Diagnostic: fine-tune g on queries that are out of sample for the frozen backbone (half A of the validation
users), select the epoch on half B, test on every user. Usage: CONFIG OUT_DIR [--set k=v ...]"""
import dataclasses, sys, logging
import numpy as np
from ftragrec_jax.config import load_config
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.train.ftragrec_task import FTragrecTask
from ftragrec_jax.train.loop import Trainer
from ftragrec_jax.train.run_dir import RunDir, close_log

config, out, *rest = sys.argv[1:]
overrides = [a.split("=", 1)[1] if a.startswith("--set=") else a for a in rest if a != "--set"]
cfg = load_config(config, overrides + [f"output_dir={out}", "cache_seq_output=false", "show_progress=false"])
dataset = dataset_from_config(cfg)
run = RunDir.for_config(cfg); run.check_or_write_config(cfg); log = run.open_log()
task = FTragrecTask(cfg, dataset)
n = len(dataset.valid)
perm = np.random.default_rng(0).permutation(n)
a, b = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
loop_ds = dataclasses.replace(dataset, train=dataset.valid.take(a), valid=dataset.valid.take(b))
res = Trainer(cfg, task, loop_ds, run, log).fit()
close_log(log)
print({k: res["test"][k] for k in ("hit@5", "hit@10", "ndcg@5", "ndcg@10")})
