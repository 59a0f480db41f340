"""duorec_step: one DuoRec train step (the task's own jitted step) against the PyTorch reference."""

from __future__ import annotations

import numpy as np

import experiments.benchlib as benchlib
from experiments.benches.context import Context, SyntheticDataset, batch_pool, copy_tree, device_batch, donating_step


def bench_duorec_step(ctx: Context) -> list[dict]:
    """One DuoRec us_x step (3 passes, CE + InfoNCE, Adam): the DuoRec task's train step, jitted with the
    params/optimizer state donated exactly as the trainer does, against the PyTorch reference.

    Two cases, because the JAX step buckets rows by length: Beauty's real prefixes (short, the usual case) and
    random sequences with lengths uniform over 1..max_len over --items items (the worst case for bucketing)."""
    a = ctx.args
    uniform_users = max(4, -(-20000 // a.max_len)) if a.data == "real" else a.users
    cases = [
        ("beauty prefixes", ctx.dataset("beauty")),
        (
            "uniform lengths",
            SyntheticDataset("random-uniform", uniform_users, a.items, a.max_len, a.seed, lengths="uniform"),
        ),
    ]
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
    cfg = Config(train_batch_size=a.batch, MAX_ITEM_LIST_LENGTH=a.max_len, seed=a.seed, show_progress=False).validate()
    task = DuoRecTask(cfg, ds)
    params, opt_state = task.init()
    params, opt_state = copy_tree(params), copy_tree(opt_state)  # the step donates them
    pool = batch_pool(ds.train, a.batch, a.seed)

    # the trainer's step: dropout/sampling key = fold_in(seed key, global step), params and opt_state donated
    step = jax.jit(
        lambda p, o, b, i, k, d: task.train_step(p, o, b, jax.random.fold_in(k, i), d), donate_argnums=(0, 1)
    )
    base_key = jax.random.key(a.seed, impl="unsafe_rbg")
    data = task.step_data()
    fed = [device_batch(b, task.batch_fields) for b in pool]
    sides = [
        benchlib.Side(
            "jax (jit, donated)",
            ctx.jax_device,
            donating_step(step, params, opt_state, fed, lambda i: (np.uint32(i), base_key, data)),
            compiled=True,
        )
    ]

    torch_state, tbatches = None, []
    if ctx.torch is not None:
        from converters.mapping import encoder_to_torch_state

        torch_state = encoder_to_torch_state(task.merge(task.init()[0]))
        # DuoRec's dataloader draws the same-target sequence on the host: done here, outside the timing
        index = build_same_target_index(ds.train.target, ds.n_items)
        rng = np.random.default_rng(a.seed)
        for b in pool:
            ids = sample_same_target_np(index, b["index"], rng)
            tbatches.append(
                {
                    "item_seq": b["item_seq"],
                    "item_seq_len": b["item_seq_len"],
                    "target": b["target"],
                    "mask": b["mask"],
                    "sem_aug": ds.train.sequences(ids),
                    "sem_aug_lengths": ds.train.item_seq_len[ids],
                }
            )

    def torch_step(compile_):
        return lambda: ctx.torch.duorec_step(
            ctx.torch.duorec_model(task.encoder_cfg, torch_state, ctx.torch_dev, lmd_sem=cfg.lmd_sem, tau=cfg.tau),
            tbatches,
            ctx.torch_dev,
            lr=cfg.learning_rate,
            compile=compile_,
        )

    sides.append(ctx.torch_side("torch eager", torch_step(False)))
    if a.no_torch_compile:
        sides.append(
            benchlib.Side("torch.compile", ctx.torch_device, lambda: None, skip="disabled by --no-torch-compile")
        )
    else:
        compiled = ctx.torch_side("torch.compile", torch_step(True), compiled=True)
        compiled.reference = False
        sides.append(compiled)
    lens = np.concatenate([b["item_seq_len"] for b in pool])
    case = (
        f"{label} ({ds.name}): B={a.batch} L={a.max_len} items={ds.n_items}, "
        f"mean len {lens.mean():.1f}, max {lens.max()}"
    )
    return benchlib.rows("duorec_step", case, benchlib.compare(sides, a.repeats), mean_len=float(lens.mean()))
