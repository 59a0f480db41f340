"""Evaluate a model directory (JAX-trained or converted from PyTorch) on valid and test, full ranking.

    python -m experiments.evaluate --checkpoint runs/duorec-Beauty-seed2020/best_model \
        --data ../shared/data/amazon/Beauty.txt
    python -m experiments.evaluate --checkpoint converted/ --data Amazon_Beauty.inter --json out.json

Dataset settings (format, k-core, max length) come from the checkpoint's model.json unless overridden
with --set; metrics are every RecBole metric at K in topk (default 5, 10, 20, 50). For an FTragrec model,
--set may also change how the trained retriever is used (alpha, top_k, retriever_temperature,
quality_threshold, fusion, the backend, ...), e.g. to pick alpha on valid without retraining:

    python -m experiments.evaluate --checkpoint runs/ftragrec-Beauty-seed2020/best_model --set alpha=0.3
"""

from __future__ import annotations

import argparse
import sys

from experiments.cli_common import HelpFormatter, add_overrides, config_key_help, fail, reject_unknown
from ftragrec_jax.atomic import write_json_atomic
from ftragrec_jax.config import split_cli_overrides
from ftragrec_jax.errors import FtragrecError
from ftragrec_jax.evaluation import evaluate_model_dir, metrics_table


def parse_args(argv):
    rest, flag_overrides = split_cli_overrides(list(argv))
    parser = argparse.ArgumentParser(
        prog="python -m experiments.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog=config_key_help(),
    )
    parser.add_argument("--checkpoint", required=True, help="model directory (model.json + params/)")
    parser.add_argument(
        "--data", default=None, help="dataset file (default: the path stored in the checkpoint, else embedded Beauty)"
    )
    add_overrides(parser, "override a dataset/evaluation key, e.g. mask_history=true (repeatable)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write {'valid': {...}, 'test': {...}} here")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args, unknown = parser.parse_known_args(rest)
    reject_unknown(parser, unknown)
    return args, args.overrides + flag_overrides


def main(argv=None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        results = evaluate_model_dir(args.checkpoint, args.data, overrides, show_progress=not args.no_progress)
    except FtragrecError as e:
        fail(str(e))
    print(metrics_table(results))
    if args.json:
        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
