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

from experiments.cli_common import CONFIG_DIR, HelpFormatter, config_key_help, fail, reject_unknown

DEFAULT_CONFIG = CONFIG_DIR / "quickstart.yaml"


def parse_args(argv):
    from ftragrec_jax.config import split_cli_overrides

    rest, flag_overrides = split_cli_overrides(list(argv))
    parser = argparse.ArgumentParser(
        prog="python -m experiments.train", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter, epilog=config_key_help())
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="YAML config file (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable; value parsed as YAML)")
    args, unknown = parser.parse_known_args(rest)
    reject_unknown(parser, unknown)
    return args, args.overrides + flag_overrides


def main(argv=None) -> int:
    from ftragrec_jax.config import load_config
    from ftragrec_jax.errors import FtragrecError

    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, overrides)
        from ftragrec_jax import parallel

        parallel.maybe_initialize_distributed()  # multi-host launch (docs/scaling.md); before any device is used
        return run(cfg)
    except FtragrecError as e:
        fail(str(e))


def run(cfg) -> int:
    """Everything after the config: one training stage, or backbone + FTragrec when no backbone is given."""
    from ftragrec_jax.evaluation import metrics_table
    from ftragrec_jax.train.pipeline import comparison_table, needs_backbone, run_path, train_pipeline, train_stage

    if needs_backbone(cfg):
        print(comparison_table(train_pipeline(cfg)))
        print(f"results: {run_path(cfg) / 'results.json'}")
    else:
        print(metrics_table(train_stage(cfg)))
    print(f"run folder: {run_path(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
