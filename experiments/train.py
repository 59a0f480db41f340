"""Train a model and write one run folder (config, log, metrics, checkpoints, results).

    python -m experiments.train                                   # quickstart on the embedded Amazon Beauty
    python -m experiments.train --config experiments/configs/beauty_duorec.yaml --set seed=2021
    python -m experiments.train --config experiments/configs/sasrec.yaml --epochs=5 --data=path/to/x.inter

Re-running the same command on the same output folder resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from experiments.cli_common import CONFIG_DIR, config_key_help, fail, reject_unknown

DEFAULT_CONFIG = CONFIG_DIR / "quickstart.yaml"


def parse_args(argv):
    from ftragrec_jax.config import split_cli_overrides

    rest, flag_overrides = split_cli_overrides(list(argv))
    parser = argparse.ArgumentParser(
        prog="python -m experiments.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=config_key_help())
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
        return run(cfg)
    except FtragrecError as e:
        fail(str(e))


def run(cfg) -> int:
    """Everything after the config: folder, data, task, loop, results."""
    from ftragrec_jax.errors import FtragrecError
    from ftragrec_jax.train import tasks
    from ftragrec_jax.train.evaluate import metrics_table
    from ftragrec_jax.train.loop import Trainer
    from ftragrec_jax.train.run_dir import RunDir, close_log

    run_dir = RunDir.for_config(cfg)
    resumed = run_dir.check_or_write_config(cfg)  # refuses a conflicting folder before any compute
    log = run_dir.open_log()
    try:
        log.info("%s run folder: %s", "resuming" if resumed else "new", run_dir.path)
        dataset = tasks.dataset_from_config(cfg)
        log.info("dataset %s: %d users, %d items (padding included), %d interactions; samples train %d, "
                 "valid %d, test %d", dataset.name, dataset.n_users, dataset.n_items, dataset.n_interactions,
                 len(dataset.train), len(dataset.valid), len(dataset.test))
        task = tasks.make_task(cfg, dataset)
        results = Trainer(cfg, task, dataset, run_dir, log).fit()
        print(metrics_table(results))
        print(f"run folder: {run_dir.path}")
        return 0
    except FtragrecError as e:
        if not getattr(e, "logged", False):
            log.error("error: %s", e)
        raise
    finally:
        close_log(log)


if __name__ == "__main__":
    sys.exit(main())
