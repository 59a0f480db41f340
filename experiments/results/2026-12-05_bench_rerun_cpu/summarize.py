"""Summarise repeated `experiments.bench --json` runs of two commits, alternated on one machine.

    python experiments/results/2026-12-05_bench_rerun_cpu/summarize.py OLD.json [OLD.json ...] -- NEW.json [...]

For each (bench, case, side): the median time of each run, and the ratio against the PyTorch reference of the same
run; the per-run values are listed, since on this shared CPU the spread between runs exceeds that within a run.
"""

import json
import statistics
import sys


def load(paths):
    runs = []
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        runs.append({(r["bench"], r["case"].split(":")[0], r["side"]): r for r in d["rows"] if not r.get("skipped")})
    return runs


def main(argv):
    cut = argv.index("--")
    old, new = load(argv[:cut]), load(argv[cut + 1 :])
    keys = [k for k in old[0] if all(k in r for r in old + new)]
    print("| bench | case | side | old median ms per run | new median ms per run | old ratio | new ratio |")
    print("|---|---|---|---|---|---|---|")
    for k in keys:

        def cell(runs, field):
            vals = [r[k].get(field) for r in runs]
            if any(v is None for v in vals):
                return ""
            fmt = "{:.2f}x" if field == "ratio" else "{:.0f}"
            med = statistics.median(vals)
            return " / ".join(fmt.format(v) for v in vals) + f" (median {fmt.format(med)})"

        ratio = k[2].startswith("jax")
        print(
            f"| {k[0]} | {k[1]} | {k[2]} | {cell(old, 'median_ms')} | {cell(new, 'median_ms')} | "
            f"{cell(old, 'ratio') if ratio else ''} | {cell(new, 'ratio') if ratio else ''} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
