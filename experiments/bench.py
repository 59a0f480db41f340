"""JAX against the PyTorch reference, side by side, in one run: `python -m experiments.bench`.

    python -m experiments.bench [--what duorec_step,ftragrec_step,ftragrec_epoch,eval,kb_build,retrieval]
        [--items N] [--kb N[,N...]] [--batch B] [--repeats R] [--json FILE] [--device cpu|cuda]

Every figure: warm-up excluded, compile time apart, median and (min, max) of the repeats, device synchronised
before the clock is read, sides alternated so drift cancels (experiments/benchlib.py). The ratio column is
reference median / side median: the speed-up of that side over the group's reference (PyTorch where there
is one). The JAX sides call the project's own code (the DuoRec task's train step, FTragrec's make_ftragrec_step,
the knowledge base, the full-sort evaluator); the PyTorch sides are in converters/reference/torch_bench.py.

Data: duorec_step always uses random ragged sequences over --items items. The other benches use Amazon
Beauty (../shared/data or the embedded copy) and ML-1M (../shared/data; a random dataset of its size if
absent) with --data real, or random users of --users / --items with --data synthetic (tests, quick checks).
Retrieval keys are random clustered unit vectors (the FAISS IVF recall depends on that structure).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import experiments.benchlib as benchlib
from experiments.benches import duorec_step, eval, ftragrec, retrieval
from experiments.benches.context import BEAUTY, FTRAGREC_VARIANTS, Context
from experiments.cli_common import HelpFormatter

BENCHES = ("duorec_step", "ftragrec_step", "ftragrec_epoch", "eval", "kb_build", "retrieval")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.bench", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("--what", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    p.add_argument("--items", type=int, default=12102, help="catalogue size of random data (Beauty: 12,102)")
    p.add_argument("--users", type=int, default=BEAUTY["users"], help="users of random data (--data synthetic)")
    p.add_argument("--kb", default="131413,1000000", help="retrieval: knowledge-base sizes, comma-separated")
    p.add_argument("--batch", type=int, default=256, help="training batch / retrieval queries")
    p.add_argument("--max-len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH")
    p.add_argument("--top-k", type=int, default=5, help="neighbours retrieved")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per side (step-sized work)")
    p.add_argument("--epoch-repeats", type=int, default=3, help="timed repeats per side for whole epochs/evals")
    p.add_argument(
        "--data",
        choices=("real", "synthetic"),
        default="real",
        help="real: Amazon Beauty (and ML-1M for eval) from ../shared, else the embedded Beauty; "
        "synthetic: random sequences of --items/--users",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="device for both sides (default: cuda when available to jax and torch, else cpu)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch intra-op threads (default: all cores, %(default)s here, as XLA uses on CPU)",
    )
    p.add_argument(
        "--fp32-matmul",
        action="store_true",
        help="full float32 matmuls on both sides (GPU default: TF32 allowed on both, as jax does)",
    )
    p.add_argument("--no-torch-compile", action="store_true", help="skip the torch.compile side of duorec_step")
    p.add_argument("--seed", type=int, default=0, help="seed of the random data, parameters and batches")
    p.add_argument(
        "--ftragrec-variants",
        default=",".join(FTRAGREC_VARIANTS),
        help="ftragrec_step/ftragrec_epoch: JAX sides to run (a whole epoch per side is minutes on CPU)",
    )
    p.add_argument("--json", default=None, help="write rows, machine info and the command line to this file")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    what = [w.strip() for w in args.what.split(",") if w.strip()]
    bad = [w for w in what if w not in BENCHES]
    if bad:
        p.error(f"--what: unknown {bad}; choose from {list(BENCHES)}")
    args.what = what
    variants = [v.strip() for v in args.ftragrec_variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in FTRAGREC_VARIANTS]
    if bad or not variants:
        p.error(f"--ftragrec-variants: unknown {bad or variants}; choose from {list(FTRAGREC_VARIANTS)}")
    args.ftragrec_variants = variants
    args.kb = [int(x) for x in str(args.kb).split(",") if x.strip()]
    for name in ("items", "users", "batch", "max_len", "top_k", "repeats", "epoch_repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected an integer >= 1")
    if args.items < 3 or any(k < args.top_k + 1 for k in args.kb):
        p.error("--items must be >= 3 and every --kb size > --top-k")
    return args


# --- main ---------------------------------------------------------------------------------------------


def _configure_jax(device: str | None, fp32: bool) -> None:
    import jax

    if fp32:
        jax.config.update("jax_default_matmul_precision", "highest")
    if device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    elif device == "cuda" and jax.default_backend() != "gpu":
        raise SystemExit("error: --device cuda: jax has no GPU backend here (install jax[cuda13])")


RUNNERS = {
    "duorec_step": duorec_step.bench_duorec_step,
    "eval": eval.bench_eval,
    "retrieval": retrieval.bench_retrieval,
}


def run(args) -> dict:
    _configure_jax(args.device, args.fp32_matmul)
    started = benchlib.machine(args.argv)  # date and load average at the start of the run
    t_start = time.perf_counter()
    ctx = Context(args)
    if ctx.torch is not None and ctx.torch_dev.type == "cuda":  # as jax: TF32 allowed unless --fp32-matmul
        ctx.torch.set_float32_matmul_precision("highest" if args.fp32_matmul else "high")
    cores = len(os.sched_getaffinity(0))
    same = "the same as" if args.threads == cores else "NOT the same as"
    header = (
        f"JAX on {ctx.jax_device}; PyTorch on {ctx.torch_device}: torch intra-op threads = {args.threads}, "
        f"{same} the {cores} cores XLA uses on CPU; float32 matmuls: "
        + ("full precision on both sides" if args.fp32_matmul else "each side default (GPU: TF32 allowed on both)")
    )
    print(header, flush=True)
    rows, errors = [], {}
    setup = None
    for name in args.what:
        t0 = time.perf_counter()
        try:
            if name in ("ftragrec_step", "ftragrec_epoch", "kb_build"):
                setup = setup or ftragrec.FTragrecSetup(ctx)
                got = getattr(ftragrec, f"bench_{name}")(ctx, setup)
            else:
                got = RUNNERS[name](ctx)
        except Exception as e:  # report and go on: one missing piece must not lose the other figures
            errors[name] = benchlib._reason(e)
            print(f"{name}: FAILED {errors[name]}", file=sys.stderr, flush=True)
            continue
        rows += got
        print(f"{name}: done in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    table = benchlib.format_table(rows)
    print(table)
    for name, why in errors.items():
        print(f"{name}: {why}")
    machine = {
        **benchlib.machine(args.argv),
        "date_utc": started["date_utc"],
        "loadavg_at_start": started.get("loadavg_at_start"),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    report = {
        "format": "ftragrec-jax/bench/v1",
        "machine": machine,
        "header": header,
        "jax_device": ctx.jax_device,
        "torch_device": ctx.torch_device,
        "torch_threads": args.threads,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "argv")},
        "rows": rows,
        "errors": errors,
        "table": table,
    }
    if args.json:
        from ftragrec_jax.atomic import write_json_atomic

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return report


def main(argv=None) -> int:
    report = run(parse_args(argv))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
