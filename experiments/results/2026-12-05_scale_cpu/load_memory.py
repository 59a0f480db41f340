import sys, time, resource, tempfile
from pathlib import Path
from experiments.scale import synthetic_log
n = int(float(sys.argv[1])); items = int(float(sys.argv[2]))
with tempfile.TemporaryDirectory(dir="/work/tmp") as tmp:
    p = Path(tmp) / "s.txt"
    synthetic_log(p, n, items, mean_len=10.0, zipf=1.0, seed=0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from ftragrec_jax.data.dataset import load_dataset
    t0 = time.perf_counter()
    ds = load_dataset(p, max_seq_length=50, min_user_inter_num=0, min_item_inter_num=0)
    t = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import os
    rss = int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * 4096 / 2**20
    print(f"n {n} items {items}: load {t:.1f}s peak {peak:.0f} MB (before {base:.0f}) after {rss:.0f} MB; samples {len(ds.train)}")
# Usage (from the repository root): python experiments/results/2026-12-05_scale_cpu/load_memory.py 1e7 1e6
# (writes the synthetic log under /work/tmp; change dir= for another machine)
