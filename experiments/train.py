"""Train a model and write one run folder (config, log, metrics, checkpoints, results).

    python -m experiments.train                                   # quickstart on the embedded Amazon Beauty
    python -m experiments.train --config experiments/configs/beauty_ftragrec.yaml --set pretrained=RUN/best_model
    python -m experiments.train --config experiments/configs/beauty_duorec.yaml --set seed=2021
    python -m experiments.train --config experiments/configs/sasrec.yaml --epochs=5 --data=path/to/x.inter

With model=ftragrec and no `pretrained`, a DuoRec backbone is pretrained first (RUN/duorec, RUN/ftragrec).
Re-running the same command on the same output folder resumes from its latest checkpoint.
Several hosts: set FTRAGREC_COORDINATOR, FTRAGREC_NUM_PROCESSES and FTRAGREC_PROCESS_ID (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import sys

from experiments.cli_common import CONFIG_DIR, HelpFormatter, add_overrides, config_key_help, fail, reject_unknown
from ftragrec_jax import parallel
from ftragrec_jax.config import load_config, split_cli_overrides
from ftragrec_jax.errors import FtragrecError
from ftragrec_jax.evaluation import comparison_table, metrics_table, published_for
from ftragrec_jax.train.pipeline import needs_backbone, run_path, train_pipeline, train_stage

DEFAULT_CONFIG = CONFIG_DIR / "quickstart.yaml"


def parse_args(argv):
    rest, flag_overrides = split_cli_overrides(list(argv))
    parser = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog=config_key_help(),
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config file (default: %(default)s)")
    add_overrides(parser, "override one config key (repeatable; value parsed as YAML)")
    args, unknown = parser.parse_known_args(rest)
    reject_unknown(parser, unknown)
    return args, args.overrides + flag_overrides


def main(argv=None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, overrides)
        parallel.maybe_initialize_distributed()  # multi-host launch (docs/scaling.md); before any device is used
        return run(cfg)
    except FtragrecError as e:
        fail(str(e))


def run(cfg) -> int:
    """Everything after the config: one training stage, or backbone + FTragrec when no backbone is given.
    FTragrec ends with the backbone vs FTragrec test table (and, on the published Beauty split, the published
    DuoRec and RaSeRec figures); other models with their valid/test metrics."""
    if needs_backbone(cfg):
        combined = train_pipeline(cfg)
        print(
            comparison_table(
                combined["backbone"]["test"], combined["ftragrec"]["test"], published_for(combined["protocol"])
            )
        )
        print(f"results: {run_path(cfg) / 'results.json'}")
    else:
        results = train_stage(cfg)
        if "backbone" in results:
            print(comparison_table(results["backbone"]["test"], results["test"], published_for(results["protocol"])))
        else:
            print(metrics_table(results))
    print(f"run folder: {run_path(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
