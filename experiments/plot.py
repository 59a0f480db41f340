"""Draw the learning curves of one or more run folders (every train loss term, valid MRR@10 and NDCG@10).

    python -m experiments.plot runs/quickstart                       # -> runs/quickstart/learning_curves.png
    python -m experiments.plot runs/a runs/b runs/c --out compare.png  # overlay several runs

A RUN_DIR is a training run folder (it has metrics.jsonl) or a pipeline folder (RUN/duorec + RUN/ftragrec, both
stages drawn). Training writes RUN/learning_curves.png itself at the end of every run; use this to redraw a run
in progress or to compare runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.cli_common import HelpFormatter, fail


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.plot",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run or pipeline folders to draw")
    parser.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="PNG to write (default: RUN_DIR/learning_curves.png for one run, ./learning_curves.png for several)",
    )
    parser.add_argument("--title", default=None, help="figure title (default: the run folders)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from ftragrec_jax.errors import FtragrecError
    from ftragrec_jax.plots import PNG_NAME, plot_runs

    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out or (Path(args.run_dirs[0]) / PNG_NAME if len(args.run_dirs) == 1 else Path(PNG_NAME))
    try:
        path = plot_runs(args.run_dirs, out, title=args.title)
    except FtragrecError as e:
        fail(str(e))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
