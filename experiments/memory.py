"""Peak host memory (RSS) of the memory-heavy paths, each measured in its own fresh child process.

    python -m experiments.memory --what ml1m_eval,kb_2m
    python -m experiments.memory --what kb_2m --kb-entries 200000 --json /tmp/mem.json

ml1m_eval: `python -m experiments.evaluate` (same function, `evaluate_model_dir`) of a randomly initialised
    DuoRec model directory on ML-1M (valid + test, full sort over all items). Memory does not depend on the
    weights, so an untrained model measures the same as a trained one.
kb_2m: a synthetic knowledge base of --kb-entries entries through FTragrec's own code
    (ftragrec_jax.models.knowledge_base / retrieval): frozen encoding, retriever keys, the device copy plus a
    FAISS Flat index, FAISS search and the exact chunked search of a batch of queries, then a key refresh
    (new keys + index rebuild). Sequences are short (--kb-seq-len items, random) so 2M encodings finish in
    minutes on a CPU; the base's own size ([N, hidden] float32 arrays) does not depend on the length.

Each stage reports the process's peak RSS so far (`getrusage` ru_maxrss: the kernel's high-water mark, which
includes the JAX runtime, XLA buffers and FAISS) and its current RSS; the parent also reads the child's peak
from `wait4`, so nothing the child does escapes the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.benchlib import MB, Stages, peak_rss, rss_now
from experiments.cli_common import HelpFormatter

ROOT = Path(__file__).resolve().parent.parent
WHAT = ("ml1m_eval", "kb_2m")
LIMIT_GB = 8.0


# --- children --------------------------------------------------------------------------------------------


def child_ml1m_eval(args) -> dict:
    import jax
    from flax import nnx

    import ftragrec_jax.evaluation as tev
    import ftragrec_jax.scoring as scoring
    from ftragrec_jax.model_dir import save_model
    from ftragrec_jax.models.encoder import EncoderConfig, build_encoder

    st = Stages()
    st.mark("imports")
    # the item count decides the embedding shape; read it the way the evaluator will (same settings)
    from ftragrec_jax.data.dataset import load_dataset

    settings = {"data": str(Path(args.ml1m).absolute()), "MAX_ITEM_LIST_LENGTH": args.max_len}
    n_items = load_dataset(args.ml1m, max_seq_length=1).n_items  # max length 1: the item count, little memory
    enc_cfg = EncoderConfig(n_items=n_items, max_seq_length=args.max_len)
    encoder = build_encoder(enc_cfg, seed=0)
    params = nnx.to_pure_dict(jax.device_get(nnx.state(encoder, nnx.Param)))
    del encoder
    workdir = Path(tempfile.mkdtemp(prefix="ftragrec-mem-"))
    import dataclasses

    model_dir = save_model(
        workdir / "model",
        params,
        {
            "model": "duorec",
            "encoder": dataclasses.asdict(enc_cfg),
            "dataset": settings,
            "ftragrec": None,
            "source": None,
        },
    )
    del params
    st.mark("random DuoRec model saved")

    # stage marks from inside the CLI's own function, by wrapping what it calls
    real_dataset, real_scorer, real_split = scoring.dataset_from_config, scoring.from_params, tev.evaluate_split
    info = {}

    def dataset_from_config(cfg):
        ds = real_dataset(cfg)
        info.update(
            n_items=int(ds.n_items),
            n_users=int(ds.n_users),
            train_samples=len(ds.train),
            valid_samples=len(ds.valid),
            test_samples=len(ds.test),
            eval_batch_size=cfg.eval_batch_size,
        )
        st.mark(f"dataset loaded (L={cfg.MAX_ITEM_LIST_LENGTH})")
        return ds

    def from_params(*a, **k):
        out = real_scorer(*a, **k)
        st.mark("model loaded, scorer built")
        return out

    def evaluate_split(score, dataset, split, cfg, **k):
        out = real_split(score, dataset, split, cfg, **k)
        st.mark(f"{split} evaluated ({len(getattr(dataset, split))} users x {dataset.n_items} items)")
        return out

    scoring.dataset_from_config, scoring.from_params = dataset_from_config, from_params
    tev.evaluate_split = evaluate_split
    result = tev.evaluate_model_dir(model_dir, data=args.ml1m, show_progress=False)
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "stages": st.rows,
        "info": {
            **info,
            "max_seq_length": args.max_len,
            "model": "DuoRec (random init)",
            "hidden_size": enc_cfg.hidden_size,
            "n_layers": enc_cfg.n_layers,
            "test_ndcg@10": result["test"]["ndcg@10"],
        },
    }


def child_kb(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ftragrec_jax.models.encoder import EncoderConfig, build_encoder
    from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec
    from ftragrec_jax.models.knowledge_base import KnowledgeBase, compute_keys, encode_samples, kb_options
    from ftragrec_jax.models.search import exact_search

    st = Stages()
    st.mark("imports")
    n, L, n_items = args.kb_entries, args.kb_seq_len, args.kb_items
    hp = FTragrecHParams()  # the defaults: top_k, retriever size, chunk sizes, Flat index
    encoder = build_encoder(EncoderConfig(n_items=n_items, max_seq_length=L, hidden_size=args.hidden), seed=0)
    model = build_ftragrec(encoder, hp, seed=0)
    # synthetic training samples: users of 10 prefixes each, prefix lengths 1..10
    rng = np.random.default_rng(0)
    lens = rng.integers(1, L + 1, n).astype(np.int32)
    seq = rng.integers(1, n_items, (n, L), dtype=np.int32)
    seq *= np.arange(L, dtype=np.int32)[None] < lens[:, None]
    samples = {
        "item_seq": seq,
        "item_seq_len": lens,
        "target": rng.integers(1, n_items, n, dtype=np.int32),
        "user": (np.arange(n) // 10 + 1).astype(np.int32),
        "prefix_len": (np.arange(n) % 10 + 1).astype(np.int32),
    }
    st.mark(f"synthetic samples [{n}, {L}]")
    base_rss = rss_now()

    # KnowledgeBase.build = encode_samples + compute_keys + the constructor; called apart to measure each
    h = encode_samples(model.encoder, samples["item_seq"], samples["item_seq_len"])
    st.mark("frozen encoding (h)")
    keys = compute_keys(model.retriever, h, chunk_size=hp.retrieval_chunk_size)
    st.mark("retriever keys")
    kb = KnowledgeBase(
        h,
        samples["target"],
        samples["user"],
        samples["prefix_len"],
        keys,
        **{**kb_options(hp), "backend": "faiss"},
    )
    del h, keys
    st.mark(f"device copy + FAISS {hp.faiss_index} index", index_build_s=round(kb.index_seconds, 2))

    b = args.queries
    q_rows = rng.choice(n, b, replace=False)
    query = np.asarray(compute_keys(model.retriever, kb.h[q_rows]))
    ids = kb.searcher.search_host(query, kb.user[q_rows], kb.prefix_len[q_rows])
    st.mark(f"FAISS search ({b} queries)")
    exact = jax.jit(exact_search, static_argnames=("top_k", "chunk_size"))
    m = kb.memory
    ex_ids, _ = exact(
        jnp.asarray(query),
        jnp.asarray(kb.user[q_rows]),
        jnp.asarray(kb.prefix_len[q_rows]),
        m.keys,
        m.user,
        m.prefix_len,
        top_k=hp.top_k,
        chunk_size=hp.retrieval_chunk_size,
    )
    ex_ids = np.asarray(ex_ids)
    del m  # the refresh replaces kb.memory; a reference kept here would hold the old device arrays
    st.mark(f"exact chunked search (chunk {hp.retrieval_chunk_size})")

    # a refresh with a different g (as after training steps): all keys again and a new index
    from flax import nnx

    graphdef, state = nnx.split(model.retriever)
    moved = jax.tree.map(lambda x: x + 0.01 * jnp.sign(x + 1e-3), state)
    seconds = kb.refresh_keys(nnx.merge(graphdef, moved), chunk_size=hp.retrieval_chunk_size)
    st.mark("index refresh (keys + rebuild)", refresh_s=round(seconds, 2))
    peak = peak_rss()
    return {
        "stages": st.rows,
        "info": {
            "entries": n,
            "hidden_size": args.hidden,
            "seq_len": L,
            "n_items": n_items,
            "faiss_index": hp.faiss_index,
            "top_k": hp.top_k,
            "queries": b,
            # identical synthetic sequences give exactly tied keys, whose order FAISS does not define:
            # compare the scores of the neighbours found, position by position
            "faiss_vs_exact_max_score_gap": float(
                np.max(
                    np.abs(
                        np.einsum("bh,bkh->bk", query, kb.keys[ids]) - np.einsum("bh,bkh->bk", query, kb.keys[ex_ids])
                    )
                )
            ),
            "rss_before_kb_mb": round(base_rss / MB, 1),
            "bytes_per_entry_peak": round((peak - base_rss) / n, 1),
            "bytes_per_entry_resident": round((rss_now() - base_rss) / n, 1),
        },
    }


CHILDREN = {"ml1m_eval": child_ml1m_eval, "kb_2m": child_kb}


# --- parent ----------------------------------------------------------------------------------------------


def measure(what: str, argv: list[str]) -> dict:
    """Run one child; its peak RSS comes from the kernel (wait4), its stages from its stdout."""
    cmd = [sys.executable, "-m", "experiments.memory", *argv, "--child", what]
    print(f"{what}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"what": what, "error": f"child exited with {proc.returncode}"}
    rec = json.loads(out.strip().splitlines()[-1])
    peak = usage.ru_maxrss * 1024
    return {
        "what": what,
        "peak_rss_mb": round(peak / MB, 1),
        "peak_rss_gb": round(peak / 1024**3, 3),
        "within_8gb": peak < LIMIT_GB * 1024**3,
        "wall_s": round(time.perf_counter() - t0, 1),
        **rec,
    }


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.memory", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("--what", default=",".join(WHAT), help=f"comma-separated subset of {','.join(WHAT)}")
    p.add_argument(
        "--ml1m",
        default=str(ROOT.parent / "shared" / "data" / "ml-1m" / "ml-1m.txt"),
        help="ML-1M in one-line-per-user format (default: %(default)s)",
    )
    p.add_argument(
        "--max-len",
        type=int,
        default=200,
        help="MAX_ITEM_LIST_LENGTH for ML-1M (SASRec's 200; the shipped config uses 50)",
    )
    p.add_argument("--kb-entries", type=int, default=2_000_000, help="knowledge-base entries")
    p.add_argument("--kb-seq-len", type=int, default=8, help="length of the synthetic sequences")
    p.add_argument("--kb-items", type=int, default=12102, help="catalogue size of the synthetic base")
    p.add_argument("--hidden", type=int, default=64, help="hidden size of encoder, keys and index")
    p.add_argument("--queries", type=int, default=256, help="queries searched against the base")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--child", choices=WHAT, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)), flush=True)
        return 0
    wanted = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in WHAT]
    if unknown:
        print(f"error: --what: unknown {unknown}, expected a subset of {list(WHAT)}", file=sys.stderr)
        return 2
    from experiments.benchlib import machine

    info = machine()
    info["command"] = " ".join(["python", "-m", "experiments.memory", *argv])
    with open("/proc/meminfo") as f:
        info["mem_total"] = f.readline().split(":", 1)[1].strip()
    child_argv = [
        f"--ml1m={args.ml1m}",
        f"--max-len={args.max_len}",
        f"--kb-entries={args.kb_entries}",
        f"--kb-seq-len={args.kb_seq_len}",
        f"--kb-items={args.kb_items}",
        f"--hidden={args.hidden}",
        f"--queries={args.queries}",
    ]
    results = [measure(w, child_argv) for w in wanted]
    for r in results:
        head = (
            r.get("error")
            or f"peak RSS {r['peak_rss_mb']:.0f} MB ({r['peak_rss_gb']:.2f} GB), "
            f"within {LIMIT_GB:.0f} GB: {r['within_8gb']}"
        )
        print(f"{r['what']}: {head}")
        for s in r.get("stages", []):
            print(
                f"  {s['stage']:<44} peak {s['peak_mb']:>8.1f} MB   now {s['rss_mb']:>8.1f} MB   {s['seconds']:>7.1f} s"
            )
        for k, v in (r.get("info") or {}).items():
            print(f"  {k}: {v}")
    if args.json:
        from ftragrec_jax.atomic import write_atomic

        text = json.dumps({"machine": info, "results": results}, indent=1) + "\n"
        write_atomic(args.json, lambda f: f.write(text), binary=False)
    return 0 if all("error" not in r and r["within_8gb"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
