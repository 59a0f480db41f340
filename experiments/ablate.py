"""Train FTragrec variants on one frozen backbone, several seeds each, and tabulate them against the backbone.

    python -m experiments.ablate --config experiments/configs/beauty_ftragrec.yaml \
        --grid experiments/configs/ablations/beauty.yaml --set pretrained=RUN/best_model --seeds 2020,2021,2022

Each (variant, seed) is an ordinary run folder under --out (resumable: rerunning the command skips finished runs
and continues a killed one). The table (markdown, also as JSON) gives test HR@5/10 and NDCG@5/10, mean and
per-seed, and the relative change over the frozen backbone evaluated once on the same split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.cli_common import HelpFormatter, add_overrides, fail

METRICS = ("hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr@10")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.ablate", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("--config", required=True, help="FTragrec YAML config the variants start from")
    p.add_argument("--grid", required=True, help="YAML mapping: variant name -> {config key: value}")
    add_overrides(p, "override for every variant, e.g. pretrained=RUN/best_model (repeatable)")
    p.add_argument("--seeds", default="2020", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--only", default="", help="comma-separated variant names to run (default: all)")
    p.add_argument("--out", default="runs/ablations", help="folder of the run folders (default: %(default)s)")
    p.add_argument("--table", default=None, metavar="FILE.md", help="write the markdown table here (+ .json)")
    return p.parse_args(argv)


def load_grid(path) -> dict[str, dict]:
    import yaml

    from ftragrec_jax.errors import ConfigError

    try:
        grid = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the ablation grid: {e}") from None
    if not isinstance(grid, dict) or not all(isinstance(v, dict) for v in grid.values()):
        raise ConfigError(f"{path}: expected a mapping of variant name -> {{config key: value}}")
    return grid


def run_variant(config, overrides: list[str], variant: dict, seed: int, out: Path) -> dict:
    """Train one variant (or resume it) and return its results; the config is validated before any compute."""
    from ftragrec_jax.config import load_config
    from ftragrec_jax.train.pipeline import train_stage

    sets = overrides + [f"{k}={json.dumps(v)}" for k, v in variant.items()] + [f"seed={seed}", f"output_dir={out}"]
    cfg = load_config(config, sets)
    done = out / "results.json"
    if done.exists():
        return json.loads(done.read_text())
    return train_stage(cfg)


def summarize(backbone: dict, runs: dict[str, dict[int, dict]]) -> tuple[str, dict]:
    """Markdown table (mean over seeds, relative change vs the backbone) and the same numbers as a dict."""
    import numpy as np

    rows, data = [], {"backbone": backbone, "variants": {}}
    head = "| variant | seeds | " + " | ".join(f"test {m}" for m in METRICS) + " |"
    rows += [head, "|" + "---|" * (len(METRICS) + 2)]
    rows.append("| frozen backbone | - | " + " | ".join(f"{backbone[m]:.4f}" for m in METRICS) + " |")
    for name, per_seed in runs.items():
        mean = {m: float(np.mean([r["test"][m] for r in per_seed.values()])) for m in METRICS}
        rel = {m: (mean[m] - backbone[m]) / backbone[m] if backbone[m] else None for m in METRICS}
        data["variants"][name] = {
            "mean": mean,
            "relative_change": rel,
            "per_seed": {s: r["test"] for s, r in per_seed.items()},
        }
        cells = [f"{mean[m]:.4f} ({100 * rel[m]:+.1f}%)" if rel[m] is not None else f"{mean[m]:.4f}" for m in METRICS]
        rows.append(f"| {name} | {','.join(map(str, per_seed))} | " + " | ".join(cells) + " |")
    return "\n".join(rows), data


def main(argv=None) -> int:
    from ftragrec_jax.atomic import write_json_atomic, write_text_atomic
    from ftragrec_jax.config import load_config
    from ftragrec_jax.errors import FtragrecError
    from ftragrec_jax.evaluation import evaluate_model_dir

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        grid = load_grid(args.grid)
        only = [v for v in args.only.split(",") if v]
        unknown = [v for v in only if v not in grid]
        if unknown:
            fail(f"--only: unknown variants {unknown}; the grid has {list(grid)}")
        seeds = [int(s) for s in args.seeds.split(",") if s]
        base = load_config(args.config, args.overrides)
        if not base.pretrained:
            fail("set pretrained=<DuoRec model dir>: every variant must share one frozen backbone")
        backbone = evaluate_model_dir(base.pretrained, base.data, show_progress=False)["test"]
        runs = {}
        for name, variant in grid.items():
            if only and name not in only:
                continue
            runs[name] = {
                s: run_variant(args.config, args.overrides, variant, s, Path(args.out) / f"{name}-seed{s}")
                for s in seeds
            }
            table, data = summarize(backbone, runs)
            print(table, flush=True)
            if args.table:  # rewritten after every variant, so a partial sweep is never lost
                write_text_atomic(Path(args.table), table + "\n")
                write_json_atomic(Path(args.table).with_suffix(".json"), data)
    except FtragrecError as e:
        fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
