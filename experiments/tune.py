"""Choose a trained FTragrec model's inference settings (temperature, alpha, top_k, ...) on validation users.

    python -m experiments.tune --checkpoint runs/quickstart/best_model \
        --grid retriever_temperature=0.03,0.07,0.15,0.3,0.6 --test --save runs/quickstart/tuned_model
    python -m experiments.tune --checkpoint runs/frozen_g/best_model --valid-holdout 0.5 \
        --grid retriever_temperature=0.07,0.3 --grid alpha=0.1,0.2,0.3 --metric ndcg@10 --json tune.json

Every combination of the --grid values is evaluated on validation (full ranking), nothing is retrained. A model
whose g was fitted on validation queries (retriever_queries=valid) is evaluated on the held-out users only, the
ones its training selected on; --valid-holdout gives any other model the same users, so that two models are
tuned on the same users. The best combination by --metric (default: valid_metric, mrr@10 unless --set) wins,
ties to the earlier one. --test evaluates test for the chosen combination only; --save writes a copy of the
model directory with the chosen settings stored, which evaluate, compare and recommend then use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.cli_common import HelpFormatter, add_overrides, fail
from ftragrec_jax.atomic import write_json_atomic
from ftragrec_jax.errors import FtragrecError
from ftragrec_jax.tuning import parse_grid, save_tuned, tune


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.tune", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="FTragrec model directory (model.json + params/)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        required=True,
        metavar="KEY=V1,V2,...",
        help="an inference setting and the values to try (repeatable: the grid is their product)",
    )
    p.add_argument(
        "--metric",
        default=None,
        help="selection metric <metric>@K with K in topk, e.g. ndcg@10 (default: config key valid_metric)",
    )
    p.add_argument(
        "--valid-holdout",
        type=float,
        default=None,
        metavar="SHARE",
        help="choose on this held-out share of validation users (default: the model's own held-out share if g "
        "was fitted on validation queries, else every validation user)",
    )
    p.add_argument("--data", default=None, help="dataset file (default: the path stored in the checkpoint)")
    add_overrides(p, "override a dataset/evaluation key for every combination (repeatable)")
    p.add_argument("--test", action="store_true", help="also evaluate test at the chosen settings (only those)")
    p.add_argument("--save", default=None, metavar="DIR", help="write the model with the chosen settings here")
    p.add_argument("--json", default=None, metavar="FILE", help="write every combination's metrics here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.save and Path(args.save).exists():  # before the evaluations, not after
        fail(f"--save {args.save}: exists; the tuned model is written to a new folder")
    try:
        result = tune(
            args.checkpoint,
            parse_grid(args.grid),
            metric=args.metric,
            data=args.data,
            overrides=args.overrides,
            valid_holdout=args.valid_holdout,
            test=args.test,
            show_progress=not args.no_progress,
        )
        print(result.table())
        if args.json:
            write_json_atomic(args.json, result.to_json())
            print(f"wrote {args.json}")
        if args.save:
            print(f"wrote {save_tuned(args.checkpoint, args.save, result)}")
    except FtragrecError as e:
        fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
