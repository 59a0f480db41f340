"""Recommend the next items from a saved model directory (DuoRec or FTragrec): for one sequence, for a file of
sequences, or for every user of the dataset.

    python -m experiments.recommend --checkpoint runs/quickstart/best_model --items "B0001 B0002 B0003"
    python -m experiments.recommend --checkpoint DIR --items "1 2 3" --k 20 --exclude-seen --json
    python -m experiments.recommend --checkpoint builtin:beauty --all-users --out recs.jsonl
    python -m experiments.recommend --checkpoint DIR --input sequences.txt --out recs.csv --k 20

Items are the dataset's original tokens, oldest first. Tokens the model does not know are reported (stderr, or
the "unknown" field of --json / JSONL) and skipped; a single sequence with no known token is an error, and in
bulk such a row is written with an "error" (JSONL) or left out (CSV) and counted on stderr. Items already in
the sequence can be recommended again (RecBole's protocol) unless --exclude-seen.

Bulk input (--input): one sequence per line, item tokens separated by spaces, optionally preceded by an id and
a tab ("u42<TAB>i1 i2 i3"; without one, the id is the line number). --all-users: every user of the dataset the
model was trained on (its model.json names the file and settings; --data overrides the file), each with its
whole history. Output (--out): JSONL, one {"user", "items", "scores", "unknown"} object per line, or CSV
(`user,rank,item,score`, one row per recommended item) when the file name ends in .csv; written atomically.
Batches of --batch-size sequences are scored in one jitted call each, top-k on the device.
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--items", metavar="TOKENS", help="one sequence: item tokens separated by spaces, oldest first")
    source.add_argument("--input", metavar="FILE", help="a file of sequences, one per line ([id<TAB>]tokens)")
    source.add_argument("--all-users", action="store_true", help="every user of the dataset, whole history")
    parser.add_argument("--out", metavar="FILE", help="bulk output: .jsonl (default) or .csv (required in bulk)")
    parser.add_argument("--batch-size", type=int, default=256, help="sequences per jitted scoring call (bulk)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (bulk)")
    parser.add_argument(
        "--item-chunk-size",
        type=int,
        default=0,
        help="bulk: merge the top-k over chunks of this many items (0 = whole catalogue)",
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
    args = parser.parse_args(argv)
    if args.items is None and not args.out:
        parser.error("--input and --all-users write their recommendations to --out FILE")
    if args.items is not None and args.out:
        parser.error("--out is for --input and --all-users; --items prints (use --json for JSON)")
    return args


def read_sequences(path) -> list[tuple[str, list[str]]]:
    """(id, tokens) per line of an --input file; the id is the text before a tab, else the line number."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            key, sep, rest = line.partition("\t")
            out.append((key, rest.split()) if sep else (str(n), line.split()))
    return out


def dataset_sequences(rec, data) -> list[tuple[str, list[str]]]:
    """(user token, whole history in item tokens) for every user of the dataset the model was trained on."""
    from ftragrec_jax.errors import CheckpointError
    from ftragrec_jax.recommend import dataset_of

    dataset = dataset_of(rec.meta, data)
    for field in ("item_tokens", "user_tokens"):
        if getattr(dataset.vocab, field) != getattr(rec.vocab, field):
            raise CheckpointError(
                f"{rec.path}: the dataset's {field.split('_')[0]}s are not the model's (the file and settings it "
                "was trained with? pass --data FILE)"
            )
    h, tokens = dataset.history, dataset.vocab.item_tokens
    return [
        (dataset.vocab.user_tokens[u], [tokens[i] for i in h.items[h.indptr[u] : h.indptr[u + 1]]])
        for u in range(1, dataset.n_users + 1)
    ]


def write_bulk(path, keyed, recs) -> tuple[int, int]:
    """Write (id, Recommendation) rows as JSONL or CSV; returns (rows written, rows with no known item)."""
    import csv

    from ftragrec_jax.atomic import write_atomic

    counts = [0, 0]
    as_csv = str(path).lower().endswith(".csv")

    def write(f):
        writer = csv.writer(f, lineterminator="\n") if as_csv else None
        if writer:
            writer.writerow(["user", "rank", "item", "score"])
        for (key, _), rec in zip(keyed, recs):
            counts[0] += 1
            counts[1] += not rec.items
            if writer:
                writer.writerows(
                    [key, r, item, f"{score:.6g}"] for r, (item, score) in enumerate(zip(rec.items, rec.scores), 1)
                )
                continue
            row = {"user": key, "items": rec.items, "scores": rec.scores, "unknown": rec.unknown}
            if not rec.items:
                row["error"] = "none of its items is in the model's vocabulary" if rec.unknown else "empty sequence"
            f.write(json.dumps(row) + "\n")

    write_atomic(path, write, binary=False)
    return counts[0], counts[1]


def main(argv=None) -> int:
    from ftragrec_jax.errors import FtragrecError
    from ftragrec_jax.recommend import load

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.items is None:
        try:
            rec = load(args.checkpoint, data=args.data)
            keyed = read_sequences(args.input) if args.input else dataset_sequences(rec, args.data)
            recs = rec.recommend_many(
                (tokens for _, tokens in keyed),
                k=args.k,
                exclude_seen=args.exclude_seen,
                batch_size=args.batch_size,
                progress=not args.no_progress,
                total=len(keyed),
                item_chunk_size=args.item_chunk_size,
            )
            written, empty = write_bulk(args.out, keyed, recs)
        except OSError as e:
            fail(f"{e.filename or args.input}: {e.strerror or e}")
        except FtragrecError as e:
            fail(str(e))
        print(f"wrote {written} rows to {args.out}", file=sys.stderr)
        if empty:
            print(
                f"warning: {empty} sequence(s) had no item the model knows; no recommendations for them",
                file=sys.stderr,
            )
        return 0
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
