"""Tables of the learnable_temperature runs and the evaluation-time temperature sweep (printed as Markdown)."""
import json, pathlib, re
R = pathlib.Path("/work/runs")
def test(path):
    d = json.load(open(path)); t = d.get("test", d)
    return t
def row(name, t):
    return f"| {name} | " + " | ".join(f"{t[k]:.4f}" for k in ("hit@5", "hit@10", "ndcg@5", "ndcg@10", "hit@50", "ndcg@50")) + " |"
print("| model | HR@5 | HR@10 | NDCG@5 | NDCG@10 | HR@50 | NDCG@50 |\n|---|---|---|---|---|---|---|")
for name, p in [("Beauty, g frozen (T 0.07)", R/"obj/frozen_g/results.json"), ("Beauty, contrastive s2020 (T 0.07)", R/"vq2/beauty_contrastive_s2020/results.json")]:
    print(row(name, test(p)))
for p in sorted((R/"lt").glob("*/results.json")):
    print(row(p.parent.name, test(p)))
print()
print("| model | T at evaluation | valid NDCG@10 | test HR@10 | test NDCG@10 | test HR@50 |\n|---|---|---|---|---|---|")
for p in sorted((R/"temp").glob("*.json")):
    d = json.load(open(p)); m = re.match(r"(.*)_T([0-9.]+)\.json", p.name)
    print(f"| {m.group(1)} | {m.group(2)} | {d['valid']['ndcg@10']:.4f} | {d['test']['hit@10']:.4f} | {d['test']['ndcg@10']:.4f} | {d['test']['hit@50']:.4f} |")
print()
for p in sorted((R/"lt").glob("cmp_*.json")):
    d = json.load(open(p))
    h = {r["k"]: r for r in d["rows"]}; n = {r["k"]: r for r in d["ndcg_rows"]}
    print(p.name, "HR@10", h[10]["a_only"], "/", h[10]["b_only"], f"p {h[10]['p_value']:.3g}", "| NDCG@10", n[10]["a_better"], "/", n[10]["b_better"], f"p {n[10]['p_value']:.3g}", "| HR@50", h[50]["a_only"], "/", h[50]["b_only"], f"p {h[50]['p_value']:.2g}", "| NDCG@5", n[5]["a_better"], "/", n[5]["b_better"], f"p {n[5]['p_value']:.2g}")
