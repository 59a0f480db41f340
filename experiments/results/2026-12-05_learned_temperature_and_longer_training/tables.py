"""Print the results file's tables (Markdown) from the run folders, the evaluation-time temperature sweep and the
`experiments.compare` JSONs.

python experiments/results/2026-12-05_learned_temperature_and_longer_training/tables.py /work/runs
"""

import json
import re
import sys
from pathlib import Path

METRICS = ("hit@5", "hit@10", "ndcg@5", "ndcg@10", "hit@50", "ndcg@50")


def main(root: Path):
    print("| model | HR@5 | HR@10 | NDCG@5 | NDCG@10 | HR@50 | NDCG@50 |\n|---|---|---|---|---|---|---|")
    references = [
        ("Beauty, g frozen (T 0.07)", root / "obj/frozen_g/results.json"),
        ("Beauty, contrastive s2020 (T 0.07)", root / "vq2/beauty_contrastive_s2020/results.json"),
    ]
    runs = [(p.parent.name, p) for p in sorted((root / "lt").glob("*/results.json"))]
    for name, path in references + runs:
        test = json.loads(path.read_text())["test"]
        print(f"| {name} | " + " | ".join(f"{test[k]:.4f}" for k in METRICS) + " |")
    print()
    print("| model | T at evaluation | valid NDCG@10 | test HR@10 | test NDCG@10 | test HR@50 |")
    print("|---|---|---|---|---|---|")
    for path in sorted((root / "temp").glob("*.json")):
        d = json.loads(path.read_text())
        model, t = re.match(r"(.*)_T([0-9.]+)\.json", path.name).groups()
        v, test = d["valid"], d["test"]
        print(
            f"| {model} | {t} | {v['ndcg@10']:.4f} | {test['hit@10']:.4f} | {test['ndcg@10']:.4f} | "
            f"{test['hit@50']:.4f} |"
        )
    print()
    for path in sorted((root / "lt").glob("cmp*.json")):
        d = json.loads(path.read_text())
        h = {r["k"]: r for r in d["rows"]}
        n = {r["k"]: r for r in d["ndcg_rows"]}
        print(
            f"{path.name} HR@10 {h[10]['a_only']} / {h[10]['b_only']} p {h[10]['p_value']:.3g} | "
            f"NDCG@10 {n[10]['a_better']} / {n[10]['b_better']} p {n[10]['p_value']:.3g} | "
            f"HR@50 {h[50]['a_only']} / {h[50]['b_only']} p {h[50]['p_value']:.2g} | "
            f"NDCG@5 {n[5]['a_better']} / {n[5]['b_better']} p {n[5]['p_value']:.2g}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
