"""ftragrec_step, ftragrec_epoch and kb_build: FTragrec's own train step, an epoch as the trainer runs it, and
the knowledge-base build, against the PyTorch reference."""

from __future__ import annotations

import experiments.benchlib as benchlib
from experiments.benches.context import (
    FTRAGREC_VARIANTS,
    Context,
    batch_pool,
    copy_tree,
    device_batch,
    donating_step,
    ivf_factory,
)

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
            factory = ivf_factory(len(self.ds.train)) if backend == "ivf" else "Flat"
            self.kbs[backend] = KnowledgeBase.build(
                self.model.encoder,
                self.model.retriever,
                self.ds.train,
                backend="exact" if backend == "exact" else "faiss",
                faiss_index=factory,
                nprobe=16,
                top_k=self.hp.top_k,
                with_rec_ce=True,
            )  # as the trainer builds it
        return self.kbs[backend]

    def jax_step(self, backend: str, cached: bool):
        """(step, params, opt_state, memory): FTragrec's own jitted, donating train step."""
        import dataclasses

        from flax import nnx

        from ftragrec_jax.optim import make_optimizer
        from ftragrec_jax.train.steps import make_ftragrec_step

        kb = self.kb(backend)
        graphdef, params, rest = nnx.split(self.model, nnx.Param, ...)
        params = copy_tree(params)
        if (backend, cached) not in self.steps:
            hp = dataclasses.replace(self.hp, retrieval_backend="exact" if backend == "exact" else "faiss")
            opt = make_optimizer(self.lr)
            self.steps[backend, cached] = (
                make_ftragrec_step(graphdef, hp, opt, rest=rest, searcher=kb.searcher, cached=cached),
                opt,
            )
        step, opt = self.steps[backend, cached]
        return step, params, opt.init(params), kb.memory

    def torch_model(self):
        from converters.mapping import encoder_to_torch_state, retriever_to_torch_state

        state = {**encoder_to_torch_state(self.model.encoder), **retriever_to_torch_state(self.model.retriever)}
        hp = {
            k: getattr(self.hp, k)
            for k in (
                "top_k",
                "retriever_layers",
                "retriever_inner_size",
                "retriever_temperature",
                "quality_threshold",
                "alpha",
                "enhanced_rec_weight",
                "kl_small_weight",
                "faiss_index",
                "nprobe",
            )
        }
        model = self.ctx.torch.ftragrec_model(self.enc_cfg, state, self.ctx.torch_dev, **hp)
        fields = ("item_seq", "item_seq_len", "target", "user", "prefix_len")
        self.ctx.torch.build_knowledge(model, {k: getattr(self.ds.train, k) for k in fields}, self.ctx.torch_dev)()
        return model

    def variants(self):
        return [FTRAGREC_VARIANTS[v] for v in self.ctx.args.ftragrec_variants]

    def label(self, backend: str, cached: bool) -> str:
        name = {"exact": "exact", "faiss": "faiss Flat", "ivf": f"faiss {ivf_factory(len(self.ds.train))} nprobe 16"}[
            backend
        ]
        return f"jax {name} {'cached' if cached else 'uncached'}"


def bench_ftragrec_step(ctx: Context, setup: FTragrecSetup) -> list[dict]:
    a = ctx.args
    pool = batch_pool(setup.ds.train, a.batch, a.seed)
    fed = [device_batch(b, TRAIN_FIELDS) for b in pool]
    sides = []
    for backend, cached in setup.variants():
        step, params, opt_state, memory = setup.jax_step(backend, cached)
        sides.append(
            benchlib.Side(
                setup.label(backend, cached),
                ctx.jax_device,
                donating_step(step, params, opt_state, fed, lambda i, m=memory: (m,)),
                compiled=True,
            )
        )
    sides.append(
        ctx.torch_side(
            "torch (encoder every step, host FAISS Flat)",
            lambda: ctx.torch.ftragrec_step(setup.torch_model(), pool, ctx.torch_dev, lr=setup.lr),
        )
    )
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
            p, o, aux = step(p, o, device_batch(b, TRAIN_FIELDS), memory)
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
        sides.append(
            benchlib.Side(
                setup.label(backend, cached),
                ctx.jax_device,
                _jax_epoch(step, params, opt_state, memory, train, a.batch, a.seed),
                compiled=True,
                warmup=1,
            )
        )
    sides.append(
        ctx.torch_side(
            "torch (encoder every step, host FAISS Flat)",
            lambda: ctx.torch.ftragrec_epoch(
                setup.torch_model(),
                lambda: iterate_batches(train, a.batch, seed=a.seed, epoch=0),
                ctx.torch_dev,
                lr=setup.lr,
            ),
            warmup=1,
        )
    )
    case = f"{setup.ds.name}: {len(train)} samples, {num_batches(len(train), a.batch)} steps of B={a.batch}"
    return benchlib.rows("ftragrec_epoch", case, benchlib.compare(sides, a.epoch_repeats))


def bench_kb_build(ctx: Context, setup: FTragrecSetup) -> list[dict]:
    from ftragrec_jax.models.knowledge_base import KnowledgeBase

    a = ctx.args
    train = setup.ds.train
    ivf = ivf_factory(len(train))

    def jax_build(backend, factory="Flat"):
        return lambda: KnowledgeBase.build(
            setup.model.encoder, setup.model.retriever, train, backend=backend, faiss_index=factory, top_k=a.top_k
        )

    # no separate exact side: it is the Flat side minus the index build (under a second on Beauty), and each
    # side re-encodes the whole base, which dominates this bench's run time
    sides = [
        benchlib.Side("jax faiss Flat", ctx.jax_device, jax_build("faiss"), compiled=True, warmup=1),
        benchlib.Side(f"jax faiss {ivf}", ctx.jax_device, jax_build("faiss", ivf), compiled=True, warmup=1),
    ]

    def make_torch():
        model = setup.torch_model()
        fields = ("item_seq", "item_seq_len", "target", "user", "prefix_len")
        return ctx.torch.build_knowledge(model, {k: getattr(train, k) for k in fields}, ctx.torch_dev)

    sides.append(ctx.torch_side("torch faiss Flat", make_torch, warmup=1))
    case = f"{setup.ds.name}: {len(train)} samples"
    return benchlib.rows("kb_build", case, benchlib.compare(sides, a.epoch_repeats))
