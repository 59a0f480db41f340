"""Print the tables of 2026-12-06_validation_chosen_inference_settings.md from the raw files beside this script.

python experiments/results/2026-12-06_validation_chosen_inference_settings/tables.py
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(name):
    return json.loads((HERE / name).read_text())


def tuned_rows():
    for dataset in ("beauty", "sports"):
        for label, name in (
            ("untrained", f"{dataset}_untrained"),
            ("contrastive s2020", f"{dataset}_contrastive_s2020"),
        ):
            path = HERE / "tune" / f"{name}.json"
            if not path.exists():
                continue
            t = json.loads(path.read_text())
            best, test = t["best"], t["test"]
            cells = [f"{test[m]:.4f}" for m in ("hit@5", "hit@10", "ndcg@5", "ndcg@10", "hit@50")]
            print(
                f"| {dataset.capitalize()} | {label} | {best['retriever_temperature']}, {best['alpha']} | "
                f"{t['best_valid']['ndcg@10']:.4f} | " + " | ".join(cells) + " |"
            )


def paired_rows():
    print("| dataset | HR@5 A-only / B-only, p | HR@10 | NDCG@5 A better / B better, p | NDCG@10 | HR@50 |")
    print("|---|---|---|---|---|---|")
    for dataset in ("beauty", "sports"):
        path = HERE / "tune" / f"cmp_{dataset}_s2020.json"
        if not path.exists():
            continue
        c = json.loads(path.read_text())
        hit = {r["k"]: f"{r['a_only']} / {r['b_only']}, {r['p_value']:.2g}" for r in c["rows"]}
        ndcg = {r["k"]: f"{r['a_better']} / {r['b_better']}, {r['p_value']:.2g}" for r in c["ndcg_rows"]}
        print(f"| {dataset.capitalize()} | {hit[5]} | {hit[10]} | {ndcg[5]} | {ndcg[10]} | {hit[50]} |")


if __name__ == "__main__":
    tuned_rows()
    print()
    paired_rows()
    sys.exit(0)
