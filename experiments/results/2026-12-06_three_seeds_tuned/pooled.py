"""Per-user test ranks of the untrained g and the three trained (contrastive, validation-query) g, each at its
own validation-chosen temperature and alpha; paired sign tests per seed and pooled over the seeds.

    python experiments/results/2026-12-06_three_seeds_tuned/pooled.py DATASET UNTRAINED_MODEL T A \
        SEED=TUNED_MODEL [SEED=TUNED_MODEL ...] --out ranks_DATASET.npz --json pooled_DATASET.json

Pooled: a user's NDCG@10 (HR@10) under the trained g is the mean over the seeds; the sign test counts the
users whose mean is above / below the untrained g's value (users with equal values carry no evidence).
"""

import argparse
import sys

import numpy as np

from experiments.compare import model_ranks
from ftragrec_jax.atomic import write_json_atomic
from ftragrec_jax.significance import paired_hits, paired_ndcg, pooled_sign_test

KS = (5, 10, 20, 50)


def pooled_tests(base, trained):
    """Per metric@K: the untrained g's mean, the trained seeds' mean, and the sign test of the per-user mean over
    the seeds against the untrained g's value (significance.pooled_sign_test, under this file's key names).
    base: ranks [N]; trained: list of ranks [N] (1-based)."""
    names = {"a": "untrained", "b_mean": "trained_mean", "a_better": "untrained_better", "b_better": "trained_better"}
    return {
        metric: {names.get(k, k): v for k, v in row.items()}
        for metric, row in pooled_sign_test(base, trained, KS).items()
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dataset")
    p.add_argument("untrained")
    p.add_argument("temperature")
    p.add_argument("alpha")
    p.add_argument("trained", nargs="+", help="SEED=MODEL_DIR (tuned: settings stored in model.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--json", required=True)
    a = p.parse_args()
    over = [f"retriever_temperature={a.temperature}", f"alpha={a.alpha}"]
    shared, r0 = model_ranks(a.untrained, "test", overrides=over, show_progress=False)
    ranks = {"untrained": np.asarray(r0, np.int64)}
    for item in a.trained:
        seed, path = item.split("=", 1)
        _, r = model_ranks(path, "test", show_progress=False, shared=shared)
        ranks[f"s{seed}"] = np.asarray(r, np.int64)
    np.savez_compressed(a.out, **{k: v.astype(np.int32) for k, v in ranks.items()})
    base = ranks["untrained"]
    seeds = [k for k in ranks if k != "untrained"]
    out = {"dataset": a.dataset, "users": int(base.size), "untrained": {"model": a.untrained, "overrides": over}}
    out["per_seed"] = {
        s: {"hits": paired_hits(base, ranks[s], KS), "ndcg": paired_ndcg(base, ranks[s], KS)} for s in seeds
    }
    pooled = pooled_tests(base, [ranks[s] for s in seeds])
    out["pooled"] = pooled
    write_json_atomic(a.json, out)
    for key, v in pooled.items():
        print(
            f"{a.dataset} {key:9s} untrained {v['untrained']:.4f} trained mean {v['trained_mean']:.4f}  "
            f"users {v['untrained_better']} / {v['trained_better']}  p {v['p_value']:.3g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
