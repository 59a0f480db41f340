"""A few DuoRec-style CE steps and FTragrec steps (exact backend, keys sharded over the mesh) on every device
of every process, and a data-parallel FTragrec evaluation (every sample's rank, initial parameters); process 0
writes the losses, ranks and final parameters to OUT_DIR/result.npz.

Single process:  python tests/scripts/multiprocess_steps.py OUT_DIR [N_DEVICES]
Multi-process:   FTRAGREC_COORDINATOR=127.0.0.1:PORT FTRAGREC_NUM_PROCESSES=2 FTRAGREC_PROCESS_ID=i \\
                 python tests/scripts/multiprocess_steps.py OUT_DIR
Each process loads only its rows of every global batch (parallel.process_slice), as the trainer does.
"""

import sys
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from ftragrec_jax import parallel
from ftragrec_jax.data.samples import SequenceSamples
from ftragrec_jax.evaluation import sample_ranks
from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec
from ftragrec_jax.models.knowledge_base import KnowledgeBase
from ftragrec_jax.optim import make_optimizer
from ftragrec_jax.scoring import bind, ftragrec_scorer
from ftragrec_jax.train.steps import make_ftragrec_step
from tests.ftragrec_helpers import batch_of, make_samples, small_encoder

GLOBAL_BATCH, STEPS = 16, 4


def fetch(tree):
    """Host copies of replicated global arrays (each process holds a full copy on its own devices)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def local_rows(batch: dict) -> dict:
    rows = parallel.process_slice(GLOBAL_BATCH) if jax.process_count() > 1 else slice(None)
    return {k: v[rows] for k, v in batch.items()}


def ce_steps(mesh):
    enc = small_encoder(n_items=40, max_len=6, hidden=16, seed=1)
    graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
    # SGD, not Adam: attention key biases get a gradient that is float noise around 0 (softmax ignores a
    # per-row constant), and Adam would turn a different summation order into a full-size step difference
    opt = optax.sgd(0.5)
    params, opt_state = parallel.replicate((params, opt.init(params)), mesh)

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            model = nnx.merge(graphdef, p, rest)
            logits = model.scores(model(batch["item_seq"], batch["item_seq_len"]))
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["target"])
            return (ce * batch["mask"]).sum() / batch["mask"].sum()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(0)
    losses = []
    for _ in range(STEPS):
        lens = rng.integers(1, 7, GLOBAL_BATCH).astype(np.int32)
        seq = (rng.integers(1, 40, (GLOBAL_BATCH, 6)) * (np.arange(6)[None] < lens[:, None])).astype(np.int32)
        batch = {
            "item_seq": seq,
            "item_seq_len": lens,
            "target": rng.integers(1, 40, GLOBAL_BATCH).astype(np.int32),
            "mask": (np.arange(GLOBAL_BATCH) < GLOBAL_BATCH - 3).astype(np.float32),
        }
        params, opt_state, loss = step(params, opt_state, parallel.put_batch(local_rows(batch), mesh))
        losses.append(float(fetch(loss)))
    return losses, nnx.to_pure_dict(fetch(params))


def ftragrec_steps(mesh):
    samples = make_samples(3, n_users=25, n_items=40, max_len=6)  # 25 users x 3..15 prefixes: not a multiple of 4
    hp = FTragrecHParams(top_k=3, retriever_inner_size=16, retrieval_backend="exact", quality_threshold=-1.0)
    model = build_ftragrec(small_encoder(n_items=40, max_len=6, hidden=16, seed=2), hp, seed=5)
    kb = KnowledgeBase.build(model.encoder, model.retriever, samples, backend="exact", top_k=hp.top_k)
    memory = parallel.place_step_data(kb.memory, mesh)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(1e-2, 0.0)
    params, opt_state = parallel.replicate((params, tx.init(params)), mesh)
    # evaluation first, on the initial parameters: identical inputs, so the ranks must be identical too
    scorer = ftragrec_scorer(graphdef, hp, rest=rest, mesh=mesh)
    ranks = sample_ranks(
        bind(scorer, params, memory), SequenceSamples.from_matrix(**samples), 40, batch_size=GLOBAL_BATCH, mesh=mesh
    )
    step = make_ftragrec_step(graphdef, hp, tx, rest=rest)
    order = np.random.default_rng(1).permutation(len(samples["target"]))
    losses = []
    for i in range(STEPS):
        batch = batch_of(samples, order[i * GLOBAL_BATCH : (i + 1) * GLOBAL_BATCH - 2], GLOBAL_BATCH)
        params, opt_state, aux = step(params, opt_state, parallel.put_batch(local_rows(batch), mesh), memory)
        losses.append(float(fetch(aux["loss"])))
    return (
        losses,
        nnx.to_pure_dict(fetch(params))["retriever"],
        len(samples["target"]),
        type(memory.keys).__name__,
        ranks,
    )


def flatten(prefix: str, tree) -> dict:
    return {
        prefix + "/".join(str(k.key) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def run(n_devices: int | None = None) -> dict:
    """Losses and final parameters (flat dict of numpy arrays), on a mesh over n_devices (None = all)."""
    mesh = parallel.make_mesh(n_devices)
    ce_losses, ce_params = ce_steps(mesh)
    ft_losses, ft_params, n_base, keys_type, ft_ranks = ftragrec_steps(mesh)
    return {
        "ce_losses": ce_losses,
        "ft_losses": ft_losses,
        "ft_ranks": ft_ranks,
        "processes": jax.process_count(),
        "devices": mesh.size,
        "n_base": n_base,
        "keys_type": keys_type,
        **flatten("ce/", ce_params),
        **flatten("ft/", ft_params),
    }


if __name__ == "__main__":
    parallel.maybe_initialize_distributed()  # before anything touches a device
    jax.config.update("jax_default_matmul_precision", "highest")
    result = run(int(sys.argv[2]) if len(sys.argv) > 2 else None)
    if parallel.is_main_process():
        np.savez(Path(sys.argv[1]) / "result.npz", **result)
