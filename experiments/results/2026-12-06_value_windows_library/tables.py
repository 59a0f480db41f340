"""Print this folder's tables from its raw JSON files (tune/*.json, pooled_*.json).

    python experiments/results/2026-12-06_value_windows_library/tables.py
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
COLS = ("hit@5", "hit@10", "ndcg@5", "ndcg@10", "hit@50")


def tune_rows():
    print("| run | chosen | valid NDCG@10 (chosen) | " + " | ".join(f"test {c}" for c in COLS) + " |")
    print("|---" * (3 + len(COLS)) + "|")
    for path in sorted((HERE / "tune").glob("*.json")):
        d = json.loads(path.read_text())
        chosen = ", ".join(f"{k} {v}" for k, v in d["best"].items())
        test = d.get("test", {})
        cells = " | ".join(f"{test[c]:.4f}" if c in test else "" for c in COLS)
        print(f"| {path.stem} | {chosen} | {d['best_valid']['ndcg@10']:.4f} | {cells} |")


def window_points():
    """Per tune run, valid NDCG@10 / HR@10 / HR@50 of each window at the chosen temperature and alpha."""
    for path in sorted((HERE / "tune").glob("*.json")):
        d = json.loads(path.read_text())
        rest = {k: v for k, v in d["best"].items() if k != "knn_value_window"}
        same = [p for p in d["points"] if all(p["settings"].get(k) == v for k, v in rest.items())]
        cells = "; ".join(
            f"m {p['settings']['knn_value_window']}: {p['valid']['ndcg@10']:.4f} / {p['valid']['hit@10']:.4f} / "
            f"{p['valid']['hit@50']:.4f}"
            for p in same
        )
        print(f"{path.stem}: {cells}")


def pooled_rows():
    for path in sorted(HERE.glob("pooled_*.json")):
        d = json.loads(path.read_text())
        for key in ("hit@10", "ndcg@10", "hit@50"):
            v = d["pooled"][key]
            seeds = ", ".join(
                f"{s}: {r['ndcg'][1]['ndcg_b']:.4f}" if key == "ndcg@10" else f"{s}"
                for s, r in d["per_seed"].items()
            )
            print(
                f"{path.stem} {key}: untrained {v['a']:.4f}, trained mean {v['b_mean']:.4f}, users "
                f"{v['a_better']} untrained better / {v['b_better']} trained better, p {v['p_value']:.3g}"
                + (f" (per seed NDCG@10 {seeds})" if key == "ndcg@10" else "")
            )
        for s, r in d["per_seed"].items():
            n = r["ndcg"][1]
            h = r["hits"][1]
            print(
                f"  seed {s}: HR@10 {h['hit_b']:.4f} ({h['a_only']} / {h['b_only']}, p {h['p_value']:.3g}), "
                f"NDCG@10 {n['ndcg_b']:.4f} ({n['a_better']} / {n['b_better']}, p {n['p_value']:.3g})"
            )


if __name__ == "__main__":
    tune_rows()
    print()
    window_points()
    print()
    pooled_rows()
