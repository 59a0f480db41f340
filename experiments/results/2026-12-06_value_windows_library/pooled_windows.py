"""Per-user test ranks of the untrained g and the three contrastive g with kNN-LM value windows of m items, each g
at the temperature and alpha stored in its (tuned) model directory, then paired sign tests: per seed, and pooled
over the seeds (significance.pooled_sign_test), trained against untrained.

    python experiments/results/2026-12-06_value_windows_library/pooled_windows.py DATASET M UNTRAINED_DIR \
        SEED=TRAINED_DIR [SEED=TRAINED_DIR ...] --json pooled_DATASET_mM.json [--data FILE]

--data gives every model one dataset file: models trained on the embedded Beauty copy store "" and those trained on
../shared's file store its path, and the dataset check compares the stored strings.
"""

import argparse

from experiments.compare import model_ranks
from ftragrec_jax.atomic import write_json_atomic
from ftragrec_jax.significance import paired_hits, paired_ndcg, pooled_sign_test

KS = (5, 10, 20, 50)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dataset")
    p.add_argument("m", type=int)
    p.add_argument("untrained")
    p.add_argument("trained", nargs="+", help="SEED=MODEL_DIR")
    p.add_argument("--json", required=True)
    p.add_argument("--data", help="dataset file for every model (default: the path each model stores)")
    a = p.parse_args()
    over = [f"knn_value_window={a.m}"]
    shared, base = model_ranks(a.untrained, "test", a.data, overrides=over, show_progress=False)
    ranks = {}
    for item in a.trained:
        seed, path = item.split("=", 1)
        ranks[seed] = model_ranks(path, "test", a.data, overrides=over, show_progress=False, shared=shared)[1]
    out = {
        "dataset": a.dataset,
        "knn_value_window": a.m,
        "users": int(len(base)),
        "data": a.data,
        "untrained": a.untrained,
        "trained": dict(item.split("=", 1) for item in a.trained),
        "per_seed": {s: {"hits": paired_hits(base, r, KS), "ndcg": paired_ndcg(base, r, KS)} for s, r in ranks.items()},
        # a = the untrained g, b = the trained seeds
        "pooled": pooled_sign_test(base, list(ranks.values()), KS),
    }
    write_json_atomic(a.json, out)
    for key in ("hit@10", "ndcg@10", "hit@50"):
        v = out["pooled"][key]
        print(
            f"{a.dataset} m={a.m} {key}: untrained {v['a']:.4f} trained mean {v['b_mean']:.4f} "
            f"users {v['a_better']} / {v['b_better']} p {v['p_value']:.3g}"
        )


if __name__ == "__main__":
    main()
