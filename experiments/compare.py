"""Compare two model directories on the same users: hit rates and a paired sign test per cut-off.

    python -m experiments.compare --a runs/duorec-Sports-seed2020/best_model \\
        --b runs/ftragrec-Sports-seed2020/best_model --data ../shared/data/amazon/Sports_and_Outdoors.txt

A metric table says that B's HR@10 is 0.0002 below A's; this says how many users B gained and lost at
each K and whether that could be chance (exact two-sided sign test over the users only one model hits,
ftragrec_jax/significance.py). --set applies to both models (dataset and evaluation keys); --set-a and
--set-b to one of them, e.g. an FTragrec inference key such as alpha, which a DuoRec model refuses:

    python -m experiments.compare --a RUN/best_model --b RUN/best_model --set-b alpha=0.3
"""

from __future__ import annotations

import argparse
import sys

from experiments.cli_common import HelpFormatter, add_overrides, fail, reject_unknown


def parse_args(argv):
    from ftragrec_jax.config import split_cli_overrides

    rest, flag_overrides = split_cli_overrides(list(argv))
    parser = argparse.ArgumentParser(
        prog="python -m experiments.compare", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--a", required=True, metavar="MODEL_DIR", help="the reference model (e.g. the backbone)")
    parser.add_argument("--b", required=True, metavar="MODEL_DIR", help="the model compared with it")
    parser.add_argument("--data", default=None, help="dataset file (default: the path stored in model A)")
    parser.add_argument("--split", default="test", choices=("valid", "test"), help="which split's users")
    add_overrides(parser, "override a dataset/evaluation key for both models (repeatable)")
    add_overrides(parser, "override a key for model A only (repeatable)", flag="--set-a", dest="overrides_a")
    add_overrides(parser, "override a key for model B only (repeatable)", flag="--set-b", dest="overrides_b")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the rows here")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args, unknown = parser.parse_known_args(rest)
    reject_unknown(parser, unknown)
    return args, args.overrides + flag_overrides


def model_ranks(checkpoint, split: str, data=None, overrides=(), show_progress=True, shared=None):
    """((cfg, dataset), target rank per user of `split`) for one model directory."""
    from ftragrec_jax.evaluation import split_ranks
    from ftragrec_jax.scoring import load_model_dir

    m = load_model_dir(checkpoint, data, overrides, show_progress, shared)
    if split == "test":
        m.scorer.before_test()  # FTragrec's extend_memory_with_valid, as in evaluate
    return (m.cfg, m.dataset), split_ranks(m.scorer, m.dataset, split, m.cfg, mesh=m.mesh)


def compare(
    a, b, split="test", data=None, overrides_a=(), overrides_b=(), show_progress=True
) -> tuple[list[dict], int]:
    """(paired_hits rows, paired_ndcg rows, number of users) of model B against model A at model A's topk."""
    from ftragrec_jax.significance import paired_hits, paired_ndcg

    shared, ranks_a = model_ranks(a, split, data, overrides_a, show_progress)
    _, ranks_b = model_ranks(b, split, data, overrides_b, show_progress, shared=shared)
    ks = shared[0].topk
    return paired_hits(ranks_a, ranks_b, ks), paired_ndcg(ranks_a, ranks_b, ks), len(ranks_a)


def table(rows: list[dict], n_users: int, ndcg_rows: list[dict] = ()) -> str:
    lines = [f"{n_users} users", "K    hit A    hit B    only A  only B  p (sign test)"]
    lines += [
        f"{r['k']:<4} {r['hit_a']:.4f}   {r['hit_b']:.4f}   {r['a_only']:>6}  {r['b_only']:>6}  {r['p_value']:.3g}"
        for r in rows
    ]
    if ndcg_rows:
        lines += ["", "K    ndcg A   ndcg B   A better B better  p (sign test)"]
        lines += [
            f"{r['k']:<4} {r['ndcg_a']:.4f}   {r['ndcg_b']:.4f}   {r['a_better']:>8} {r['b_better']:>8}  "
            f"{r['p_value']:.3g}"
            for r in ndcg_rows
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    from ftragrec_jax.atomic import write_json_atomic
    from ftragrec_jax.errors import FtragrecError

    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rows, ndcg_rows, n_users = compare(
            args.a,
            args.b,
            args.split,
            args.data,
            overrides + args.overrides_a,
            overrides + args.overrides_b,
            not args.no_progress,
        )
    except FtragrecError as e:
        fail(str(e))
    print(table(rows, n_users, ndcg_rows))
    if args.json:
        write_json_atomic(
            args.json,
            {
                "a": str(args.a),
                "b": str(args.b),
                "split": args.split,
                "users": n_users,
                "rows": rows,
                "ndcg_rows": ndcg_rows,
            },
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
