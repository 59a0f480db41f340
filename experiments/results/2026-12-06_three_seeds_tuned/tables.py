"""Print the tables of 2026-12-06_three_seeds_tuned.md from the raw files beside this script (and seed 2020's
tuning, from 2026-12-06_validation_chosen_inference_settings/).

python experiments/results/2026-12-06_three_seeds_tuned/tables.py
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EARLIER = HERE.parent / "2026-12-06_validation_chosen_inference_settings" / "tune"
METRICS = ("hit@5", "hit@10", "ndcg@5", "ndcg@10", "hit@50")


def load(path):
    return json.loads(Path(path).read_text())


def row(dataset, label, t):
    best = ", ".join(str(v) for v in t["best"].values())
    cells = " | ".join(f"{t['test'][m]:.4f}" for m in METRICS)
    return f"| {dataset} | {label} | {best} | {t['best_valid']['ndcg@10']:.4f} | {cells} |"


def tuned_table():
    print("| dataset | g | chosen T, alpha | valid NDCG@10 (held-out) | HR@5 | HR@10 | NDCG@5 | NDCG@10 | HR@50 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ds in ("beauty", "sports"):
        name = ds.capitalize()
        print(row(name, "untrained (earlier tuning)", load(EARLIER / f"{ds}_untrained.json")))
        print(row(name, "contrastive s2020 (earlier run and tuning)", load(EARLIER / f"{ds}_contrastive_s2020.json")))
        # seed 2020 retrained here, stored at the earlier tuning's choice (one-point grid): the model of the
        # paired tests and of the mean below
        print(row(name, "contrastive s2020 (re-run)", load(HERE / "tune" / f"{ds}_contrastive_s2020_rerun.json")))
        for seed in (2021, 2022):
            print(row(name, f"contrastive s{seed}", load(HERE / "tune" / f"{ds}_contrastive_s{seed}.json")))
        pooled = load(HERE / f"pooled_{ds}.json")["pooled"]
        mean = " | ".join(f"{pooled[m]['trained_mean']:.4f}" for m in METRICS)
        print(f"| {name} | contrastive, mean of 3 (re-run s2020, s2021, s2022) | | | {mean} |")
        base = " | ".join(f"{pooled[m]['untrained']:.4f}" for m in METRICS)
        print(f"| {name} | untrained, evaluated here at its choice | | | {base} |")


def paired_table():
    print("| dataset | B | HR@10 A-only / B-only, p | NDCG@5 A better / B better, p | NDCG@10 | HR@50 |")
    print("|---|---|---|---|---|---|")
    for ds in ("beauty", "sports"):
        path = HERE / f"pooled_{ds}.json"
        if not path.exists():
            continue
        c = load(path)
        for seed, r in c["per_seed"].items():
            hit = {x["k"]: f"{x['a_only']} / {x['b_only']}, {x['p_value']:.2g}" for x in r["hits"]}
            ndcg = {x["k"]: f"{x['a_better']} / {x['b_better']}, {x['p_value']:.2g}" for x in r["ndcg"]}
            print(f"| {ds.capitalize()} | {seed} | {hit[10]} | {ndcg[5]} | {ndcg[10]} | {hit[50]} |")
        p = c["pooled"]
        cells = [
            f"{p[k]['untrained_better']} / {p[k]['trained_better']}, {p[k]['p_value']:.2g}"
            for k in ("hit@10", "ndcg@5", "ndcg@10", "hit@50")
        ]
        print(f"| {ds.capitalize()} | mean of the 3 seeds per user | " + " | ".join(cells) + " |")


def wide_table():
    for ds in ("beauty", "sports"):
        path = HERE / "tune" / f"{ds}_untrained_wide.json"
        if path.exists():
            print(row(ds.capitalize(), "untrained, wide grid", load(path)))


if __name__ == "__main__":
    tuned_table()
    print()
    paired_table()
    print()
    wide_table()
    sys.exit(0)
