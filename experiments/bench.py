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

import numpy as np

import experiments.benchlib as benchlib
from experiments.cli_common import HelpFormatter

BENCHES = ("duorec_step", "ftragrec_step", "ftragrec_epoch", "eval", "kb_build", "retrieval")
# every backend cached and uncached, plus IVF (the fast approximate choice on CPU)
FTRAGREC_VARIANTS = {"exact-cached": ("exact", True), "exact-uncached": ("exact", False),
                     "faiss-cached": ("faiss", True), "faiss-uncached": ("faiss", False),
                     "ivf-cached": ("ivf", True)}
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
BEAUTY = dict(users=22363, items=12102)  # sizes for the synthetic stand-ins
ML1M = dict(users=6040, items=3417)
POOL = 4  # distinct batches cycled through by the step benches (not always the same cached batch)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--what", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    p.add_argument("--items", type=int, default=12102, help="catalogue size of random data (Beauty: 12,102)")
    p.add_argument("--users", type=int, default=BEAUTY["users"], help="users of random data (--data synthetic)")
    p.add_argument("--kb", default="131413,1000000", help="retrieval: knowledge-base sizes, comma-separated")
    p.add_argument("--batch", type=int, default=256, help="training batch / retrieval queries")
    p.add_argument("--max-len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH")
    p.add_argument("--top-k", type=int, default=5, help="neighbours retrieved")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per side (step-sized work)")
    p.add_argument("--epoch-repeats", type=int, default=3, help="timed repeats per side for whole epochs/evals")
    p.add_argument("--data", choices=("real", "synthetic"), default="real",
                   help="real: Amazon Beauty (and ML-1M for eval) from ../shared, else the embedded Beauty; "
                        "synthetic: random sequences of --items/--users")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="device for both sides (default: cuda when available to jax and torch, else cpu)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch intra-op threads (default: all cores, %(default)s here, as XLA uses on CPU)")
    p.add_argument("--fp32-matmul", action="store_true",
                   help="full float32 matmuls on both sides (GPU default: TF32 allowed on both, as jax does)")
    p.add_argument("--no-torch-compile", action="store_true", help="skip the torch.compile side of duorec_step")
    p.add_argument("--seed", type=int, default=0, help="seed of the random data, parameters and batches")
    p.add_argument("--ftragrec-variants", default=",".join(FTRAGREC_VARIANTS),
                   help="ftragrec_step/ftragrec_epoch: JAX sides to run (a whole epoch per side is minutes on CPU)")
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


# --- data -----------------------------------------------------------------------------------------------

class SyntheticDataset:
    """Random users shaped like the real datasets, RecBole's samples: leave-one-out, every training prefix a
    sample, the last max_len items kept. lengths="beauty": histories of 5 + a geometric tail (mean 8.9 items
    like Amazon Beauty, a few longer than max_len); "uniform": every history max_len + 3 long, so training
    prefix lengths are uniform over 1..max_len (no short-sequence advantage for length bucketing)."""

    def __init__(self, name: str, n_users: int, n_items: int, max_len: int, seed: int, lengths: str = "beauty"):
        from ftragrec_jax.data.samples import SequenceSamples

        rng = np.random.default_rng(seed)
        if lengths == "uniform":
            hist_len = np.full(n_users, max_len + 3)
        else:
            hist_len = 4 + rng.geometric(1 / 4.9, size=n_users)
        splits = {"train": [], "valid": [], "test": []}
        for u, n in enumerate(hist_len, start=1):
            hist = rng.integers(1, n_items, size=n)
            for t in range(1, n):
                split = "test" if t == n - 1 else "valid" if t == n - 2 else "train"
                splits[split].append((u, hist[max(0, t - max_len):t], hist[t], t))

        def pack(rows):
            seq = np.zeros((len(rows), max_len), np.int32)
            for i, (_, prefix, _, _) in enumerate(rows):
                seq[i, :len(prefix)] = prefix
            return SequenceSamples(seq, np.array([len(r[1]) for r in rows], np.int32),
                                   np.array([r[2] for r in rows], np.int32), np.array([r[0] for r in rows], np.int32),
                                   np.array([r[3] for r in rows], np.int32))

        self.name = name
        self.train, self.valid, self.test = (pack(splits[s]) for s in ("train", "valid", "test"))
        self.n_items, self.n_users = n_items, n_users


class Context:
    """Parsed arguments plus what every bench shares: devices, datasets (loaded once)."""

    def __init__(self, args):
        self.args = args
        self._datasets = {}
        self.jax_device = benchlib.jax_device()
        self.torch = None
        self.torch_dev = None
        self.torch_device = "torch not installed"
        try:
            from converters.reference import torch_bench
        except ImportError as e:
            self.torch_missing = f"not available: torch missing ({e})"
        else:
            self.torch = torch_bench
            self.torch_dev = torch_bench.setup(args.device, args.threads)
            self.torch_device = torch_bench.describe_device(self.torch_dev.type)
            self.torch_missing = None

    def dataset(self, which: str):
        """"beauty" or "ml-1m": real (shared folder, embedded Beauty) or synthetic of the same size."""
        if which in self._datasets:
            return self._datasets[which]
        a = self.args
        if a.data == "synthetic":
            ds = SyntheticDataset(f"synthetic-{which}", a.users, a.items, a.max_len, a.seed)
        else:
            from ftragrec_jax.data.dataset import default_dataset_path, load_dataset

            path = SHARED_DATA / ("amazon/Beauty.txt" if which == "beauty" else "ml-1m/ml-1m.txt")
            if not path.exists() and which == "beauty":
                path = default_dataset_path()
            if path.exists():
                ds = load_dataset(path, max_seq_length=a.max_len)
            else:
                size = BEAUTY if which == "beauty" else ML1M
                ds = SyntheticDataset(f"synthetic-{which}-size", size["users"], size["items"], a.max_len, a.seed)
        self._datasets[which] = ds
        return ds

    def torch_side(self, name: str, make, **kw) -> benchlib.Side:
        """A PyTorch side, or a skipped row saying why torch cannot run here."""
        if self.torch is None:
            return benchlib.Side(name, "-", lambda: None, skip=self.torch_missing, reference=True, **kw)
        try:
            fn = make()
        except Exception as e:  # e.g. a reference model that cannot run on this device
            return benchlib.Side(name, self.torch_device, lambda: None, skip=benchlib._reason(e), reference=True,
                                 **kw)
        return benchlib.Side(name, self.torch_device, fn, reference=True, **kw)


def _device_batch(batch: dict, fields) -> dict:
    import jax.numpy as jnp

    from ftragrec_jax import parallel

    return {k: jnp.asarray(parallel.int32_host(batch[k])) for k in fields}


def _pool(samples, batch_size: int, seed: int, n: int = POOL) -> list[dict]:
    from ftragrec_jax.data.batches import iterate_batches

    out = []
    for b in iterate_batches(samples, batch_size, seed=seed):
        out.append(b)
        if len(out) == n:
            break
    return out


def _copy_tree(tree):
    import jax

    return jax.tree.map(lambda x: x.copy(), tree)


def _donating(step, params, opt_state, pool: list[dict], extra=lambda i: ()):
    """Zero-argument callable running one `step(params, opt_state, batch, *extra(i))` per call: threads the
    donated state through calls, cycles over the batch pool, blocks until the device is done."""
    import jax

    state = {"p": params, "o": opt_state, "i": 0}

    def run():
        i = state["i"]
        p, o, metrics = step(state["p"], state["o"], pool[i % len(pool)], *extra(i))
        state.update(p=p, o=o, i=i + 1)
        jax.block_until_ready((p, o, metrics))
        return metrics

    return run


# --- duorec_step --------------------------------------------------------------------------------------

def bench_duorec_step(ctx: Context) -> list[dict]:
    """One DuoRec us_x step (3 passes, CE + InfoNCE, Adam): the DuoRec task's train step, jitted with the
    params/optimizer state donated exactly as the trainer does, against the PyTorch reference.

    Two cases, because the JAX step buckets rows by length: Beauty's real prefixes (short, the usual case) and
    random sequences with lengths uniform over 1..max_len over --items items (the worst case for bucketing)."""
    a = ctx.args
    uniform_users = max(4, -(-20000 // a.max_len)) if a.data == "real" else a.users
    cases = [("beauty prefixes", ctx.dataset("beauty")),
             ("uniform lengths", SyntheticDataset("random-uniform", uniform_users, a.items, a.max_len, a.seed,
                                                  lengths="uniform"))]
    out = []
    for label, ds in cases:
        out += _duorec_step_case(ctx, label, ds)
    return out


def _duorec_step_case(ctx: Context, label: str, ds) -> list[dict]:
    import jax

    from ftragrec_jax.config import Config
    from ftragrec_jax.models.duorec import build_same_target_index, sample_same_target_np
    from ftragrec_jax.train.duorec_task import DuoRecTask

    a = ctx.args
    cfg = Config(train_batch_size=a.batch, MAX_ITEM_LIST_LENGTH=a.max_len, seed=a.seed,
                 show_progress=False).validate()
    task = DuoRecTask(cfg, ds)
    params, opt_state = task.init()
    params, opt_state = _copy_tree(params), _copy_tree(opt_state)  # the step donates them
    pool = _pool(ds.train, a.batch, a.seed)

    # the trainer's step: dropout/sampling key = fold_in(seed key, global step), params and opt_state donated
    step = jax.jit(lambda p, o, b, i, k, d: task.train_step(p, o, b, jax.random.fold_in(k, i), d),
                   donate_argnums=(0, 1))
    base_key = jax.random.key(a.seed, impl="unsafe_rbg")
    data = task.step_data()
    fed = [_device_batch(b, task.batch_fields) for b in pool]
    sides = [benchlib.Side("jax (jit, donated)", ctx.jax_device,
                           _donating(step, params, opt_state, fed, lambda i: (np.uint32(i), base_key, data)),
                           compiled=True)]

    torch_state, tbatches = None, []
    if ctx.torch is not None:
        from converters.mapping import encoder_to_torch_state

        torch_state = encoder_to_torch_state(task.merge(task.init()[0]))
        # DuoRec's dataloader draws the same-target sequence on the host: done here, outside the timing
        index = build_same_target_index(ds.train.target, ds.n_items)
        rng = np.random.default_rng(a.seed)
        for b in pool:
            ids = sample_same_target_np(index, b["index"], rng)
            tbatches.append({"item_seq": b["item_seq"], "item_seq_len": b["item_seq_len"], "target": b["target"],
                             "mask": b["mask"], "sem_aug": ds.train.item_seq[ids],
                             "sem_aug_lengths": ds.train.item_seq_len[ids]})

    def torch_step(compile_):
        return lambda: ctx.torch.duorec_step(ctx.torch.duorec_model(task.encoder_cfg, torch_state, ctx.torch_dev,
                                                                    lmd_sem=cfg.lmd_sem, tau=cfg.tau),
                                             tbatches, ctx.torch_dev, lr=cfg.learning_rate, compile=compile_)

    sides.append(ctx.torch_side("torch eager", torch_step(False)))
    if a.no_torch_compile:
        sides.append(benchlib.Side("torch.compile", ctx.torch_device, lambda: None,
                                   skip="disabled by --no-torch-compile"))
    else:
        compiled = ctx.torch_side("torch.compile", torch_step(True), compiled=True)
        compiled.reference = False
        sides.append(compiled)
    lens = np.concatenate([b["item_seq_len"] for b in pool])
    case = (f"{label} ({ds.name}): B={a.batch} L={a.max_len} items={ds.n_items}, "
            f"mean len {lens.mean():.1f}, max {lens.max()}")
    return benchlib.rows("duorec_step", case, benchlib.compare(sides, a.repeats), mean_len=float(lens.mean()))


# --- FTragrec -----------------------------------------------------------------------------------------

TRAIN_FIELDS = ("item_seq", "item_seq_len", "target", "user", "prefix_len", "index", "mask")


class FTragrecSetup:
    """A random frozen DuoRec, FTragrec around it, and its knowledge base per backend, for both frameworks."""

    def __init__(self, ctx: Context):
        from ftragrec_jax.models.encoder import EncoderConfig, build_encoder
        from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec

        a = ctx.args
        self.ctx = ctx
        self.ds = ctx.dataset("beauty")
        self.enc_cfg = EncoderConfig(n_items=self.ds.n_items, max_seq_length=a.max_len)
        self.hp = FTragrecHParams(top_k=a.top_k)
        self.model = build_ftragrec(build_encoder(self.enc_cfg, a.seed), self.hp, a.seed)
        self.kbs = {}
        self.steps = {}  # one jitted step per variant, shared by the step and epoch benches (one compilation)
        self.lr = 1e-3

    def kb(self, backend: str):
        from ftragrec_jax.models.knowledge_base import KnowledgeBase

        if backend not in self.kbs:  # "ivf": the FAISS backend with an IVF index (nprobe 16)
            factory = _ivf_factory(len(self.ds.train)) if backend == "ivf" else "Flat"
            self.kbs[backend] = KnowledgeBase.build(self.model.encoder, self.model.retriever, self.ds.train,
                                                    backend="exact" if backend == "exact" else "faiss",
                                                    faiss_index=factory, nprobe=16, top_k=self.hp.top_k,
                                                    with_rec_ce=True)  # as the trainer builds it
        return self.kbs[backend]

    def jax_step(self, backend: str, cached: bool):
        """(step, params, opt_state, memory): FTragrec's own jitted, donating train step."""
        import dataclasses

        from flax import nnx

        from ftragrec_jax.optim import make_optimizer
        from ftragrec_jax.train.steps import make_ftragrec_step

        kb = self.kb(backend)
        graphdef, params, rest = nnx.split(self.model, nnx.Param, ...)
        params = _copy_tree(params)
        if (backend, cached) not in self.steps:
            hp = dataclasses.replace(self.hp, retrieval_backend="exact" if backend == "exact" else "faiss")
            opt = make_optimizer(self.lr)
            self.steps[backend, cached] = (make_ftragrec_step(graphdef, hp, opt, rest=rest, searcher=kb.searcher,
                                                           cached=cached), opt)
        step, opt = self.steps[backend, cached]
        return step, params, opt.init(params), kb.memory

    def torch_model(self):
        from converters.mapping import encoder_to_torch_state, retriever_to_torch_state

        state = {**encoder_to_torch_state(self.model.encoder), **retriever_to_torch_state(self.model.retriever)}
        hp = {k: getattr(self.hp, k) for k in ("top_k", "retriever_layers", "retriever_inner_size",
                                                 "retriever_temperature", "quality_threshold", "alpha",
                                                 "enhanced_rec_weight", "kl_small_weight", "faiss_index", "nprobe")}
        model = self.ctx.torch.ftragrec_model(self.enc_cfg, state, self.ctx.torch_dev, **hp)
        fields = ("item_seq", "item_seq_len", "target", "user", "prefix_len")
        self.ctx.torch.build_knowledge(model, {k: getattr(self.ds.train, k) for k in fields}, self.ctx.torch_dev)()
        return model

    def variants(self):
        return [FTRAGREC_VARIANTS[v] for v in self.ctx.args.ftragrec_variants]

    def label(self, backend: str, cached: bool) -> str:
        name = {"exact": "exact", "faiss": "faiss Flat",
                "ivf": f"faiss {_ivf_factory(len(self.ds.train))} nprobe 16"}[backend]
        return f"jax {name} {'cached' if cached else 'uncached'}"


def bench_ftragrec_step(ctx: Context, setup: FTragrecSetup) -> list[dict]:
    a = ctx.args
    pool = _pool(setup.ds.train, a.batch, a.seed)
    fed = [_device_batch(b, TRAIN_FIELDS) for b in pool]
    sides = []
    for backend, cached in setup.variants():
        step, params, opt_state, memory = setup.jax_step(backend, cached)
        sides.append(benchlib.Side(setup.label(backend, cached), ctx.jax_device,
                                   _donating(step, params, opt_state, fed, lambda i, m=memory: (m,)), compiled=True))
    sides.append(ctx.torch_side("torch (encoder every step, host FAISS Flat)",
                                lambda: ctx.torch.ftragrec_step(setup.torch_model(), pool, ctx.torch_dev, lr=setup.lr)))
    case = f"B={a.batch} kb={len(setup.ds.train)} items={setup.ds.n_items} top_k={a.top_k}"
    return benchlib.rows("ftragrec_step", case, benchlib.compare(sides, a.repeats))


def _jax_epoch(step, params, opt_state, memory, train, batch_size: int, seed: int):
    """One epoch as the trainer runs it: host slices each batch, copies it, dispatches the jitted step, keeps at
    most two steps in flight."""
    import jax

    from ftragrec_jax.data.batches import iterate_batches

    state = {"p": params, "o": opt_state}

    def epoch():
        p, o, in_flight = state["p"], state["o"], []
        for b in iterate_batches(train, batch_size, seed=seed, epoch=0):
            p, o, aux = step(p, o, _device_batch(b, TRAIN_FIELDS), memory)
            in_flight.append(aux["loss"])
            if len(in_flight) > 2:
                in_flight.pop(0).block_until_ready()
        jax.block_until_ready((p, o))
        state.update(p=p, o=o)

    return epoch


def bench_ftragrec_epoch(ctx: Context, setup: FTragrecSetup) -> list[dict]:
    from ftragrec_jax.data.batches import iterate_batches, num_batches

    a = ctx.args
    train = setup.ds.train
    sides = []
    for backend, cached in setup.variants():
        step, params, opt_state, memory = setup.jax_step(backend, cached)
        sides.append(benchlib.Side(setup.label(backend, cached), ctx.jax_device,
                                   _jax_epoch(step, params, opt_state, memory, train, a.batch, a.seed),
                                   compiled=True, warmup=1))
    sides.append(ctx.torch_side(
        "torch (encoder every step, host FAISS Flat)",
        lambda: ctx.torch.ftragrec_epoch(setup.torch_model(),
                                         lambda: iterate_batches(train, a.batch, seed=a.seed, epoch=0),
                                         ctx.torch_dev, lr=setup.lr), warmup=1))
    case = f"{setup.ds.name}: {len(train)} samples, {num_batches(len(train), a.batch)} steps of B={a.batch}"
    return benchlib.rows("ftragrec_epoch", case, benchlib.compare(sides, a.epoch_repeats))


# --- eval ---------------------------------------------------------------------------------------------

def bench_eval(ctx: Context) -> list[dict]:
    """Full-sort evaluation of every test user: the project's evaluator with the DuoRec task's scorer vs
    RecBole-style full sort (matmul + top-k) in torch, same weights; the metrics must agree."""
    try:
        from ftragrec_jax.evaluation import full_sort_evaluate
    except ImportError as e:
        raise RuntimeError(f"not available: ftragrec_jax.evaluation missing ({e})") from None
    from ftragrec_jax.config import Config
    from ftragrec_jax.train.duorec_task import DuoRecTask

    a = ctx.args
    ks = (5, 10, 20, 50)
    out = []
    for which in (("beauty",) if a.data == "synthetic" else ("beauty", "ml-1m")):
        ds = ctx.dataset(which)
        cfg = Config(MAX_ITEM_LIST_LENGTH=a.max_len, seed=a.seed, lmd_sem=0.0, show_progress=False).validate()
        task = DuoRecTask(cfg, ds)
        params, _ = task.init()
        samples = ds.test
        n = len(samples)
        result = {}

        def jax_eval(task=task, params=params, samples=samples, ds=ds):
            result["jax"] = full_sort_evaluate(task.score_fn(params), samples, ds.n_items, ks=ks,
                                               batch_size=cfg.eval_batch_size)

        sides = [benchlib.Side("jax (full_sort_evaluate)", ctx.jax_device, jax_eval, compiled=True, warmup=1)]

        def make_torch(task=task, params=params, samples=samples):
            from converters.mapping import encoder_to_torch_state

            model = ctx.torch.duorec_model(task.encoder_cfg, encoder_to_torch_state(task.merge(params)),
                                           ctx.torch_dev)
            ev = ctx.torch.full_sort_eval(model, {k: getattr(samples, k) for k in ("item_seq", "item_seq_len",
                                                                                   "target")},
                                          ctx.torch_dev, ks=ks, batch_size=cfg.eval_batch_size)

            def run():
                result["torch"] = ev()

            return run

        sides.append(ctx.torch_side("torch (matmul + topk)", make_torch, warmup=1))
        timings = benchlib.compare(sides, a.epoch_repeats)
        agree = _metrics_agree(result)
        for t in timings:
            if t.median_ms:
                t.note = f"{n / (t.median_ms / 1e3):,.0f} users/s" + (f"; {agree}" if agree else "")
        rows = benchlib.rows("eval", f"{ds.name}: {n} users x {ds.n_items} items", timings,
                             users=n, items=ds.n_items)
        for r in rows:
            r["users_per_s"] = n / (r["median_ms"] / 1e3) if r["median_ms"] else None
        out += rows
    return out


def _metrics_agree(result: dict) -> str:
    """Both sides scored the same weights: their hit/NDCG/MRR must match (to 4 decimals, RecBole's rounding)."""
    if "jax" not in result or "torch" not in result:
        return ""
    bad = []
    for name, value in result["torch"].items():
        mine = result["jax"].get(name)
        if mine is None or abs(round(value, 4) - mine) > 1.5e-4:
            bad.append(f"{name} jax={mine} torch={value:.4f}")
    return "metrics agree" if not bad else "METRICS DIFFER: " + ", ".join(bad[:3])


# --- kb_build -----------------------------------------------------------------------------------------

def _ivf_factory(n: int) -> str:
    """IVF1024,Flat, with fewer lists when the base is too small to train 1024 (FAISS wants >= 39 per list)."""
    return f"IVF{max(1, min(1024, n // 39))},Flat"


def bench_kb_build(ctx: Context, setup: FTragrecSetup) -> list[dict]:
    from ftragrec_jax.models.knowledge_base import KnowledgeBase

    a = ctx.args
    train = setup.ds.train
    ivf = _ivf_factory(len(train))

    def jax_build(backend, factory="Flat"):
        return lambda: KnowledgeBase.build(setup.model.encoder, setup.model.retriever, train, backend=backend,
                                           faiss_index=factory, top_k=a.top_k)

    # no separate exact side: it is the Flat side minus the index build (under a second on Beauty), and each
    # side re-encodes the whole base, which dominates this bench's run time
    sides = [benchlib.Side("jax faiss Flat", ctx.jax_device, jax_build("faiss"), compiled=True, warmup=1),
             benchlib.Side(f"jax faiss {ivf}", ctx.jax_device, jax_build("faiss", ivf), compiled=True, warmup=1)]

    def make_torch():
        model = setup.torch_model()
        fields = ("item_seq", "item_seq_len", "target", "user", "prefix_len")
        return ctx.torch.build_knowledge(model, {k: getattr(train, k) for k in fields}, ctx.torch_dev)

    sides.append(ctx.torch_side("torch faiss Flat", make_torch, warmup=1))
    case = f"{setup.ds.name}: {len(train)} samples"
    return benchlib.rows("kb_build", case, benchlib.compare(sides, a.epoch_repeats))


# --- retrieval ----------------------------------------------------------------------------------------

def clustered_keys(n: int, dim: int, rng, n_clusters: int = 256) -> np.ndarray:
    """Unit vectors around random centres: nearest-neighbour structure like encoded sequences, unlike
    uniform noise (on which any IVF index has poor recall)."""
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, n_clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _recall(ids: np.ndarray, ref: np.ndarray) -> float:
    hits = [len(set(r[r >= 0]) & set(e[e >= 0])) / max((e >= 0).sum(), 1) for r, e in zip(ids, ref)]
    return float(np.mean(hits))


def bench_retrieval(ctx: Context) -> list[dict]:
    """Search only: B queries over N keys with the exclusion rule, exact in-graph vs FAISS through the
    callback, against a direct host FAISS Flat call (what the PyTorch reference does, minus its per-row
    Python filter)."""
    import jax
    import jax.numpy as jnp

    from ftragrec_jax.models.search import FaissSearcher, exact_search, faiss_search

    a = ctx.args
    dim, k = 64, a.top_k
    out = []
    for n in a.kb:
        rng = np.random.default_rng(a.seed + n)
        keys = clustered_keys(n, dim, rng)
        users = rng.integers(1, max(2, n // 6), n).astype(np.int32)
        prefix = rng.integers(1, 20, n).astype(np.int32)
        q = clustered_keys(a.batch, dim, rng)
        qu = users[rng.integers(0, n, a.batch)]  # queries of users present in the base: exclusion applies
        qp = rng.integers(1, 20, a.batch).astype(np.int32)
        dq, dqu, dqp = jnp.asarray(q), jnp.asarray(qu), jnp.asarray(qp)
        dkeys, dusers, dprefix = jnp.asarray(keys), jnp.asarray(users), jnp.asarray(prefix)

        exact = jax.jit(lambda q_, u_, p_, kk, eu, ep: exact_search(q_, u_, p_, kk, eu, ep, top_k=k)[0])
        flat = FaissSearcher("Flat", dim, top_k=k)
        flat.build(keys, users, prefix)
        ivf_name = _ivf_factory(n)
        ivf = FaissSearcher(ivf_name, dim, top_k=k, nprobe=16)
        ivf_build_s = ivf.build(keys, users, prefix)
        cb_flat = jax.jit(lambda q_, u_, p_: faiss_search(flat, q_, u_, p_))
        cb_ivf = jax.jit(lambda q_, u_, p_: faiss_search(ivf, q_, u_, p_))
        ids = {}

        def timed(name, fn):
            def run():
                ids[name] = jax.block_until_ready(fn())
            return run

        sides = [
            benchlib.Side("host faiss Flat (direct call)", "cpu (faiss)",
                          timed("host", lambda: flat.search_host(q, qu, qp)), reference=True),
            benchlib.Side("jax exact (in-graph)", ctx.jax_device,
                          timed("exact", lambda: exact(dq, dqu, dqp, dkeys, dusers, dprefix)), compiled=True),
            benchlib.Side("jax faiss Flat (callback)", ctx.jax_device + " + host faiss",
                          timed("flat", lambda: cb_flat(dq, dqu, dqp)), compiled=True),
            benchlib.Side(f"jax faiss {ivf_name} nprobe 16 (callback)", ctx.jax_device + " + host faiss",
                          timed("ivf", lambda: cb_ivf(dq, dqu, dqp)), compiled=True),
        ]
        timings = benchlib.compare(sides, a.repeats)
        ref = np.asarray(ids["exact"]) if "exact" in ids else None
        recalls = {}
        for t, key in zip(timings, ("host", "exact", "flat", "ivf")):
            if ref is not None and key in ids:
                recalls[t.side] = _recall(np.asarray(ids[key]), ref)
                t.note = f"recall@{k} vs exact {recalls[t.side]:.3f}"
        if "ivf" in ids:
            timings[3].note += f"; index build {ivf_build_s:.2f}s"
        rows = benchlib.rows("retrieval", f"{a.batch} queries x {n} keys, top_k={k}", timings, kb=n)
        for r in rows:
            r["recall_vs_exact"] = recalls.get(r["side"])
        out += rows
    return out


# --- main ---------------------------------------------------------------------------------------------

def _configure_jax(device: str | None, fp32: bool) -> None:
    import jax

    if fp32:
        jax.config.update("jax_default_matmul_precision", "highest")
    if device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    elif device == "cuda" and jax.default_backend() != "gpu":
        raise SystemExit("error: --device cuda: jax has no GPU backend here (install jax[cuda13])")


def run(args) -> dict:
    _configure_jax(args.device, args.fp32_matmul)
    started = benchlib.machine(args.argv)  # date and load average at the start of the run
    t_start = time.perf_counter()
    ctx = Context(args)
    if ctx.torch is not None and ctx.torch_dev.type == "cuda":  # as jax: TF32 allowed unless --fp32-matmul
        ctx.torch.set_float32_matmul_precision("highest" if args.fp32_matmul else "high")
    cores = len(os.sched_getaffinity(0))
    same = "the same as" if args.threads == cores else "NOT the same as"
    header = (f"JAX on {ctx.jax_device}; PyTorch on {ctx.torch_device}: torch intra-op threads = {args.threads}, "
              f"{same} the {cores} cores XLA uses on CPU; float32 matmuls: "
              + ("full precision on both sides" if args.fp32_matmul
                 else "each side default (GPU: TF32 allowed on both)"))
    print(header, flush=True)
    rows, errors = [], {}
    setup = None
    for name in args.what:
        t0 = time.perf_counter()
        try:
            if name in ("ftragrec_step", "ftragrec_epoch", "kb_build"):
                setup = setup or FTragrecSetup(ctx)
                got = globals()[f"bench_{name}"](ctx, setup)
            else:
                got = globals()[f"bench_{name}"](ctx)
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
    machine = {**benchlib.machine(args.argv), "date_utc": started["date_utc"],
               "loadavg_at_start": started.get("loadavg_at_start"), "seconds": round(time.perf_counter() - t_start, 1)}
    report = {"format": "ftragrec-jax/bench/v1", "machine": machine, "header": header,
              "jax_device": ctx.jax_device, "torch_device": ctx.torch_device, "torch_threads": args.threads,
              "settings": {k: v for k, v in vars(args).items() if k not in ("json", "argv")},
              "rows": rows, "errors": errors, "table": table}
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
