"""The cost of each stage as the data grows: synthetic interaction logs, each size in its own child process.

    python -m experiments.scale --sizes 1e6:1e4,1e6:1e5,1e6:1e6 --json scale.json --table scale.md --plot scale.png

A size is INTERACTIONS:ITEMS. For each, a child process writes a synthetic one-line-per-user log (item
popularity Zipf-distributed, p(rank r) ~ 1/r^--zipf; user history lengths 5 + a geometric tail with mean
--mean-len; users = interactions / mean length), then measures, stage by stage, its wall time and the
process's peak and current RSS (benchlib.Stages):

  load          `load_dataset` of the file: read, factorise, time order, leave-one-out samples (k-core off:
                every synthetic user has >= 5 items and the item counts are what the size says)
  batches       --batches training batches built by `iterate_batches` (time extrapolated to one epoch)
  duorec_step   the DuoRec task's jitted step (us_x, same-target positives; `item_chunk_size` from --item-chunk
                when the catalogue is larger): the first call (compile) and --steps more (time per step)
  kb_encode     the frozen encoder over --encode training samples (time extrapolated to all of them)
  kb_build      a knowledge base of the first --kb-entries training samples (h synthetic, stored as --kb-dtype,
                since its size does not depend on the values; keys through g; FAISS --faiss-index)
  eval          full-sort ranks of --eval-users test users over every item (chunked like training)
  ftragrec_step one FTragrec step on that base (compile) and --steps more

Time extrapolations say so in the table (`extrapolated`). Samples are windows on the histories (24 bytes per
sample beside 4 per interaction, data/samples.py); a size whose loading would still need more than --limit-gb by
`load_estimate_gb` is not run, and the row says how much it would need.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.benchlib import MB, Stages
from experiments.cli_common import HelpFormatter

ROOT = Path(__file__).resolve().parent.parent


def parse_size(text: str) -> tuple[int, int]:
    """'1e6:1e4' -> (1000000, 10000)."""
    try:
        n, i = text.split(":")
        n, i = int(float(n)), int(float(i))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected INTERACTIONS:ITEMS, e.g. 1e6:1e4") from None
    if n < 1000 or i < 10:
        raise argparse.ArgumentTypeError(f"size {text!r}: at least 1000 interactions and 10 items")
    return n, i


def synthetic_log(path: Path, n_interactions: int, n_items: int, *, mean_len: float, zipf: float, seed: int):
    """Write a one-line-per-user file; returns (users, interactions written). Items are 1..n_items by
    popularity rank; every item appears at least once (so the catalogue is the size asked for)."""
    rng = np.random.default_rng(seed)
    extra = max(mean_len - 5.0, 1e-9)
    n_users = max(1, int(round(n_interactions / mean_len)))
    lengths = 5 + rng.geometric(1.0 / (1.0 + extra), n_users) - 1
    lengths = np.maximum(5, np.round(lengths * (n_interactions / lengths.sum()))).astype(np.int64)
    total = int(lengths.sum())
    weights = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** zipf
    cdf = np.cumsum(weights / weights.sum())
    with open(path, "w") as f:
        user, done = 0, 0
        chunk = 1 << 20
        while user < n_users:  # users in chunks so the item draws never exist whole for 10^8 interactions
            stop = int(np.searchsorted(np.cumsum(lengths[user:]), chunk)) + user + 1
            stop = min(max(stop, user + 1), n_users)
            lens = lengths[user:stop]
            items = np.searchsorted(cdf, rng.random(int(lens.sum())), side="right") + 1
            if done == 0:  # every item at least once: the first users' draws start with the whole catalogue
                k = min(n_items, len(items))
                items[:k] = rng.permutation(n_items)[:k] + 1
            items = np.minimum(items, n_items)
            ends = np.cumsum(lens)
            for u, (s, e) in enumerate(zip(ends - lens, ends)):
                f.write(f"{user + u + 1} " + " ".join(map(str, items[s:e])) + "\n")
            done += int(lens.sum())
            user = stop
    return n_users, total


# --- child ---------------------------------------------------------------------------------------------------


def child(args) -> dict:
    import jax

    from ftragrec_jax.config import Config
    from ftragrec_jax.data.batches import iterate_batches, num_batches
    from ftragrec_jax.data.dataset import load_dataset
    from ftragrec_jax.evaluation import sample_ranks
    from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec
    from ftragrec_jax.models.knowledge_base import (
        KnowledgeBase,
        aligned_empty,
        compute_keys,
        encode_samples,
        kb_options,
    )
    from ftragrec_jax.optim import make_optimizer
    from ftragrec_jax.scoring import encoder_score_fn
    from ftragrec_jax.train.duorec_task import DuoRecTask
    from ftragrec_jax.train.steps import make_ftragrec_step

    n, n_items = args.size
    st = Stages()
    st.mark("imports")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.txt"
        t0 = time.perf_counter()
        users, written = synthetic_log(path, n, n_items, mean_len=args.mean_len, zipf=args.zipf, seed=args.seed)
        st.mark(
            "synthetic log written (not a cost of the library)",
            users=users,
            interactions=written,
            file_mb=round(path.stat().st_size / MB, 1),
            seconds_to_write=round(time.perf_counter() - t0, 1),
        )
        ds = load_dataset(path, max_seq_length=args.max_len, min_user_inter_num=0, min_item_inter_num=0)
        st.mark("load", samples_train=len(ds.train), n_items=ds.n_items, n_users=ds.n_users)

    cfg = Config(
        model="duorec",
        data=str(path),
        train_batch_size=args.batch,
        MAX_ITEM_LIST_LENGTH=args.max_len,
        item_chunk_size=args.item_chunk if ds.n_items > args.item_chunk else 0,
        show_progress=False,
    ).validate()
    n_batches = num_batches(len(ds.train), args.batch)
    t0 = time.perf_counter()
    it = iterate_batches(ds.train, args.batch, seed=0, epoch=0)
    for _, batch in zip(range(min(args.batches, n_batches)), it):
        pass
    per = (time.perf_counter() - t0) / min(args.batches, n_batches)
    st.mark("batches", per_batch_ms=round(per * 1e3, 3), epoch_s_extrapolated=round(per * n_batches, 1))

    task = DuoRecTask(cfg, ds)
    params, opt_state = task.init()
    step = jax.jit(task.train_step, donate_argnums=(0, 1))
    data = task.step_data()
    key = jax.random.key(0)
    batches = iterate_batches(ds.train, args.batch, seed=0, epoch=1)

    def fields(b, names=task.batch_fields):  # int32 on the host, as the training loop feeds them
        return {k: b[k].astype(np.int32) if b[k].dtype == np.int64 else b[k] for k in names}

    t0 = time.perf_counter()
    params, opt_state, m = step(params, opt_state, fields(next(batches)), key, data)
    jax.block_until_ready(m["loss"])
    first = time.perf_counter() - t0
    steps = [fields(b) for _, b in zip(range(args.steps), batches)]
    t0 = time.perf_counter()
    for i, b in enumerate(steps):
        params, opt_state, m = step(params, opt_state, b, jax.random.fold_in(key, i + 1), data)
    jax.block_until_ready(m["loss"])
    per = (time.perf_counter() - t0) / max(len(steps), 1)
    st.mark(
        "duorec_step",
        first_call_s=round(first, 2),
        per_step_ms=round(per * 1e3, 1),
        steps=len(steps),
        epoch_s_extrapolated=round(per * n_batches, 1),
        loss=round(float(m["loss"]), 4),
    )
    encoder = task.merge(params)
    del step, opt_state, steps, data, task  # the later stages need the encoder only (not the positives' arrays)

    users = np.arange(min(args.eval_users, len(ds.test)))
    t0 = time.perf_counter()
    ranks = sample_ranks(
        encoder_score_fn(encoder),
        ds.test.take(users),
        ds.n_items,
        batch_size=args.eval_batch,
        item_chunk_size=cfg.item_chunk_size,
    )
    st.mark(
        "eval",
        users=len(users),
        seconds_eval=round(time.perf_counter() - t0, 1),
        hit10=round(float((ranks <= 10).mean()), 4),
    )
    rows = np.arange(min(args.encode, len(ds.train)))
    t0 = time.perf_counter()
    encode_samples(encoder, ds.train.sequences(rows), ds.train.item_seq_len[rows])
    per = (time.perf_counter() - t0) / len(rows)
    st.mark("kb_encode", encoded=len(rows), all_s_extrapolated=round(per * len(ds.train), 1))

    hp = FTragrecHParams(
        retrieval_backend="faiss", faiss_index=args.faiss_index, top_k=args.top_k, knowledge_base_dtype=args.kb_dtype
    )
    model = build_ftragrec(encoder, hp, seed=0)
    rng = np.random.default_rng(0)
    base = ds.train.take(np.arange(min(args.kb_entries, len(ds.train))))  # the first entries, as a base of that size
    h = aligned_empty((len(base), encoder.config.hidden_size), args.kb_dtype)  # taken by the device without a copy
    for start in range(0, len(h), 1 << 20):  # filled in blocks: no float32 temporary of the whole base
        block = h[start : start + (1 << 20)]
        block[...] = rng.standard_normal(block.shape, dtype=np.float32)
    keys = compute_keys(model.retriever, h)
    kb = KnowledgeBase(h, base.target, base.user, base.prefix_len, keys, **kb_options(hp))
    del h, keys
    st.mark(
        "kb_build",
        entries=len(kb),
        h_dtype=args.kb_dtype,
        h_mb=round(kb.h.nbytes / MB),
        keys_mb=round(kb.keys.nbytes / MB),
        index=args.faiss_index,
        index_s=round(kb.index_seconds, 1),
    )

    from flax import nnx

    gd, fparams, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(1e-3)
    fopt = tx.init(fparams)
    fstep = make_ftragrec_step(
        gd, hp, tx, rest=rest, searcher=kb.searcher, cached=True, item_chunk_size=cfg.item_chunk_size
    )
    fb = iterate_batches(base, args.batch, seed=0, epoch=2)  # cached steps index the base's rows
    ffields = ("item_seq", "item_seq_len", "target", "user", "prefix_len", "mask", "index")
    t0 = time.perf_counter()
    fparams, fopt, aux = fstep(fparams, fopt, fields(next(fb), ffields), kb.memory)
    jax.block_until_ready(aux["loss"])
    first = time.perf_counter() - t0
    fsteps = [fields(b, ffields) for _, b in zip(range(args.steps), fb)]
    t0 = time.perf_counter()
    for b in fsteps:
        fparams, fopt, aux = fstep(fparams, fopt, b, kb.memory)
    jax.block_until_ready(aux["loss"])
    per = (time.perf_counter() - t0) / max(len(fsteps), 1)
    st.mark(
        "ftragrec_step",
        first_call_s=round(first, 2),
        per_step_ms=round(per * 1e3, 1),
        epoch_s_extrapolated=round(per * n_batches, 1),
    )

    return {"size": list(args.size), "stages": st.rows}


# --- parent --------------------------------------------------------------------------------------------------


# Peak of loading (streamed reading, factorising, sorting, windows) above the process's start, per interaction:
# a one-line file of 10^7 synthetic interactions peaked 1.1 GB above it (the kept dataset is inside that).
LOAD_BYTES_PER_INTERACTION = 110


def load_estimate_gb(n: int, mean_len: float, max_len: int) -> float:
    """Peak bytes of loading n interactions (a gate, not a measurement); max_len does not matter, the samples
    hold no item matrix, and mean_len neither (the per-interaction figure includes the windows)."""
    del max_len, mean_len
    return n * LOAD_BYTES_PER_INTERACTION / 1e9


CHILD_OPTIONS = (
    "mean_len",
    "zipf",
    "max_len",
    "batch",
    "batches",
    "steps",
    "encode",
    "item_chunk",
    "faiss_index",
    "top_k",
    "kb_entries",
    "kb_dtype",
    "eval_users",
    "eval_batch",
    "seed",
)


def measure(size, args) -> dict:
    """One size in a fresh child process (its peak RSS is its own); the child's stages, or why it failed."""
    options = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in CHILD_OPTIONS]
    cmd = [sys.executable, "-m", "experiments.scale", f"--child={size[0]}:{size[1]}", *options]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:  # e.g. killed for memory (-9): the stages printed so far are in stderr
        return {
            "size": list(size),
            "error": f"child exited with {proc.returncode} after {time.perf_counter() - t0:.0f} s",
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = [
        "| interactions | items | stage | seconds | peak RSS MB | RSS after MB | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        n, i = r["size"]
        if "stages" not in r:
            lines.append(f"| {n:.0e} | {i:.0e} | - | - | - | - | {r.get('skipped') or r.get('error')} |")
            continue
        for s in r["stages"]:
            notes = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("stage", "seconds", "peak_mb", "rss_mb"))
            lines.append(
                f"| {n:.0e} | {i:.0e} | {s['stage']} | {s['seconds']} | {s['peak_mb']} | {s['rss_mb']} | {notes} |"
            )
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    by_items: dict[int, list] = {}
    for r in results:
        if "stages" in r:
            by_items.setdefault(r["size"][1], []).append(r)
    for items, rs in sorted(by_items.items()):
        rs = sorted(rs, key=lambda r: r["size"][0])
        xs = [r["size"][0] for r in rs]
        ax[0].plot(xs, [max(s["peak_mb"] for s in r["stages"]) / 1024 for r in rs], "o-", label=f"{items:.0e} items")
        ax[1].plot(xs, [sum(s["seconds"] for s in r["stages"]) for r in rs], "o-", label=f"{items:.0e} items")
    for a, label in zip(ax, ("peak RSS (GB)", "wall time of the measured stages (s)")):
        a.set_xscale("log")
        a.set_xlabel("interactions")
        a.set_ylabel(label)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.scale", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("--sizes", default="1e6:1e4,1e6:1e5,1e6:1e6", help="INTERACTIONS:ITEMS, comma-separated")
    p.add_argument("--child", type=parse_size, default=None, help=argparse.SUPPRESS)
    p.add_argument("--mean-len", type=float, default=10.0, help="mean history length per user")
    p.add_argument("--zipf", type=float, default=1.0, help="item popularity exponent")
    p.add_argument("--max-len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH")
    p.add_argument("--batch", type=int, default=256, help="training batch size")
    p.add_argument("--batches", type=int, default=1000, help="batches built to time batching")
    p.add_argument("--steps", type=int, default=100, help="timed steps after the first call")
    p.add_argument("--encode", type=int, default=100_000, help="training samples encoded to time the encoder")
    p.add_argument("--item-chunk", type=int, default=65536, help="item_chunk_size when the catalogue is larger")
    p.add_argument("--faiss-index", default="IVF1024,Flat", help="FAISS index of the knowledge base")
    p.add_argument("--top-k", type=int, default=50, help="FTragrec neighbours")
    p.add_argument("--kb-entries", type=int, default=10_000_000, help="knowledge-base entries at most (the first)")
    p.add_argument("--kb-dtype", default="float32", choices=("float32", "float16"), help="storage of h in the base")
    p.add_argument("--eval-users", type=int, default=10_000, help="test users ranked over every item")
    p.add_argument("--eval-batch", type=int, default=256, help="evaluation batch size")
    p.add_argument("--limit-gb", type=float, default=12.0, help="skip a size whose loading would exceed this")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--table", default=None, help="write the markdown table here")
    p.add_argument("--plot", default=None, help="write the cost-vs-size plot here (PNG)")
    args = p.parse_args(argv)
    args.size = args.child
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args)), flush=True)
        return 0
    results = []
    for text in args.sizes.split(","):
        size = parse_size(text)
        need = load_estimate_gb(size[0], args.mean_len, args.max_len)
        if need > args.limit_gb:
            results.append({"size": list(size), "skipped": f"loading alone about {need:.1f} GB > {args.limit_gb} GB"})
        else:
            print(f"size {size[0]:.0e} interactions, {size[1]:.0e} items", file=sys.stderr, flush=True)
            results.append(measure(size, args))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.table:
        Path(args.table).write_text(table(results) + "\n")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
