"""Rebuild the representation-fusion tables of the results file from run folders and `experiments.compare` JSONs.

python experiments/results/2026-12-05_learnable_alpha_and_design_objective_valid_queries/tables.py runs/vq3
"""

import json
import sys
from pathlib import Path

RUNS = {  # row label -> (run folder, comparison JSON against the frozen g of the same dataset, or None)
    "Beauty, g frozen": ("beauty_repr_frozen", None),
    "Beauty, contrastive, s2020": ("beauty_repr_contrastive_s2020", "cmp_repr_frozen_vs_contrastive"),
    "Beauty, design, s2020": ("beauty_repr_design_s2020", "cmp_repr_frozen_vs_design"),
    "Beauty, design, s2021": ("beauty_repr_design_s2021", "cmp_repr_frozen_vs_design_s2021"),
    "Beauty, design, s2022": ("beauty_repr_design_s2022", "cmp_repr_frozen_vs_design_s2022"),
    "Sports, g frozen": ("sports_repr_frozen", None),
    "Sports, design, s2020": ("sports_repr_design_s2020", "cmp_sports_repr_frozen_vs_design_s2020"),
    "Sports, design, s2021": ("sports_repr_design_s2021", "cmp_sports_repr_frozen_vs_design_s2021"),
    "Sports, design, s2022": ("sports_repr_design_s2022", "cmp_sports_repr_frozen_vs_design_s2022"),
}
METRICS = ("hit@5", "hit@10", "ndcg@5", "ndcg@10", "hit@50", "ndcg@50")


def main(root: Path):
    print("| run | " + " | ".join(m.replace("hit", "HR").replace("ndcg", "NDCG") for m in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for label, (run, _) in RUNS.items():
        res = root / run / "results.json"
        if res.exists():
            test = json.loads(res.read_text())["test"]
            print(f"| {label} | " + " | ".join(f"{test[m]:.4f}" for m in METRICS) + " |")
    print()
    print(
        "| trained run | HR@10 frozen-only / trained-only, p | NDCG@10 frozen better / trained better, p |"
        " NDCG@5, p | HR@50, p |"
    )
    print("|---|---|---|---|---|")
    for label, (_, cmp) in RUNS.items():
        path = root / f"{cmp}.json" if cmp else None
        if path is None or not path.exists():
            continue
        d = json.loads(path.read_text())
        hit = {r["k"]: r for r in d["rows"]}
        ndcg = {r["k"]: r for r in d["ndcg_rows"]}
        print(
            f"| {label} | {hit[10]['a_only']} / {hit[10]['b_only']}, {hit[10]['p_value']:.2g} | "
            f"{ndcg[10]['a_better']} / {ndcg[10]['b_better']}, {ndcg[10]['p_value']:.2g} | "
            f"{ndcg[5]['a_better']} / {ndcg[5]['b_better']}, {ndcg[5]['p_value']:.2g} | "
            f"{hit[50]['a_only']} / {hit[50]['b_only']}, {hit[50]['p_value']:.2g} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
