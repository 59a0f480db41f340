"""Recommend the next items for one sequence from a saved model directory (DuoRec or FTragrec).

    python -m experiments.recommend --checkpoint runs/quickstart/best_model --items "B0001 B0002 B0003"
    python -m experiments.recommend --checkpoint DIR --items "1 2 3" --k 20 --exclude-seen --json

Items are the dataset's original tokens, oldest first. Tokens the model does not know are reported (stderr, or
the "unknown" field of --json) and skipped; a sequence with no known token is an error. Items already in the
sequence can be recommended again (RecBole's protocol) unless --exclude-seen.
"""

from __future__ import annotations

import argparse
import json
import sys

from experiments.cli_common import HelpFormatter, fail


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.recommend",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="model directory (model.json + params/)")
    parser.add_argument(
        "--items", required=True, metavar="TOKENS", help="the sequence: item tokens separated by spaces, oldest first"
    )
    parser.add_argument("--k", type=int, default=10, help="number of items to recommend")
    parser.add_argument("--exclude-seen", action="store_true", help="never recommend an item of the sequence")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="dataset file, read only if the model dir lacks vocab.json (converted checkpoints) or knowledge_base.npz",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from ftragrec_jax.errors import FtragrecError
    from ftragrec_jax.recommend import load

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rec = load(args.checkpoint, data=args.data).recommend(args.items, k=args.k, exclude_seen=args.exclude_seen)
    except FtragrecError as e:
        fail(str(e))
    if rec.unknown:
        print(
            f"warning: {len(rec.unknown)} item(s) not in the model's vocabulary, skipped: {' '.join(rec.unknown)}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(rec.to_dict()))
        return 0
    width = max(len("item"), *(len(t) for t in rec.items))
    print(f"{'rank':>4}  {'item':<{width}}  score")
    for rank, (item, score) in enumerate(zip(rec.items, rec.scores), 1):
        print(f"{rank:>4}  {item:<{width}}  {score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
