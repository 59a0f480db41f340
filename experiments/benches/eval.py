"""eval: full-sort evaluation of a split (the project's evaluator) against the PyTorch reference."""

from __future__ import annotations

import experiments.benchlib as benchlib
from experiments.benches.context import Context


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
    for which in ("beauty",) if a.data == "synthetic" else ("beauty", "ml-1m"):
        ds = ctx.dataset(which)
        cfg = Config(MAX_ITEM_LIST_LENGTH=a.max_len, seed=a.seed, lmd_sem=0.0, show_progress=False).validate()
        task = DuoRecTask(cfg, ds)
        params, _ = task.init()
        samples = ds.test
        n = len(samples)
        result = {}

        def jax_eval(task=task, params=params, samples=samples, ds=ds):
            result["jax"] = full_sort_evaluate(
                task.score_fn(params), samples, ds.n_items, ks=ks, batch_size=cfg.eval_batch_size
            )

        sides = [benchlib.Side("jax (full_sort_evaluate)", ctx.jax_device, jax_eval, compiled=True, warmup=1)]

        def make_torch(task=task, params=params, samples=samples):
            from converters.mapping import encoder_to_torch_state

            model = ctx.torch.duorec_model(task.encoder_cfg, encoder_to_torch_state(task.merge(params)), ctx.torch_dev)
            ev = ctx.torch.full_sort_eval(
                model,
                {k: getattr(samples, k) for k in ("item_seq", "item_seq_len", "target")},
                ctx.torch_dev,
                ks=ks,
                batch_size=cfg.eval_batch_size,
            )

            def run():
                result["torch"] = ev()

            return run

        sides.append(ctx.torch_side("torch (matmul + topk)", make_torch, warmup=1))
        timings = benchlib.compare(sides, a.epoch_repeats)
        agree = metrics_agree(result)
        for t in timings:
            if t.median_ms:
                t.note = f"{n / (t.median_ms / 1e3):,.0f} users/s" + (f"; {agree}" if agree else "")
        rows = benchlib.rows("eval", f"{ds.name}: {n} users x {ds.n_items} items", timings, users=n, items=ds.n_items)
        for r in rows:
            r["users_per_s"] = n / (r["median_ms"] / 1e3) if r["median_ms"] else None
        out += rows
    return out


def metrics_agree(result: dict) -> str:
    """Both sides scored the same weights: their hit/NDCG/MRR must match (to 4 decimals, RecBole's rounding)."""
    if "jax" not in result or "torch" not in result:
        return ""
    bad = []
    for name, value in result["torch"].items():
        mine = result["jax"].get(name)
        if mine is None or abs(round(value, 4) - mine) > 1.5e-4:
            bad.append(f"{name} jax={mine} torch={value:.4f}")
    return "metrics agree" if not bad else "METRICS DIFFER: " + ", ".join(bad[:3])
