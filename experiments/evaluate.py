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

from experiments.cli_common import HelpFormatter, config_key_help, fail, reject_unknown


def parse_args(argv):
    from ftragrec_jax.config import split_cli_overrides

    rest, flag_overrides = split_cli_overrides(list(argv))
    parser = argparse.ArgumentParser(
        prog="python -m experiments.evaluate", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter, epilog=config_key_help())
    parser.add_argument("--checkpoint", required=True, help="model directory (model.json + params/)")
    parser.add_argument("--data", default=None,
                        help="dataset file (default: the path stored in the checkpoint, else embedded Beauty)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dataset/evaluation key, e.g. mask_history=true (repeatable)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write {'valid': {...}, 'test': {...}} here")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args, unknown = parser.parse_known_args(rest)
    reject_unknown(parser, unknown)
    return args, args.overrides + flag_overrides


def evaluate_model_dir(checkpoint, data=None, overrides=(), show_progress=True) -> dict:
    """{"valid": metrics, "test": metrics} of a model directory; raises the project's errors on bad input."""
    from ftragrec_jax.evaluation import evaluate_split

    cfg, dataset, mesh, score, before_test = load_scorer(checkpoint, data, overrides, show_progress)
    valid = evaluate_split(score, dataset, "valid", cfg, mesh=mesh)
    before_test()
    return {"valid": valid, "test": evaluate_split(score, dataset, "test", cfg, mesh=mesh)}


def load_scorer(checkpoint, data=None, overrides=(), show_progress=True, shared=None):
    """(cfg, dataset, mesh, score_fn, before_test) for a model directory, every check done before the weights
    load. shared: (cfg, dataset) of an earlier call whose dataset to reuse; its dataset settings (file,
    format, k-core, length) must be those this checkpoint resolves to."""
    from ftragrec_jax import parallel
    from ftragrec_jax.config import DATASET_KEYS, load_config, parse_override
    from ftragrec_jax.errors import CheckpointError, ConfigError
    from ftragrec_jax.model_dir import check_vocab_compat, load_model, read_meta
    from ftragrec_jax.train.ftragrec_task import INFERENCE_KEYS, TRAINED_KEYS, check_inference_overrides
    from ftragrec_jax.train.tasks import dataset_from_config, scorer_from_model_dir

    meta = read_meta(checkpoint)
    stored = {k: v for k, v in (meta.get("dataset") or {}).items() if k in DATASET_KEYS}
    extra = [f"data={data}"] if data is not None else []
    cfg = load_config(None, list(overrides) + extra, base=stored)
    cfg.show_progress = show_progress
    given = {parse_override(o)[0] for o in overrides}
    inference = {k: getattr(cfg, k) for k in sorted(given & set(INFERENCE_KEYS + TRAINED_KEYS))}
    check_inference_overrides(inference, meta, str(checkpoint))  # before the dataset and weights are loaded
    mesh = parallel.make_mesh(cfg.mesh)  # batches sharded over it, as in training
    parallel.check_batch_divides(cfg.eval_batch_size, mesh, "eval_batch_size")  # before loading anything
    if shared is None:
        dataset = dataset_from_config(cfg)
    else:
        first, dataset = shared
        differ = [k for k in DATASET_KEYS if getattr(first, k) != getattr(cfg, k)]
        if differ:
            raise ConfigError(f"{checkpoint}: dataset settings differ from the first model's in "
                              + ", ".join(f"{k} ({getattr(cfg, k)!r} vs {getattr(first, k)!r})" for k in differ)
                              + "; pass --data and --set to make them agree")
    check_vocab_compat(meta, dataset.n_items, str(checkpoint))
    meta, params, vocab = load_model(checkpoint)
    if vocab is not None and vocab.item_tokens != dataset.vocab.item_tokens:
        diff = next(i for i, (a, b) in enumerate(zip(vocab.item_tokens, dataset.vocab.item_tokens)) if a != b)
        raise CheckpointError(
            f"{checkpoint}: the stored item vocabulary differs from the dataset's at id {diff} "
            f"({vocab.item_tokens[diff]!r} vs {dataset.vocab.item_tokens[diff]!r}); same item count, different items")
    score, before_test = scorer_from_model_dir(checkpoint, meta, params, dataset, cfg, mesh, inference)
    return cfg, dataset, mesh, score, before_test


def main(argv=None) -> int:
    from ftragrec_jax.atomic import write_json_atomic
    from ftragrec_jax.errors import FtragrecError
    from ftragrec_jax.evaluation import metrics_table

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
