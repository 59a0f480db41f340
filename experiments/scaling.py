"""Scaling figures: DuoRec step time on 1, 2, 4 devices, and knowledge-base search time and memory.

    python -m experiments.scaling --json /tmp/scaling.json
    python -m experiments.scaling --devices 1,2 --kb-sizes 1000000 --steps 5

Every figure comes from a fresh child process, because jax fixes the device count when it starts: on a CPU
the child gets D forced devices (XLA_FLAGS=--xla_force_host_platform_device_count=D), which share the same
cores, so the step figures show the overhead of the sharded program, not a speed-up. On an accelerator
machine the children use the real devices (D at most their number).

step: the trainer's DuoRec step (DuoRecTask.train_step, jitted as the trainer jits it, batch sharded along the
    mesh with parallel.put_batch, parameters replicated) on the embedded Beauty data (or --data) with global
    batch --batch; per-step time (blocking on the result) after a warm-up, and samples/s = batch / median.
kb: synthetic bases of N unit-norm --hidden-d keys (generated in chunks, random users and prefix lengths) and
    --queries queries with top-k --top-k and the exclusion rule: the exact backend on 1 device and sharded over
    --kb-devices devices, FAISS Flat and IndexShards(--faiss-shards) on the host. Per search: time per batch of
    queries; per stage: the process's RSS and peak RSS; ids are checked against a numpy search on 8 queries.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GB = 1024**3
CHECKED_QUERIES = 8


# --- children ----------------------------------------------------------------------------------------------


def child_step(args, n_devices: int) -> dict:
    import jax
    import numpy as np

    from experiments.benchlib import Side, compare, jax_device
    from ftragrec_jax import parallel
    from ftragrec_jax.config import Config
    from ftragrec_jax.data.batches import iterate_batches
    from ftragrec_jax.data.dataset import dataset_from_config
    from ftragrec_jax.train.duorec_task import DuoRecTask

    cfg = Config(
        data=args.data or "",
        train_batch_size=args.batch,
        hidden_size=args.hidden,
        inner_size=4 * args.hidden,
        MAX_ITEM_LIST_LENGTH=args.max_len,
        mesh=n_devices,
        show_progress=False,
    ).validate()
    dataset = dataset_from_config(cfg)
    task = DuoRecTask(cfg, dataset)
    mesh = parallel.make_mesh(n_devices)
    parallel.check_batch_divides(cfg.train_batch_size, mesh)
    state = {"params_opt": parallel.replicate(task.init(), mesh), "i": 0}
    data = parallel.place_step_data(task.step_data(), mesh)
    base_key = jax.random.key(cfg.seed, impl="unsafe_rbg")
    step = jax.jit(
        lambda p, o, b, i, k, d: task.train_step(p, o, b, jax.random.fold_in(k, i), d), donate_argnums=(0, 1)
    )
    batches = [
        {k: (b[k].astype(np.int32) if b[k].dtype == np.int64 else b[k]) for k in task.batch_fields}
        for _, b in zip(range(8), iterate_batches(dataset.train, cfg.train_batch_size, seed=0, epoch=0))
    ]

    def one_step():
        params, opt_state = state["params_opt"]
        fed = parallel.put_batch(batches[state["i"] % len(batches)], mesh)
        params, opt_state, metrics = step(params, opt_state, fed, np.uint32(state["i"]), base_key, data)
        jax.block_until_ready(metrics["loss"])
        state["params_opt"], state["i"] = (params, opt_state), state["i"] + 1

    timing = compare([Side(f"{n_devices} device(s)", jax_device(), one_step, compiled=True)], repeats=args.steps)[0]
    return {
        "kind": "step",
        "devices": n_devices,
        "device": timing.device,
        "batch": cfg.train_batch_size,
        "per_device_batch": cfg.train_batch_size // n_devices,
        "median_ms": timing.median_ms,
        "min_ms": timing.min_ms,
        "max_ms": timing.max_ms,
        "repeats": timing.repeats,
        "compile_s": timing.compile_s,
        "samples_per_s": cfg.train_batch_size / (timing.median_ms / 1000) if timing.median_ms else None,
        "dataset": {"name": dataset.name, "train_samples": len(dataset.train), "n_items": int(dataset.n_items)},
    }


def _synthetic_base(n: int, dim: int, queries: int, seed: int = 0):
    """Unit-norm keys written chunk by chunk into one array (no full-size temporaries), users, prefixes."""
    import numpy as np

    keys = np.empty((n, dim), np.float32)
    chunk = 1 << 20
    for start in range(0, n, chunk):
        block = np.random.default_rng((seed, 0, start)).standard_normal((min(chunk, n - start), dim), np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        keys[start : start + len(block)] = block
    rng = np.random.default_rng((seed, 1, 0))
    user = rng.integers(1, max(2, n // 8), n).astype(np.int32)  # about 8 entries per user, like a history
    prefix = rng.integers(1, 50, n).astype(np.int32)
    src = rng.integers(0, n, queries)
    q = keys[src] + 0.1 * rng.standard_normal((queries, dim), np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return keys, user, prefix, q, user[src], prefix[src]


def _numpy_ids(q, qu, qp, keys, user, prefix, k: int):
    """Reference ids (exclusion rule applied) for a few queries, by full scans in chunks."""
    import numpy as np

    scores = np.concatenate([q @ keys[s : s + (1 << 20)].T for s in range(0, len(keys), 1 << 20)], axis=1)
    scores[(user[None, :] == qu[:, None]) & (prefix[None, :] >= qp[:, None])] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    return np.take_along_axis(top, order, 1)


def child_kb(args, n_devices: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from experiments.benchlib import Side, Stages, compare, jax_device
    from ftragrec_jax import parallel
    from ftragrec_jax.models.search import FaissSearcher, Memory, retrieve

    k, rows = args.top_k, []
    for n in [int(x) for x in args.kb_sizes.split(",")]:
        st = Stages()
        keys, user, prefix, q, qu, qp = _synthetic_base(n, args.hidden, args.queries)

        def exact_side(keys, user, prefix, q, qu, qp):
            """The exact backend's search on the mesh (keys sharded when it has several devices)."""
            mesh = parallel.make_mesh(n_devices)
            # search only: h and target are not read by the search, so they stay tiny here
            memory = Memory(
                h=jnp.zeros((1, args.hidden)), keys=keys, target=jnp.zeros(1, jnp.int32), user=user, prefix_len=prefix
            ).shard_over(mesh)
            search = jax.jit(
                lambda query, m: retrieve(query, qu, qp, m, backend="exact", top_k=k, chunk_size=args.chunk_size)
            )
            placed = memory.keys.keys if n_devices > 1 else memory.keys
            per_device = max(s.data.nbytes for s in placed.addressable_shards)
            name = "exact" if n_devices == 1 else f"exact sharded x{n_devices}"
            return (
                name,
                lambda: jax.block_until_ready(search(q, memory)),
                jax_device(),
                {"keys_bytes_per_device": int(per_device), "keys_gb_per_device": round(per_device / GB, 3)},
            )

        st.mark(f"{n} keys generated")
        ref = _numpy_ids(q[:CHECKED_QUERIES], qu[:CHECKED_QUERIES], qp[:CHECKED_QUERIES], keys, user, prefix, k)
        base = {"n": n, "dim": args.hidden, "queries": args.queries, "top_k": k, "keys_gb": round(keys.nbytes / GB, 3)}

        def record(method, fn, device, extra, devices=1):
            timing = compare(
                [Side(method, device, fn, compiled=method.startswith("exact"), warmup=1)], repeats=args.repeats
            )[0]
            ids = np.asarray(fn())[:CHECKED_QUERIES]
            st.mark(f"{n}: {method}")
            rows.append(
                {
                    **base,
                    "kind": "kb",
                    "method": method,
                    "devices": devices,
                    "device": device,
                    "median_ms": timing.median_ms,
                    "min_ms": timing.min_ms,
                    "max_ms": timing.max_ms,
                    "repeats": timing.repeats,
                    "compile_s": timing.compile_s,
                    "ids_match_numpy": bool(np.array_equal(ids, ref)),
                    "rss_gb": round(st.rows[-1]["rss_mb"] / 1024, 2),
                    "peak_rss_gb": round(st.rows[-1]["peak_mb"] / 1024, 2),
                    **extra,
                }
            )
            print(
                f"  kb n={n} {method}: {timing.median_ms:.1f} ms, ids match numpy: {rows[-1]['ids_match_numpy']}",
                file=sys.stderr,
                flush=True,
            )

        record(*exact_side(keys, user, prefix, q, qu, qp), n_devices)
        if n_devices == 1:  # FAISS runs on the host: once is enough
            for shards in (1, args.faiss_shards):
                searcher = FaissSearcher("Flat", args.hidden, top_k=k, shards=shards)
                build_s = searcher.build(keys, user, prefix)
                method = "faiss Flat" if shards == 1 else f"faiss IndexShards x{shards} (Flat)"
                record(
                    method,
                    lambda: searcher.search_host(q, qu, qp),
                    f"host, faiss {searcher.device}",
                    {"build_s": round(build_s, 2)},
                )
                del searcher
        del keys
    return {"kind": "kb", "devices": n_devices, "rows": rows}


CHILDREN = {"step": child_step, "kb": child_kb}


# --- parent ------------------------------------------------------------------------------------------------


def children_platform() -> str:
    """The platform jax picks, asked in a throwaway process: the parent never starts a backend itself (on a
    GPU it would reserve memory the children need)."""
    out = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True, text=True, cwd=ROOT
    )
    return out.stdout.strip() or "cpu"


def run_child(kind: str, n_devices: int, argv: list[str], platform: str) -> dict:
    env = dict(os.environ)
    if platform == "cpu":
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n_devices}"])
    cmd = [sys.executable, "-m", "experiments.scaling", *argv, "--child", f"{kind}:{n_devices}"]
    print(f"{kind} on {n_devices} device(s) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        return {"kind": kind, "devices": n_devices, "error": f"child exited with {code}"}
    rec = json.loads(out.strip().splitlines()[-1])
    rec.update(child_peak_rss_gb=round(usage.ru_maxrss * 1024 / GB, 2), child_wall_s=round(time.perf_counter() - t0, 1))
    return rec


def report(results: list[dict]) -> str:
    lines = [
        "DuoRec train step (global batch fixed; forced CPU devices share the cores):",
        f"{'devices':>7}  {'per-dev batch':>13}  {'median ms':>9}  {'min':>8}  {'max':>8}  {'samples/s':>9}  "
        f"{'compile s':>9}",
    ]
    for r in results:
        if r["kind"] == "step" and "error" not in r:
            lines.append(
                f"{r['devices']:>7}  {r['per_device_batch']:>13}  {r['median_ms']:>9.1f}  "
                f"{r['min_ms']:>8.1f}  {r['max_ms']:>8.1f}  {r['samples_per_s']:>9.0f}  "
                f"{r['compile_s']:>9.1f}"
            )
    lines += [
        "",
        "Knowledge-base search (one batch of queries, exclusion rule on):",
        f"{'entries':>10}  {'method':<32}  {'median ms':>9}  {'keys GB':>7}  {'GB/device':>9}  {'RSS GB':>6}  "
        f"{'peak GB':>7}  ids ok",
    ]
    for r in results:
        for row in r.get("rows", []):
            per_dev = row.get("keys_gb_per_device")
            lines.append(
                f"{row['n']:>10}  {row['method']:<32}  {row['median_ms']:>9.1f}  {row['keys_gb']:>7.3f}  "
                f"{'' if per_dev is None else f'{per_dev:.3f}':>9}  {row['rss_gb']:>6.2f}  "
                f"{row['peak_rss_gb']:>7.2f}  {row['ids_match_numpy']}"
            )
    errors = [f"{r['kind']} on {r['devices']}: {r['error']}" for r in results if "error" in r]
    return "\n".join(lines + (["", "errors:", *errors] if errors else []))


def parse_args(argv):
    from experiments.cli_common import HelpFormatter

    p = argparse.ArgumentParser(
        prog="python -m experiments.scaling", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("--devices", default="1,2,4", help="device counts for the DuoRec step")
    p.add_argument("--data", default=None, help="dataset file for the step (none: the embedded Amazon Beauty)")
    p.add_argument("--batch", type=int, default=256, help="global train batch")
    p.add_argument("--max-len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH")
    p.add_argument("--hidden", type=int, default=64, help="hidden size of the encoder and the keys")
    p.add_argument("--steps", type=int, default=10, help="timed steps per device count")
    p.add_argument("--kb-sizes", default="1000000,10000000", help="knowledge-base entries")
    p.add_argument("--kb-devices", type=int, default=4, help="devices for the sharded exact search")
    p.add_argument("--queries", type=int, default=256, help="queries per search")
    p.add_argument("--top-k", type=int, default=10, help="neighbours per query")
    p.add_argument("--chunk-size", type=int, default=65536, help="exact search: keys per chunk")
    p.add_argument("--faiss-shards", type=int, default=2, help="IndexShards parts")
    p.add_argument("--repeats", type=int, default=3, help="timed searches per method")
    p.add_argument("--json", default=None, help="also write machine info and every figure here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in (
        "batch",
        "max_len",
        "hidden",
        "steps",
        "kb_devices",
        "queries",
        "top_k",
        "chunk_size",
        "faiss_shards",
        "repeats",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    try:
        args.device_counts = [int(x) for x in args.devices.split(",") if x.strip()]
        sizes = [int(x) for x in args.kb_sizes.split(",") if x.strip()]
    except ValueError:
        p.error("--devices and --kb-sizes: expected comma-separated integers")
    if not args.device_counts or min(args.device_counts) < 1 or (sizes and min(sizes) <= args.top_k):
        p.error("--devices: integers >= 1; --kb-sizes: integers larger than --top-k")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.child:
        kind, n = args.child.split(":")
        print(json.dumps(CHILDREN[kind](args, int(n))), flush=True)
        return 0
    from experiments.benchlib import machine

    info = machine()
    info["command"] = " ".join(["python", "-m", "experiments.scaling", *argv])
    child_argv, skip = [], False
    for a in argv:  # the children get every option but --json
        if skip or a.startswith("--json="):
            skip = False
            continue
        skip = a == "--json"
        if not skip:
            child_argv.append(a)
    platform = children_platform()
    info["children_platform"] = platform
    results = [run_child("step", d, child_argv, platform) for d in args.device_counts]
    if args.kb_sizes.strip():
        results += [run_child("kb", d, child_argv, platform) for d in sorted({1, args.kb_devices})]
    print(report(results))
    if args.json:
        from ftragrec_jax.atomic import write_atomic

        text = json.dumps({"machine": info, "results": results}, indent=1) + "\n"
        write_atomic(args.json, lambda f: f.write(text), binary=False)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
